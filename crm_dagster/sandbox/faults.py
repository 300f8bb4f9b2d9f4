"""Fault injection for the sandbox CRM API.

A fault queue contains faults in the order given. Each authenticated ``/v1`` request with valid
parameters takes the first fault that matches it, and that fault's count drops by one. A
fault whose count reaches zero leaves the queue. Requests rejected with 400 or 401 take no
fault.

Fault specs are strings with this grammar::

    SPEC    := KIND [":" ARG] ["x" COUNT] ["@" OFFSET]
    COUNT   := positive integer, default 1: how many matching requests the fault applies to
    OFFSET  := non-negative integer: match only requests with this ``offset`` (``start`` on
               ``/v1/persons``); without it the fault matches any offset

Kinds and their ARG:

* ``status:CODE[,retry_after=VALUE]``: respond with HTTP status CODE (200-599) and a JSON
  error body. VALUE sets a ``Retry-After`` header: whole seconds (``retry_after=2``), or
  ``date+N`` / ``date-N`` for an HTTP date N seconds after / before the response.
* ``delay:SECONDS``: sleep SECONDS (a decimal number) before the normal response.
* ``drop``: close the connection without sending a response.
* ``reset_mid_body``: send the status line and headers with the full ``Content-Length``,
  then half of the body, then reset the connection.
* ``html``: respond 200 with a ``text/html`` maintenance page.
* ``bad_json``: respond 200 with ``application/json`` but only the first half of the body.
* ``missing_data``: respond 200 without the ``data`` field.
* ``null_data``: respond 200 with ``"data": null``.
* ``total_string``: respond 200 with ``total`` as a JSON string. ``/v1/resource`` only.
* ``no_total``: respond 200 without ``total``. ``/v1/resource`` only.
* ``null_id``: respond 200 with ``"id": null`` in the first record of the page.
* ``missing_id``: respond 200 without the ``id`` field in the first record of the page.
* ``add:N``: append N new records with new ids before serving the page, as records created
  while a client pages through a CRM that sorts by id.
* ``prepend:N``: insert N records with ids below the lowest id before serving the page, so
  every existing record moves to an offset N higher, as in a CRM without a stable sort order.

Examples: ``status:503x3``, ``status:429,retry_after=1x2``, ``status:429,retry_after=date+2``,
``drop@200``, ``delay:2.5``, ``reset_mid_body``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

STATUS = "status"
DELAY = "delay"
DROP = "drop"
RESET_MID_BODY = "reset_mid_body"
HTML = "html"
BAD_JSON = "bad_json"
MISSING_DATA = "missing_data"
NULL_DATA = "null_data"
TOTAL_STRING = "total_string"
NO_TOTAL = "no_total"
NULL_ID = "null_id"
MISSING_ID = "missing_id"
ADD = "add"
PREPEND = "prepend"

KINDS = (
    STATUS,
    DELAY,
    DROP,
    RESET_MID_BODY,
    HTML,
    BAD_JSON,
    MISSING_DATA,
    NULL_DATA,
    TOTAL_STRING,
    NO_TOTAL,
    NULL_ID,
    MISSING_ID,
    ADD,
    PREPEND,
)
_KINDS_WITH_ARG = frozenset({STATUS, DELAY, ADD, PREPEND})
# Kinds that change the "total" field only match endpoints that send one.
_TOTAL_KINDS = frozenset({TOTAL_STRING, NO_TOTAL})

RESOURCE_ENDPOINT = "resource"
PERSONS_ENDPOINT = "persons"

# The lazy ARG group lets "status:503x3" split into ARG "503" and COUNT 3.
_SPEC_PATTERN = re.compile(
    r"(?P<kind>[a-z_]+)(?::(?P<arg>[^@]*?))?(?:x(?P<count>\d+))?(?:@(?P<offset>\d+))?"
)
_RETRY_AFTER_PATTERN = re.compile(r"\d+|date[+-]\d+")
_GRAMMAR_HINT = "expected KIND[:ARG][xCOUNT][@OFFSET], e.g. status:503x3 or drop@100"


@dataclass
class Fault:
    """One queued fault and the number of requests it still applies to."""

    kind: str
    count: int = 1
    offset: int | None = None
    status: int | None = None
    retry_after: str | None = None
    delay_seconds: float | None = None
    record_count: int | None = None

    @property
    def spec(self) -> str:
        """Spec string for this fault with its remaining count."""
        text = self.kind
        if self.kind == STATUS:
            text += f":{self.status}"
            if self.retry_after is not None:
                text += f",retry_after={self.retry_after}"
        elif self.kind == DELAY:
            text += f":{self.delay_seconds:g}"
        elif self.kind in (ADD, PREPEND):
            text += f":{self.record_count}"
        if self.count != 1:
            text += f"x{self.count}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text

    def matches(self, endpoint: str, offset: int) -> bool:
        """Check whether this fault applies to a request on ``endpoint`` at ``offset``."""
        if self.offset is not None and self.offset != offset:
            return False
        return endpoint == RESOURCE_ENDPOINT or self.kind not in _TOTAL_KINDS

    def retry_after_header(self, now: float) -> str | None:
        """Build the ``Retry-After`` header value for a response sent at ``now`` (epoch seconds)."""
        if self.retry_after is None:
            return None
        if self.retry_after.startswith("date"):
            return formatdate(now + int(self.retry_after[4:]), usegmt=True)
        return self.retry_after


def parse_fault(spec: str) -> Fault:
    """Parse one fault spec string.

    Raises:
        ValueError: If the spec does not follow the grammar in this module's docstring.
    """
    match = _SPEC_PATTERN.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"invalid fault spec {spec!r}: {_GRAMMAR_HINT}")
    kind, arg = match["kind"], match["arg"]
    if kind not in KINDS:
        raise ValueError(f"invalid fault spec {spec!r}: unknown kind {kind!r}, use one of {KINDS}")

    fault = Fault(kind=kind)
    if match["count"] is not None:
        fault.count = int(match["count"])
        if fault.count < 1:
            raise ValueError(f"invalid fault spec {spec!r}: COUNT must be at least 1")
    if match["offset"] is not None:
        fault.offset = int(match["offset"])

    if kind not in _KINDS_WITH_ARG:
        if arg is not None:
            raise ValueError(f"invalid fault spec {spec!r}: {kind} takes no ARG")
        return fault
    if not arg:
        raise ValueError(f"invalid fault spec {spec!r}: {kind} needs an ARG, {_GRAMMAR_HINT}")
    if kind == STATUS:
        _parse_status_arg(spec, arg, fault)
    elif kind == DELAY:
        _parse_delay_arg(spec, arg, fault)
    else:
        _parse_record_count_arg(spec, arg, fault)
    return fault


def _parse_status_arg(spec: str, arg: str, fault: Fault) -> None:
    code, _, option = arg.partition(",")
    if not code.isdigit() or not 200 <= int(code) <= 599:
        raise ValueError(f"invalid fault spec {spec!r}: status CODE must be 200-599")
    fault.status = int(code)
    if not option:
        return
    name, _, value = option.partition("=")
    if name != "retry_after" or not _RETRY_AFTER_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid fault spec {spec!r}: expected retry_after=SECONDS or retry_after=date+SECONDS"
        )
    fault.retry_after = value


def _parse_delay_arg(spec: str, arg: str, fault: Fault) -> None:
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    # The comparison also rejects NaN, which float() accepts.
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"invalid fault spec {spec!r}: delay SECONDS must be a number >= 0")
    fault.delay_seconds = seconds


def _parse_record_count_arg(spec: str, arg: str, fault: Fault) -> None:
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"invalid fault spec {spec!r}: {fault.kind} N must be an integer >= 1")
    fault.record_count = int(arg)


class FaultQueue:
    """Thread-safe queue of faults that requests use up."""

    def __init__(self, specs: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = [parse_fault(spec) for spec in specs]

    def replace(self, specs: Iterable[str]) -> None:
        """Replace the whole queue with faults parsed from ``specs``.

        Raises:
            ValueError: If any spec is invalid. The queue is left unchanged then.
        """
        faults = [parse_fault(spec) for spec in specs]
        with self._lock:
            self._faults = faults

    def remaining(self) -> list[str]:
        """Return the spec strings of the queued faults with their remaining counts."""
        with self._lock:
            return [fault.spec for fault in self._faults]

    def take(self, endpoint: str, offset: int) -> Fault | None:
        """Use up one application of the first fault matching the request, if any."""
        with self._lock:
            for position, fault in enumerate(self._faults):
                if fault.matches(endpoint, offset):
                    fault.count -= 1
                    if fault.count == 0:
                        del self._faults[position]
                    return fault
        return None
