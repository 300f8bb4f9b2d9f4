"""Concurrent page fetching against the in-process sandbox: every guarantee of sequential paging.

Most tests iterate the dlt resource ``crm_data`` directly, which pages exactly as a load does
without normalizing or writing. The asset test runs the whole load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crm_dagster import transport as transport_module
from crm_dagster.concurrent import PageReadAhead, mount_read_ahead
from crm_dagster.contract import RESOURCE_NAME, CrmContract
from crm_dagster.errors import CrmRequestError
from crm_dagster.sandbox import SandboxServer
from crm_dagster.source import crm_source
from crm_dagster.transport import CrmTransport, LoadStats, build_session
from crm_dagster_tests.conftest import SENTINEL_KEY, find_secret, run_crm_asset, warehouse_rows

RECORDS = 1000
LIMIT = 50
PAGES = RECORDS // LIMIT
ALL_OFFSETS = list(range(0, RECORDS, LIMIT))


@pytest.fixture
def crm() -> Iterator[SandboxServer]:
    """Sandbox with 1000 records, so a load at limit 50 has 20 pages."""
    with SandboxServer(records=RECORDS, api_key=SENTINEL_KEY, seed=3) as server:
        yield server


@pytest.fixture
def recorded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits instead of sleeping through them."""
    waits: list[float] = []
    monkeypatch.setattr(CrmTransport, "sleep", staticmethod(waits.append))
    return waits


def fetch_records(
    server: SandboxServer, stats: LoadStats | None = None, **settings: Any
) -> list[dict[str, Any]]:
    """Page through crm_data with the given contract settings and return the records.

    Pages stay dictionaries (arrow_batch_records = 0), so the records come back in page order.
    """
    contract = CrmContract(limit=LIMIT, arrow_batch_records=0, **settings)
    source = crm_source(server.base_url, SENTINEL_KEY, contract, stats or LoadStats())
    return list(source.resources[RESOURCE_NAME])


def requested_offsets(server: SandboxServer) -> list[int]:
    """Return the offset of each /v1/resource request the sandbox served, in arrival order."""
    return [int(entry["query"]["offset"]) for entry in server.requests]


def test_every_page_fetched_once(crm: SandboxServer) -> None:
    stats = LoadStats()

    records = fetch_records(crm, stats, max_in_flight=4)

    assert sorted(requested_offsets(crm)) == ALL_OFFSETS
    assert [record["id"] for record in records] == list(range(1, RECORDS + 1))
    assert stats.requests == PAGES
    assert stats.pages == PAGES
    assert stats.records == RECORDS
    assert stats.retries == 0


def test_records_equal_sequential_load(crm: SandboxServer) -> None:
    sequential = fetch_records(crm, max_in_flight=1)
    crm.clear_requests()

    concurrent = fetch_records(crm, max_in_flight=8)

    assert concurrent == sequential
    assert sorted(requested_offsets(crm)) == ALL_OFFSETS


