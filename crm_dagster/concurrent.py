"""Concurrent page fetching: request the next pages while dlt processes the current one.

dlt's REST client pages sequentially: it sends one request, hands the page to the paginator,
and only then sends the next. Against a CRM with 100 ms per request, latency then dominates a
load. When the contract allows more than one request in flight (``max_in_flight``) and the CRM
reports a total, :class:`PageReadAhead` sends the requests for the next offsets on worker
threads as soon as the first page has reported the total. It keeps as many requests in flight
as cover the CRM's latency while dlt processes a page, up to ``max_in_flight``
(:meth:`PageReadAhead.pages_in_flight`). The client's own request for each offset then takes the
response that is already there, or waits for it.

Everything else stays as in sequential paging: pages reach dlt one at a time and in offset
order, through the same paginator (stop rules, progress log) and the same
:class:`~crm_dagster.transport.CrmTransport` (API key, retries, ``requests_per_second``,
response checks). A request that fails on a worker thread raises its error when the client
reaches that page, so a load fails with the same error as a sequential one. Only offsets below
the latest reported total are read ahead. When the CRM reports no total, paging stays
sequential.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from crm_dagster.contract import CrmContract
from crm_dagster.transport import CrmTransport

# A worker thread that finds no request to send for this long exits, so no thread outlives a
# load by more than this.
WORKER_IDLE_TIMEOUT_S = 1.0
# Latencies that pages_in_flight() takes the shortest of. Waits for Python's interpreter lock
# and for the CRM's queue make single requests slower, but rarely all of the last 16.
LATENCY_SAMPLES = 16
# Weight of the newest sample in the average time the client spends per page.
PROCESSING_WEIGHT = 0.2
# Floor of that time, so a client that spends nearly nothing per page gets max_in_flight.
MIN_PROCESSING_S = 0.0005


class PageReadAhead(HTTPAdapter):
    """Session adapter that serves page requests from responses fetched ahead of time.

    It is mounted on the session in place of the :class:`CrmTransport` it wraps. Requests that
    were not read ahead go straight to that transport.
    """

    def __init__(self, transport: CrmTransport, session: requests.Session) -> None:
        super().__init__()
        self.transport = transport
        self.max_in_flight = transport.contract.max_in_flight
        self._session = session
        self._lock = threading.Lock()
        # Prepared URL (without the key) -> response or error of a request sent ahead.
        self._pending: dict[str, Future[requests.Response]] = {}
        self._scheduled_offsets: set[int] = set()
        self._send_options: dict[str, Any] = {}
        # The client's last prepared request: read-ahead requests copy its headers and hooks.
        self._template: requests.PreparedRequest | None = None
        self._queue: queue.SimpleQueue[tuple[Any, dict[str, Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._workers = 0
        # Recent request latencies (seconds), and how long the client spends between pages.
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._processing_s: float | None = None
        self._returned_at: float | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> PageReadAhead:
        # dlt deep-copies its REST config and paginators; all copies share one read-ahead.
        return self

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Return the response read ahead for ``request``, or send it through the transport.

        Raises:
            CrmError: the error the transport raised for this request, on this thread or on
                the worker thread that sent it.
        """
        options = {"timeout": timeout, "verify": verify, "cert": cert, "proxies": proxies}
        started = time.monotonic()
        with self._lock:
            self._send_options = options
            self._template = request
            future = self._pending.pop(request.url or "", None)
        if self._returned_at is not None:
            self._record_processing(started - self._returned_at)
        try:
            if future is not None:
                return future.result()
            return self._send_timed(request, stream=stream, **options)
        finally:
            self._returned_at = time.monotonic()

    def pages_in_flight(self) -> int:
        """Return how many page requests to keep in flight, from 1 to ``max_in_flight``.

        Enough requests to cover the CRM's latency while the client processes pages: the
        shortest recent latency divided by the time the client spends per page, plus one. Before
        both are measured, ``max_in_flight``. A CRM that responds within a millisecond, such as
        one on the same machine, then gets about two requests in flight, because more would only
        compete with dlt for Python's interpreter lock.
        """
        with self._lock:
            if not self._latencies or self._processing_s is None:
                return self.max_in_flight
            latency = min(self._latencies)
            processing = max(self._processing_s, MIN_PROCESSING_S)
        return max(1, min(self.max_in_flight, math.ceil(latency / processing) + 1))

    def _send_timed(self, request: requests.PreparedRequest, **options: Any) -> requests.Response:
        """Send ``request`` through the transport and record how long it took."""
        started = time.monotonic()
        response = self.transport.send(request, **options)
        self._record_latency(time.monotonic() - started)
        return response

    def _record_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    def _record_processing(self, seconds: float) -> None:
        # An exponential average follows changes in page size and in dlt's work per page.
        with self._lock:
            if self._processing_s is None:
                self._processing_s = seconds
            else:
                self._processing_s += PROCESSING_WEIGHT * (seconds - self._processing_s)

    def read_ahead(self, request: requests.Request, offset_param: str, offsets: list[int]) -> None:
        """Queue requests for the ``offsets`` that were not queued yet.

        ``request`` is the client's request for the next page. Each copy differs from it only
        in ``offset_param``, so its prepared URL equals the one the client sends later.
        """
        for offset in offsets:
            with self._lock:
                if offset in self._scheduled_offsets:
                    continue
                self._scheduled_offsets.add(offset)
                options = dict(self._send_options)
                template = self._template

            params = {**request.params, offset_param: offset}
            if template is None:
                page_request = copy.copy(request)
                page_request.params = params
                prepared = self._session.prepare_request(page_request)
            else:
                # Copying the client's prepared request keeps the session's headers and skips
                # Session.prepare_request, which reads .netrc and the proxy variables each time.
                prepared = template.copy()
                prepared.prepare_url(request.url, params)
            future: Future[requests.Response] = Future()
            with self._lock:
                self._pending[prepared.url or ""] = future
            self._queue.put((prepared, options, future))
            self._start_worker_if_needed()

    def _start_worker_if_needed(self) -> None:
        with self._lock:
            if self._workers >= self.max_in_flight:
                return
            self._workers += 1
        # A daemon thread does not keep a finished or failed run's process alive while it
        # retries a page that the client no longer reads.
        threading.Thread(target=self._work, name="crm-read-ahead", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                prepared, options, future = self._queue.get(timeout=WORKER_IDLE_TIMEOUT_S)
            except queue.Empty:
                # Exit only if nothing was queued meanwhile. A request queued after this check
                # finds the lowered worker count and starts a new worker.
                with self._lock:
                    if self._queue.empty():
                        self._workers -= 1
                        return
                continue
            try:
                response = self._send_timed(prepared, **options)
            except BaseException as error:
                # The client's thread raises it when it reaches this page. Any exception is
                # stored, so that the client never waits for a page that will not come.
                future.set_exception(error)
            else:
                future.set_result(response)

    def offsets_to_read(self, next_offset: int, step: int, total: int | None) -> list[int]:
        """Return the offsets from ``next_offset`` on that should be in flight now.

        That is at most :meth:`pages_in_flight` offsets, all below ``total`` and below the
        contract's ``max_offset``. Without a total there are none.
        """
        if total is None:
            return []
        stop = min(total, next_offset + step * self.pages_in_flight())
        max_offset = self.transport.contract.max_offset
        if max_offset is not None:
            stop = min(stop, max_offset)
        return list(range(next_offset, stop, step))


def mount_read_ahead(session: requests.Session, contract: CrmContract) -> PageReadAhead | None:
    """Mount a :class:`PageReadAhead` on a session built by ``build_session``.

    Returns:
        The read-ahead adapter, or None when the contract pages sequentially: ``max_in_flight``
        is 1, or ``total_path`` is empty so the number of pages is unknown up front.
    """
    if contract.max_in_flight <= 1 or contract.total_path is None:
        return None

    transport = session.get_adapter("https://")
    if not isinstance(transport, CrmTransport):
        raise TypeError(
            f"session has a {type(transport).__name__} mounted, not a CrmTransport: build it "
            "with crm_dagster.transport.build_session"
        )
    read_ahead = PageReadAhead(transport, session)
    session.mount("http://", read_ahead)
    session.mount("https://", read_ahead)
    return read_ahead
