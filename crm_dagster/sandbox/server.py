"""HTTP server of the sandbox CRM API and the :class:`SandboxServer` that runs it.

API endpoints, which need the key:

* ``GET /v1/resource?api_key=KEY&offset=O&limit=L[&updated_since=ISO][&sort=-updated_at]``:
  offset pagination, ``{"data": [...], "total": N}``. Records are in ``id`` order, or newest
  ``updated_at`` first with ``sort=-updated_at`` (both endpoints).
* ``GET /v1/persons?api_token=KEY&start=S&limit=L[&updated_since=ISO]``: Pipedrive-style
  pagination, ``{"success": true, "data": [...], "additional_data": {"pagination": ...}}``.

Control endpoints for tests, without a key, all JSON:

* ``GET /_sandbox/health``: ``{"status": "ok"}``.
* ``GET /_sandbox/requests``: list of recorded ``/v1`` requests. ``DELETE`` clears it.
* ``GET /_sandbox/faults``: ``{"faults": [SPEC, ...]}`` still queued. ``POST`` with the same
  shape replaces the queue (grammar in :mod:`crm_dagster.sandbox.faults`).
* ``GET /_sandbox/records``: ``{"total": N}``. ``POST`` with
  ``{"upsert": [...], "touch": [ids], "delete": [ids], "add": COUNT}`` changes records, see
  :meth:`RecordStore.apply`, and returns ``{"total": N}``.
* ``GET /_sandbox/settings``: ``{"include_total": bool, "latency_ms": float}``. ``POST``
  with some of these fields changes them.

The server binds 127.0.0.1 only. Control requests are logged but not recorded.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from datetime import timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from crm_dagster.sandbox import faults as kinds
from crm_dagster.sandbox.faults import PERSONS_ENDPOINT, RESOURCE_ENDPOINT, Fault, FaultQueue
from crm_dagster.sandbox.records import encode_record, format_timestamp, parse_timestamp
from crm_dagster.sandbox.store import RecordStore

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_API_KEY = "sandbox-key"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# The in-memory request log keeps only the newest entries so that a long benchmark cannot
# exhaust memory. The request log file keeps every entry.
REQUEST_LOG_LIMIT = 100_000
MAX_BODY_BYTES = 64 * 1024 * 1024

_API_PATHS = {"/v1/resource": RESOURCE_ENDPOINT, "/v1/persons": PERSONS_ENDPOINT}
_KEY_PARAMETERS = frozenset({"api_key", "api_token"})
_CONTROL_PREFIX = "/_sandbox/"
_JSON = "application/json"
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1><p>The service is down for maintenance.</p></body></html>"
)
# SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


class _BadRequest(Exception):
    """Invalid request, rejected with status 400 and the message as the error."""


def _encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _redact(query: dict[str, str], key_parameter: str | None = None) -> dict[str, str]:
    hidden = _KEY_PARAMETERS | {key_parameter} if key_parameter else _KEY_PARAMETERS
    return {name: "***" if name in hidden else value for name, value in query.items()}


def _parse_integer(query: dict[str, str], name: str, default: int, minimum: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise _BadRequest(f"invalid {name} {text!r}: expected an integer >= {minimum}")
    return value


def _parse_sort(query: dict[str, str]) -> bool:
    """Parse ``sort``: ``id`` (the default) or ``-updated_at``; return whether newest first."""
    text = query.get("sort", "id")
    if text not in ("id", "-updated_at"):
        raise _BadRequest(f"invalid sort {text!r}: expected 'id' or '-updated_at'")
    return text == "-updated_at"


def _parse_updated_since(query: dict[str, str]) -> str | None:
    """Parse ``updated_since`` into the ``YYYY-MM-DDTHH:MM:SSZ`` form that the store compares."""
    text = query.get("updated_since")
    if text is None:
        return None
    try:
        moment = parse_timestamp(text)
    except ValueError:
        # A raw "+" in a query string decodes to a space.
        hint = ", with '+' encoded as %2B" if " " in text else ""
        raise _BadRequest(
            f"invalid updated_since {text!r}: expected an ISO 8601 timestamp{hint}"
        ) from None
    # Stored timestamps have whole seconds, so ">= 10:00:00.5" is ">= 10:00:01".
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return format_timestamp(moment)


def _resource_body(fragments: list[str], total: int, include_total: bool, kind: str | None) -> str:
    parts = []
    if kind == kinds.NULL_DATA:
        parts.append('"data":null')
    elif kind != kinds.MISSING_DATA:
        parts.append('"data":[' + ",".join(fragments) + "]")
    if include_total and kind != kinds.NO_TOTAL:
        parts.append(f'"total":"{total}"' if kind == kinds.TOTAL_STRING else f'"total":{total}')
    return "{" + ",".join(parts) + "}"


def _persons_body(
    fragments: list[str], total: int, start: int, limit: int, kind: str | None
) -> str:
    more = start + len(fragments) < total
    pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
    if more:
        pagination["next_start"] = start + limit
    parts = ['"success":true']
    if kind == kinds.NULL_DATA:
        parts.append('"data":null')
    elif kind != kinds.MISSING_DATA:
        parts.append('"data":[' + ",".join(fragments) + "]")
    parts.append('"additional_data":{"pagination":' + json.dumps(pagination) + "}")
    return "{" + ",".join(parts) + "}"


class _HTTPServer(ThreadingHTTPServer):
    """Threading HTTP server that sets TCP_NODELAY and can close open keep-alive connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, app: SandboxServer) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host name with socket.getfqdn(), which can
        # query DNS. The sandbox does not need the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        # Without TCP_NODELAY, Nagle's algorithm delays small responses on keep-alive
        # connections by up to 40 ms.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection, so idle keep-alive handlers return."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError means the client or a reset fault closed the socket already.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("connection from %s closed early: %s", client_address, error)
        else:
            logger.exception("request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    """Request handler for the API and the control endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "CRMSandbox/1.0"
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the default access log line. :meth:`_handle` logs each request itself."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log malformed requests that the base class rejects."""
        logger.info("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        self._status: int | None = None
        self._error: str | None = None
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        app = self.server.app
        fault = None
        recorded = not url.path.startswith(_CONTROL_PREFIX)
        if recorded:
            app._begin_request()
        try:
            fault = self._answer(url, query)
        finally:
            if recorded:
                app._record_request(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": _redact(query, app.api_key_param),
                        "status": self._status,
                        "fault": fault.kind if fault else None,
                    }
                )

    def _answer(self, url: Any, query: dict[str, str]) -> Fault | None:
        app = self.server.app
        fault = None
        try:
            body = self._read_body()
        except _BadRequest as error:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        else:
            if url.path.startswith(_CONTROL_PREFIX):
                self._handle_control(url.path[len(_CONTROL_PREFIX) :], body)
            elif url.path in _API_PATHS:
                fault = self._handle_api(_API_PATHS[url.path], query)
            else:
                self._send_json(HTTPStatus.NOT_FOUND, {"error": f"not found: {url.path}"})

        redacted = _redact(query, app.api_key_param)
        target = url.path + ("?" + urlencode(redacted, safe="*") if query else "")
        status = self._status if self._status else "-"
        if self._error is None:
            logger.info("%s %s %s", self.command, target, status)
        else:
            logger.info("%s %s %s: %s", self.command, target, status, self._error)
        return fault

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _BadRequest("chunked request bodies are not supported: send Content-Length")
        text = self.headers.get("Content-Length", "0")
        if not text.isdigit() or int(text) > MAX_BODY_BYTES:
            raise _BadRequest(
                f"invalid Content-Length {text!r}: expected 0 to {MAX_BODY_BYTES} bytes"
            )
        return self.rfile.read(int(text))

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = _JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._status = int(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        if status >= 400 and isinstance(value, dict):
            self._error = value.get("error")
        self._send(status, _encode_json(value), headers=headers)

    def _send_reset(self, body: bytes) -> None:
        """Send headers with the full Content-Length and half of ``body``, then reset."""
        self._status = HTTPStatus.OK
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", _JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        # The socket closes only when its last file object closes, so close rfile first.
        # The write side needs no close: it holds no reference to the socket.
        self.rfile.close()
        self.connection.close()

    def _handle_api(self, endpoint: str, query: dict[str, str]) -> Fault | None:
        """Serve one ``/v1`` request and return the fault applied to it, if any."""
        app = self.server.app
        if self.command != "GET":
            self._send_json(
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"error": f"method {self.command} not allowed: use GET"},
                headers={"Allow": "GET"},
            )
            return None
        if app.latency_ms > 0:
            time.sleep(app.latency_ms / 1000)

        is_resource = endpoint == RESOURCE_ENDPOINT
        key_parameter = app.api_key_param or ("api_key" if is_resource else "api_token")
        supplied_key = query.get(key_parameter, "")
        if not hmac.compare_digest(supplied_key.encode(), app.api_key.encode()):
            self._send_json(HTTPStatus.UNAUTHORIZED, {"error": "invalid api key"})
            return None
        try:
            offset = _parse_integer(query, "offset" if is_resource else "start", 0, 0)
            limit = min(_parse_integer(query, "limit", DEFAULT_LIMIT, 1), MAX_LIMIT)
            updated_since = _parse_updated_since(query)
            newest_first = _parse_sort(query)
        except _BadRequest as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return None

        fault = app._faults.take(endpoint, offset)
        kind = fault.kind if fault else None
        if fault is not None:
            logger.info("applying fault %s to %s at offset %d", fault.kind, endpoint, offset)
        if kind == kinds.STATUS:
            self._send_fault_status(fault)
            return fault
        if kind == kinds.DROP:
            self.close_connection = True
            return fault
        if kind == kinds.HTML:
            self._send(HTTPStatus.OK, _HTML_PAGE, "text/html; charset=utf-8")
            return fault
        if kind == kinds.DELAY:
            time.sleep(fault.delay_seconds or 0.0)
        if kind == kinds.ADD:
            app._store.apply(add=fault.record_count or 1)
        if kind == kinds.PREPEND:
            _prepend_records(app._store, fault.record_count or 1)

        fragments, total = app._store.page(offset, limit, updated_since, newest_first)
        if kind in (kinds.NULL_ID, kinds.MISSING_ID) and fragments:
            fragments = [_without_id(fragments[0], kind), *fragments[1:]]
        if is_resource:
            text = _resource_body(fragments, total, app.include_total, kind)
        else:
            text = _persons_body(fragments, total, offset, limit, kind)
        body = text.encode()
        if kind == kinds.BAD_JSON:
            body = body[: len(body) // 2]
        if kind == kinds.RESET_MID_BODY:
            self._send_reset(body)
        else:
            self._send(HTTPStatus.OK, body)
        return fault

    def _send_fault_status(self, fault: Fault) -> None:
        code = fault.status or HTTPStatus.INTERNAL_SERVER_ERROR
        try:
            reason = f"{code} {HTTPStatus(code).phrase}"
        except ValueError:
            reason = str(code)
        headers = {}
        retry_after = fault.retry_after_header(time.time())
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self._send_json(code, {"error": f"injected fault: {reason}"}, headers=headers)

    def _handle_control(self, route: str, body: bytes) -> None:
        handlers = {
            "health": {"GET": self._control_health},
            "requests": {"GET": self._control_requests, "DELETE": self._control_clear_requests},
            "faults": {"GET": self._control_faults, "POST": self._control_set_faults},
            "records": {"GET": self._control_total, "POST": self._control_change_records},
            "settings": {"GET": self._control_settings, "POST": self._control_set_settings},
        }
        methods = handlers.get(route)
        if methods is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"not found: {_CONTROL_PREFIX}{route}"})
            return
        handler = methods.get(self.command)
        if handler is None:
            allowed = ", ".join(methods)
            self._send_json(
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"error": f"method {self.command} not allowed: use {allowed}"},
                headers={"Allow": allowed},
            )
            return
        try:
            payload = self._parse_payload(body) if self.command == "POST" else {}
            result = handler(payload)
        except (_BadRequest, ValueError) as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        self._send_json(HTTPStatus.OK, result)

    @staticmethod
    def _parse_payload(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"{}")
        except ValueError as error:
            raise _BadRequest(f"invalid JSON body: {error}") from None
        if not isinstance(payload, dict):
            raise _BadRequest("invalid JSON body: expected an object")
        return payload

    def _control_health(self, payload: dict[str, Any]) -> Any:
        return {"status": "ok"}

    def _control_requests(self, payload: dict[str, Any]) -> Any:
        return self.server.app.requests

    def _control_clear_requests(self, payload: dict[str, Any]) -> Any:
        return {"cleared": self.server.app.clear_requests()}

    def _control_faults(self, payload: dict[str, Any]) -> Any:
        return {"faults": self.server.app.faults}

    def _control_set_faults(self, payload: dict[str, Any]) -> Any:
        _check_fields(payload, {"faults"})
        specs = payload.get("faults", [])
        if not isinstance(specs, list) or not all(isinstance(spec, str) for spec in specs):
            raise _BadRequest("invalid faults: expected a list of spec strings")
        self.server.app.set_faults(specs)
        return {"faults": self.server.app.faults}

    def _control_total(self, payload: dict[str, Any]) -> Any:
        return {"total": self.server.app.total}

    def _control_change_records(self, payload: dict[str, Any]) -> Any:
        _check_fields(payload, {"upsert", "touch", "delete", "add"})
        for name in ("upsert", "touch", "delete"):
            if not isinstance(payload.get(name, []), list):
                raise _BadRequest(f"invalid {name}: expected a list")
        total = self.server.app._store.apply(
            upsert=payload.get("upsert", []),
            touch=payload.get("touch", []),
            delete=payload.get("delete", []),
            add=payload.get("add", 0),
        )
        return {"total": total}

    def _control_settings(self, payload: dict[str, Any]) -> Any:
        return self.server.app.settings

    def _control_set_settings(self, payload: dict[str, Any]) -> Any:
        _check_fields(payload, {"include_total", "latency_ms"})
        self.server.app.update_settings(**payload)
        return self.server.app.settings