def test_in_flight_requests_bounded(crm: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The latency keeps each request open long enough for the others to start.
    crm.update_settings(latency_ms=200)
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    original_send = CrmTransport.send

    def counting_send(self: CrmTransport, *args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return original_send(self, *args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(CrmTransport, "send", counting_send)

    records = fetch_records(crm, max_in_flight=3)

    assert len(records) == RECORDS
    assert peak == 3


def test_503_on_one_page_retried(crm: SandboxServer, recorded_waits: list[float]) -> None:
    crm.set_faults(["status:503@500"])
    stats = LoadStats()

    records = fetch_records(crm, stats, max_in_flight=4)

    offsets = requested_offsets(crm)
    assert offsets.count(500) == 2
    assert sorted(set(offsets)) == ALL_OFFSETS
    assert len(offsets) == PAGES + 1
    assert [record["id"] for record in records] == list(range(1, RECORDS + 1))
    assert stats.retries == 1
    assert recorded_waits == [2.0]


def test_failed_page_raises_same_error(crm: SandboxServer) -> None:
    crm.set_faults(["status:404@500"])
    with pytest.raises(Exception) as sequential:
        fetch_records(crm, max_in_flight=1)
    crm.set_faults(["status:404@500"])

    with pytest.raises(Exception) as concurrent:
        fetch_records(crm, max_in_flight=4)

    sequential_error = find_crm_error(sequential.value)
    concurrent_error = find_crm_error(concurrent.value)
    assert isinstance(concurrent_error, CrmRequestError)
    assert concurrent_error.status == 404
    assert str(concurrent_error) == str(sequential_error)


def find_crm_error(error: BaseException) -> BaseException | None:
    """Return the CrmRequestError that dlt wrapped in its extraction errors."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, CrmRequestError):
            return current
        current = current.__cause__ or current.__context__
    return None


def test_retries_exhausted_on_worker_fail_load(
    crm: SandboxServer, recorded_waits: list[float]
) -> None:
    crm.set_faults(["status:503x4@300"])

    with pytest.raises(Exception) as failure:
        fetch_records(crm, max_in_flight=4)

    error = find_crm_error(failure.value)
    assert isinstance(error, CrmRequestError)
    assert error.status == 503
    assert error.attempts == 4
    assert "offset=300" in str(error)


class FrozenClock:
    """Stand-in for the transport's ``time`` module: the clock never moves, sleeps are recorded.

    With the clock frozen at 0, the rate limiter's wait before each request is the time slot it
    gave that request, so the slots can be counted without waiting for them.
    """

    def __init__(self) -> None:
        self.slots: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slots.append(seconds)

    def time(self) -> float:
        return time.time()


def test_requests_per_second_honoured(crm: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FrozenClock()
    frozen_time = SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep, time=clock.time)
    monkeypatch.setattr(transport_module, "time", frozen_time)

    records = fetch_records(crm, max_in_flight=4, requests_per_second=5)

    assert len(records) == RECORDS
    # The first request goes at once, and each further one gets the next 0.2 s slot. No two
    # requests share a slot, so at most 5 start in any second.
    assert sorted(clock.slots) == pytest.approx([slot / 5 for slot in range(1, PAGES)])


def test_sequential_without_total() -> None:
    with SandboxServer(records=RECORDS, api_key=SENTINEL_KEY, include_total=False) as server:
        records = fetch_records(server, max_in_flight=4, total_path="")

        # Without a total the last page is not known in advance: the first empty page ends the
        # load, and each page is requested only after the one before it arrived.
        assert requested_offsets(server) == [*ALL_OFFSETS, RECORDS]
    assert len(records) == RECORDS


def test_read_ahead_mounted_only_when_useful() -> None:
    key = "not-a-secret"
    sequential = CrmContract(max_in_flight=1)
    without_total = CrmContract(max_in_flight=4, total_path="")
    concurrent = CrmContract(max_in_flight=4)

    assert mount_read_ahead(build_session(sequential, key), sequential) is None
    assert mount_read_ahead(build_session(without_total, key), without_total) is None
    session = build_session(concurrent, key)
    read_ahead = mount_read_ahead(session, concurrent)
    assert isinstance(read_ahead, PageReadAhead)
    assert session.get_adapter("http://crm.example") is read_ahead


def test_offsets_stop_below_total_and_max_offset() -> None:
    contract = CrmContract(max_in_flight=4, max_offset=900)
    read_ahead = mount_read_ahead(build_session(contract, "not-a-secret"), contract)
    assert read_ahead is not None

    assert read_ahead.offsets_to_read(100, 100, total=1000) == [100, 200, 300, 400]
    assert read_ahead.offsets_to_read(700, 100, total=1000) == [700, 800]
    assert read_ahead.offsets_to_read(700, 100, total=750) == [700]
    assert read_ahead.offsets_to_read(100, 100, total=None) == []


@pytest.mark.parametrize(
    ("latencies_ms", "processing_ms", "expected"),
    [
        ([], None, 8),
        ([50.0], None, 8),
        ([50.0, 60.0], 2.5, 8),
        ([1.0], 2.5, 2),
        ([12.0, 9.0, 40.0], 2.5, 5),
        ([0.0], 0.0, 1),
        ([30.0], 0.0, 8),
    ],
)
def test_pages_in_flight_cover_latency(
    latencies_ms: list[float], processing_ms: float | None, expected: int
) -> None:
    contract = CrmContract(max_in_flight=8)
    read_ahead = mount_read_ahead(build_session(contract, "not-a-secret"), contract)
    assert read_ahead is not None
    for latency in latencies_ms:
        read_ahead._record_latency(latency / 1000)
    if processing_ms is not None:
        read_ahead._record_processing(processing_ms / 1000)

    assert read_ahead.pages_in_flight() == expected


def test_local_crm_keeps_few_requests_in_flight(
    crm: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduled: list[list[int]] = []
    offsets_to_read = PageReadAhead.offsets_to_read

    def recording(self: PageReadAhead, *args: Any) -> list[int]:
        offsets = offsets_to_read(self, *args)
        scheduled.append(offsets)
        return offsets

    monkeypatch.setattr(PageReadAhead, "offsets_to_read", recording)

    records = fetch_records(crm, max_in_flight=8)

    assert len(records) == RECORDS
    # The first request goes out before the total is known. After the first page, all 8: nothing
    # is measured yet. Once the sandbox responds in about a millisecond and the client spends
    # about as long per page, fewer.
    scheduled = [offsets for offsets in scheduled if offsets]
    assert len(scheduled[0]) == 8
    assert max(len(offsets) for offsets in scheduled[-5:]) < 8


def test_worker_threads_exit_after_load(crm: SandboxServer) -> None:
    fetch_records(crm, max_in_flight=4)

    # Workers exit after one idle second. The loop waits for that and fails only if they stay.
    deadline = time.monotonic() + 10
    while read_ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_ahead_threads() == []


def read_ahead_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name == "crm-read-ahead"]


def test_retry_logs_hold_no_key(
    crm: SandboxServer, recorded_waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    crm.set_faults(["status:503@200", "drop@400"])
    caplog.set_level(logging.DEBUG)

    records = fetch_records(crm, max_in_flight=4)

    assert len(records) == RECORDS
    retry_messages = [record.getMessage() for record in caplog.records if "retrying" in record.msg]
    assert len(retry_messages) == 2
    assert find_secret(texts=[caplog.text]) == []


def test_asset_loads_with_default_concurrency(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contract_file = tmp_path / "contract.toml"
    contract_file.write_text(f"limit = {LIMIT}\n")
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(contract_file))
    assert CrmContract().max_in_flight > 1

    result = run_crm_asset(crm.base_url)

    assert result.success
    assert sorted(requested_offsets(crm)) == ALL_OFFSETS
    assert warehouse_rows("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data") == [
        (RECORDS, RECORDS)
    ]
    (event,) = result.get_asset_materialization_events()
    metadata = {key: value.value for key, value in event.materialization.metadata.items()}
    assert metadata["http_requests"] == PAGES
    assert metadata["pages_fetched"] == PAGES
    assert metadata["rows_loaded"] == RECORDS