def _prepend_records(store: RecordStore, count: int) -> None:
    """Insert ``count`` generated records with ids just below the store's lowest id."""
    first_page, _ = store.page(0, 1)
    lowest = json.loads(first_page[0])["id"] if first_page else 1
    store.apply(upsert=[{"id": lowest - number} for number in range(1, count + 1)])


def _without_id(fragment: str, kind: str) -> str:
    """Return the encoded record with its id set to null (``null_id``) or removed."""
    record = json.loads(fragment)
    if kind == kinds.NULL_ID:
        record["id"] = None
    else:
        record.pop("id", None)
    return encode_record(record)


def _check_fields(payload: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise _BadRequest(f"unknown fields {unknown}: expected some of {sorted(allowed)}")


class SandboxServer:
    """Sandbox CRM API server on 127.0.0.1, run on a daemon thread.

    Args:
        records: Number of generated records, with ids 1 to ``records``.
        api_key: Key that ``/v1`` requests must send as ``api_key`` or ``api_token``.
        seed: Seed for :func:`~crm_dagster.sandbox.records.generate_record`.
        port: TCP port, or 0 to pick a free one.
        latency_ms: Milliseconds to sleep before each ``/v1`` response.
        include_total: Whether ``/v1/resource`` responses contain ``total``.
        faults: Fault specs to queue, see :mod:`crm_dagster.sandbox.faults`.
        request_log: File that gets one JSON line per recorded request, appended.
        api_key_param: Query parameter that carries the key on both endpoints. None uses
            ``api_key`` on ``/v1/resource`` and ``api_token`` on ``/v1/persons``.

    Raises:
        ValueError: If an argument is invalid, including a fault spec.

    Example::

        with SandboxServer(records=250, api_key="secret") as sandbox:
            requests.get(f"{sandbox.base_url}/v1/resource", params={"api_key": "secret"})
    """

    def __init__(
        self,
        records: int = 1000,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 0,
        port: int = 0,
        latency_ms: float = 0,
        include_total: bool = True,
        faults: list[str] | None = None,
        request_log: str | Path | None = None,
        api_key_param: str | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("invalid api_key: must not be empty")
        if api_key_param == "":
            raise ValueError("invalid api_key_param: must not be empty")
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}: expected 0 to 65535")
        self.api_key = api_key
        self.api_key_param = api_key_param
        self.seed = seed
        self.include_total = True
        self.latency_ms = 0.0
        self.update_settings(include_total=include_total, latency_ms=latency_ms)
        self._port = port
        self._store = RecordStore(records, seed)
        self._faults = FaultQueue(faults or ())
        self._request_log_path = Path(request_log) if request_log is not None else None
        self._requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self._requests_lock = threading.Lock()
        # Requests in progress. Reading the log waits until none is left, because a handler
        # records its request after the client already has the response.
        self._in_flight = 0
        self._settled = threading.Condition(self._requests_lock)
        self._log_file: IO[str] | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._generation_stop = threading.Event()

    def start(self) -> SandboxServer:
        """Bind the port and serve on a daemon thread.

        Raises:
            RuntimeError: If the server is already running.
            OSError: If the port cannot be bound.
        """
        if self._httpd is not None:
            raise RuntimeError(f"sandbox server is already running at {self.base_url}")
        self._httpd = _HTTPServer(self._port, self)
        if self._request_log_path is not None:
            self._log_file = self._request_log_path.open("a", encoding="utf-8")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"crm-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._generation_stop = threading.Event()
        self._store.generate_in_background(self._generation_stop)
        logger.info("CRM sandbox started at %s with %d records", self.base_url, self.total)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and the request log file. Safe to repeat."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._generation_stop.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._requests_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        logger.info("CRM sandbox at 127.0.0.1:%d stopped", httpd.server_address[1])

    def __enter__(self) -> SandboxServer:
        return self if self._httpd is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Bound TCP port while running, otherwise the configured port."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self._port

    @property
    def base_url(self) -> str:
        """Base URL such as ``http://127.0.0.1:8123``.

        Raises:
            RuntimeError: If the server is not running.
        """
        if self._httpd is None:
            raise RuntimeError("sandbox server is not running: call start() first")
        return f"http://{HOST}:{self.port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copy of the recorded ``/v1`` requests, oldest first, with keys shown as ``***``."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=5.0)
            return [dict(entry, query=dict(entry["query"])) for entry in self._requests]

    def clear_requests(self) -> int:
        """Clear the in-memory request log and return the number of entries removed."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=5.0)
            count = len(self._requests)
            self._requests.clear()
            return count

    def _begin_request(self) -> None:
        with self._settled:
            self._in_flight += 1

    def _record_request(self, entry: dict[str, Any]) -> None:
        with self._settled:
            self._in_flight -= 1
            self._settled.notify_all()
            self._requests.append(entry)
            if self._log_file is not None:
                self._log_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._log_file.flush()

    @property
    def faults(self) -> list[str]:
        """Queued fault specs with their remaining counts."""
        return self._faults.remaining()

    def set_faults(self, specs: list[str]) -> None:
        """Replace the fault queue.

        Raises:
            ValueError: If a spec is invalid. The queue is left unchanged then.
        """
        self._faults.replace(specs)

    @property
    def settings(self) -> dict[str, Any]:
        """Runtime settings that ``POST /_sandbox/settings`` can change."""
        return {"include_total": self.include_total, "latency_ms": self.latency_ms}

    def update_settings(
        self, include_total: bool | None = None, latency_ms: float | None = None
    ) -> None:
        """Change whether ``total`` is sent and the latency, leaving None arguments as they are.

        Raises:
            ValueError: If a value has the wrong type or ``latency_ms`` is negative.
        """
        if include_total is not None:
            if not isinstance(include_total, bool):
                raise ValueError(f"invalid include_total {include_total!r}: expected a boolean")
            self.include_total = include_total
        if latency_ms is not None:
            if (
                isinstance(latency_ms, bool)
                or not isinstance(latency_ms, int | float)
                or not 0 <= latency_ms < float("inf")
            ):
                raise ValueError(f"invalid latency_ms {latency_ms!r}: expected a number >= 0")
            self.latency_ms = float(latency_ms)

    @property
    def total(self) -> int:
        """Number of records."""
        return self._store.total

    @property
    def records(self) -> list[dict[str, Any]]:
        """Copies of all current records in id order. Generates the whole dataset if needed."""
        return self._store.records()

    def upsert(self, records: list[dict[str, Any]]) -> int:
        """Merge fields into records by ``id``, inserting unknown ids. Returns the new total.

        Raises:
            ValueError: If a record has no integer ``id`` or cannot be encoded as JSON.
        """
        return self._store.apply(upsert=records)

    def touch(self, ids: list[int]) -> int:
        """Set ``updated_at`` of the records to the current UTC second. Returns the total.

        Raises:
            ValueError: If an id does not exist.
        """
        return self._store.apply(touch=ids)

    def delete(self, ids: list[int]) -> int:
        """Remove records by id. Returns the new total.

        Raises:
            ValueError: If an id does not exist.
        """
        return self._store.apply(delete=ids)

    def add(self, count: int) -> int:
        """Append ``count`` generated records with new ids, created now. Returns the new total.

        Raises:
            ValueError: If ``count`` is negative.
        """
        return self._store.apply(add=count)
