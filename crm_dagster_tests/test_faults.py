"""Fault suite: every way the sandbox CRM misbehaves ends in a correct table or a clear error.

Each failing case starts from a warehouse that a good run loaded with every record, and checks
that the failed run left those rows as they were. The contract loads incrementally by default, so
a run after the first one fetches only the records changed since. Cases that need every page run
with the ``full_refresh`` config. Every test ends with a scan for the API key in captured output,
DEBUG logs, error texts and tracebacks, and in every file the runs wrote: dlt's pipeline
directory (trace.pickle included), Dagster's run and event storage, the DuckDB file, and the
cassettes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    DagsterRunStatus,
    EnvVar,
    RunsFilter,
    materialize,
)
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import POOL, crm_assets
from crm_dagster.checks import CRM_DATA_CHECKS, NO_REJECTED_RECORDS, ROWS_MATCH_CRM_TOTAL
from crm_dagster.resources import CrmResource
from crm_dagster.sandbox import SandboxServer
from crm_dagster.transport import CrmTransport
from crm_dagster_tests.conftest import (
    CASSETTES,
    PROJECT_ROOT,
    SENTINEL_KEY,
    find_secret,
    warehouse_rows,
)

RECORDS = 250
SEED = 7
# Retries in these tests wait 0.05, 0.1 and 0.2 s instead of the default 2, 4 and 8 s.
FAST_BACKOFF = 0.05
CRM_DATA_ROWS = "SELECT * FROM crm.crm_data ORDER BY id"


def toml_value(value: Any) -> str:
    """Format a str, number, bool or flat dict as a TOML value."""
    if isinstance(value, dict):
        items = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
        return "{" + items + "}"
    return json.dumps(value)


def closed_port() -> int:
    """Return a local TCP port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CrmHarness:
    """Runs crm_data against the sandbox and keeps every error text for the secret scan."""

    def __init__(
        self,
        sandbox: SandboxServer,
        workdir: Path,
        instance: DagsterInstance,
        preloaded_warehouse: Path,
    ) -> None:
        self.sandbox = sandbox
        self.workdir = workdir
        self.instance = instance
        self.preloaded_warehouse = preloaded_warehouse
        self.error_texts: list[str] = []
        self._contracts = 0

    def contract(self, **settings: Any) -> Path:
        """Write a contract file with fast retries and ``settings``, and return its path."""
        settings.setdefault("backoff_factor", FAST_BACKOFF)
        self._contracts += 1
        path = self.workdir / f"contract-{self._contracts}.toml"
        path.write_text(
            "".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items())
        )
        return path

    def run(
        self,
        faults: list[str] | None = None,
        contract: Path | None = None,
        base_url: str | None = None,
        checks: bool = False,
        full_refresh: bool = False,
    ) -> Any:
        """Queue ``faults``, clear the request log, and materialize crm_data in process."""
        # While an earlier run claims the crm_load slot, a new run waits forever, so fail now.
        claimed = self.instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
        assert claimed == [], f"the crm_load pool slot is still claimed: {claimed}"
        self.sandbox.set_faults(faults or [])
        self.sandbox.clear_requests()
        resources = {
            "dlt": DagsterDltResource(),
            "crm": CrmResource(
                base_url=base_url or self.sandbox.base_url,
                api_key=EnvVar("CRM_API_KEY"),
                contract_file=str(contract or self.contract()),
            ),
        }
        assets: list[Any] = [crm_assets, *CRM_DATA_CHECKS] if checks else [crm_assets]
        run_config = {"ops": {"crm": {"config": {"full_refresh": full_refresh}}}}
        result = materialize(
            assets,
            resources=resources,
            run_config=run_config,
            instance=self.instance,
            raise_on_error=False,
        )
        if not result.success:
            self.error_texts.extend(error.to_string() for error in step_errors(result))
        return result

    def fail(self, faults: list[str] | None = None, **options: Any) -> str:
        """Run, check that the run failed, and return the message of the error it raised."""
        result = self.run(faults, **options)
        assert not result.success
        return crm_error_message(result)

    def preload(self) -> list[tuple[Any, ...]]:
        """Start from the warehouse of a good full load and return the rows of crm_data.

        The warehouse file is a copy of the one :func:`preloaded_warehouse` made, with the
        dlt state that the next incremental load starts from.
        """
        shutil.copyfile(self.preloaded_warehouse, os.environ["CRM_DUCKDB_PATH"])
        rows = warehouse_rows(CRM_DATA_ROWS)
        assert len(rows) == self.sandbox.total
        return rows

    def offsets(self) -> list[int]:
        """Return the offsets of the /v1 requests since the last run started, sorted.

        With the default max_in_flight, pages after the first are requested concurrently, so
        only the sorted offsets are deterministic.
        """
        return sorted(int(entry["query"].get("offset", 0)) for entry in self.sandbox.requests)


def changed(record_id: int, second: int, **fields: Any) -> dict[str, Any]:
    """Return an upsert that changes a record and moves its ``updated_at`` past every other.

    The timestamp is fixed in 2030, after all generated records, and does not depend on the
    clock, so an incremental load always picks the change up.
    """
    return {"id": record_id, "updated_at": f"2030-01-01T00:00:{second:02d}Z", **fields}


def step_errors(result: Any) -> Iterator[Any]:
    """Yield the error of each failed step, for the secret scan."""
    for event in result.all_events:
        if event.is_step_failure:
            yield event.step_failure_data.error


def crm_error_message(result: Any) -> str:
    """Return the message of the innermost error of the failed step (the CRM error)."""
    (error,) = list(step_errors(result))
    while error.cause is not None:
        error = error.cause
    return error.message


def materialized_metadata(result: Any) -> dict[str, Any]:
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def check_results(result: Any) -> dict[str, Any]:
    return {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Return a Dagster home with the project's dagster.yaml, shared by the module's tests.

    Setting up a Dagster instance's SQLite storage takes about a second, so the tests share one.
    The secret scan after each test covers this directory too.
    """
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(
        (PROJECT_ROOT / ".dagster_home" / "dagster.yaml").read_text()
    )
    return home


@pytest.fixture(scope="module")
def dagster_instance(dagster_home: Path) -> Iterator[DagsterInstance]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(dagster_home))
        instance = DagsterInstance.get()
    yield instance
    instance.dispose()


@pytest.fixture(scope="session")
def preloaded_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a DuckDB warehouse that one good run loaded with every sandbox record."""
    workdir = tmp_path_factory.mktemp("preloaded")
    warehouse = workdir / "warehouse.duckdb"
    with (
        pytest.MonkeyPatch.context() as patch,
        SandboxServer(records=RECORDS, api_key=SENTINEL_KEY, seed=SEED) as sandbox,
    ):
        for name in ("CRM_BASE_URL", "CRM_CONTRACT_FILE", "DESTINATION_TYPE"):
            patch.delenv(name, raising=False)
        patch.setenv("DLT_DATA_DIR", str(workdir / "dlt"))
        patch.setenv("CRM_DUCKDB_PATH", str(warehouse))
        patch.setenv("CRM_API_KEY", SENTINEL_KEY)
        resources = {
            "dlt": DagsterDltResource(),
            "crm": CrmResource(base_url=sandbox.base_url, api_key=EnvVar("CRM_API_KEY")),
        }
        assert materialize([crm_assets], resources=resources).success
    assert not warehouse.with_name("warehouse.duckdb.wal").exists()
    return warehouse


@pytest.fixture
def crm(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    dagster_home: Path,
    dagster_instance: DagsterInstance,
    preloaded_warehouse: Path,
) -> Iterator[CrmHarness]:
    """Start the sandbox; after the test, scan output, logs, errors and files for the key.

    Parametrize it indirectly with a dict to pass more arguments to :class:`SandboxServer`.
    """
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CRM_API_KEY", SENTINEL_KEY)
    with SandboxServer(
        records=RECORDS,
        api_key=SENTINEL_KEY,
        seed=SEED,
        request_log=tmp_path / "sandbox-requests.jsonl",
        **getattr(request, "param", {}),
    ) as sandbox:
        harness = CrmHarness(sandbox, tmp_path, dagster_instance, preloaded_warehouse)
        yield harness

    captured = capfd.readouterr()
    # caplog.text holds only the current phase, so read the records of every phase.
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    logged = [f"{record.getMessage()} {record.exc_text or ''}" for record in records]
    texts = [captured.out, captured.err, *logged, *harness.error_texts]
    assert find_secret(texts, [tmp_path, dagster_home, CASSETTES]) == []


@pytest.fixture
def recorded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits, in seconds, instead of sleeping through them."""
    waits: list[float] = []
    monkeypatch.setattr(CrmTransport, "sleep", staticmethod(waits.append))
    return waits


def retry_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "crm_dagster" and "retrying in" in record.getMessage()
    ]


# --- Retry-After -----------------------------------------------------------------------------


def test_retry_after_one_second_is_honoured(
    crm: CrmHarness, recorded_waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    result = crm.run(["status:429,retry_after=1x2"])

    assert result.success
    assert recorded_waits == [1.0, 1.0]
    assert crm.offsets() == [0, 0, 0, 100, 200]
    assert materialized_metadata(result)["http_retries"] == 2
    logged = retry_log_lines(caplog)
    assert len(logged) == 2
    assert all("HTTP 429" in line and "retrying in 1.0 s" in line for line in logged)
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


def test_retry_after_zero_follows_backoff(crm: CrmHarness, recorded_waits: list[float]) -> None:
    result = crm.run(["status:429,retry_after=0x3"])

    assert result.success
    assert recorded_waits == pytest.approx([0.05, 0.1, 0.2])
    assert crm.offsets() == [0, 0, 0, 0, 100, 200]


def test_retry_after_http_date_is_honoured(crm: CrmHarness, recorded_waits: list[float]) -> None:
    result = crm.run(["status:429,retry_after=date+5"])

    assert result.success
    (wait,) = recorded_waits
    # The HTTP date has whole seconds, so the wait is 4 to 5 s less the time the response took.
    assert 1.0 <= wait <= 5.0
    assert crm.offsets() == [0, 0, 100, 200]


def test_retry_after_beyond_cap_fails_at_once(crm: CrmHarness, recorded_waits: list[float]) -> None:
    before = crm.preload()

    message = crm.fail(["status:429,retry_after=86400"])

    assert "HTTP 429 with Retry-After 86400 s" in message
    assert "retry_after_max_s=60" in message
    assert "rerun after" in message
    assert len(crm.sandbox.requests) == 1
    assert recorded_waits == []
    assert warehouse_rows(CRM_DATA_ROWS) == before


# --- Server errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_three_times_then_loads(crm: CrmHarness, status: int) -> None:
    result = crm.run([f"status:{status}x3"])

    assert result.success
    assert crm.offsets() == [0, 0, 0, 0, 100, 200]
    metadata = materialized_metadata(result)
    assert metadata["http_requests"] == 6
    assert metadata["http_retries"] == 3
    assert warehouse_rows("SELECT COUNT(DISTINCT id) FROM crm.crm_data") == [(RECORDS,)]


def test_503_four_times_fails(crm: CrmHarness) -> None:
    before = crm.preload()

    message = crm.fail(["status:503x4"])

    assert crm.offsets() == [0, 0, 0, 0]
    assert "HTTP 503" in message
    assert "/v1/resource" in message
    assert "failed after 4 attempts" in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (400, "Check the contract's params"),
        (404, "Check the base URL and the contract's path"),
        (422, "Check the contract's params"),
        (501, "does not support this request"),
    ],
)
def test_client_error_is_not_retried(crm: CrmHarness, status: int, advice: str) -> None:
    before = crm.preload()

    message = crm.fail([f"status:{status}@100"], full_refresh=True)

    assert crm.offsets().count(100) == 1
    assert f"failed with HTTP {status}" in message
    assert "offset=100" in message
    assert advice in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


@pytest.mark.parametrize("fault", ["status:401", "status:403", None])
def test_rejected_key_is_not_retried(
    crm: CrmHarness, monkeypatch: pytest.MonkeyPatch, fault: str | None
) -> None:
    before = crm.preload()
    if fault is None:
        # The sandbox itself returns 401 for a wrong key.
        monkeypatch.setenv("CRM_API_KEY", "wrong-key-for-this-test")

    message = crm.fail([fault] if fault else [])

    assert crm.offsets() == [0]
    assert "The CRM rejected the API key" in message
    assert "CRM_API_KEY" in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


# --- Network errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("drop", "closed the connection without a response"),
        ("reset_mid_body", "broke while the response body was read"),
        ("delay:2", "within read_timeout_s=0.5 s"),
    ],
)
def test_network_error_is_retried_then_fails(crm: CrmHarness, fault: str, reason: str) -> None:
    before = crm.preload()

    message = crm.fail([f"{fault}x4"], contract=crm.contract(read_timeout_s=0.5))

    # Each attempt took one fault. A fifth attempt would have loaded, and the run succeeded.
    assert crm.sandbox.faults == []
    assert "failed after 4 attempts" in message
    assert reason in message
    assert "GET /v1/resource?" in message
    assert "offset=0" in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


@pytest.mark.parametrize("fault", ["drop", "reset_mid_body", "delay:2"])
def test_network_error_once_then_loads(crm: CrmHarness, fault: str) -> None:
    result = crm.run([fault], contract=crm.contract(read_timeout_s=0.5))

    assert result.success
    assert materialized_metadata(result)["http_retries"] == 1
    assert warehouse_rows("SELECT COUNT(DISTINCT id) FROM crm.crm_data") == [(RECORDS,)]


def test_connection_refused_is_retried_then_fails(
    crm: CrmHarness, caplog: pytest.LogCaptureFixture
) -> None:
    before = crm.preload()
    port = closed_port()

    message = crm.fail(base_url=f"http://127.0.0.1:{port}")

    assert f"127.0.0.1:{port} refused the connection" in message
    assert "failed after 4 attempts" in message
    assert len(retry_log_lines(caplog)) == 3
    assert warehouse_rows(CRM_DATA_ROWS) == before


# --- Response bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "body_fragments"),
    [
        ("html@100", ["maintenance", "<html", "<!DOCTYPE"]),
        ("bad_json@100", ['{"data"', "customer_id", "CUST-000101"]),
    ],
)
def test_invalid_json_names_offset_without_body(
    crm: CrmHarness, fault: str, body_fragments: list[str]
) -> None:
    before = crm.preload()

    message = crm.fail([fault], full_refresh=True)

    assert crm.offsets().count(100) == 1
    assert "is not valid JSON" in message
    assert "offset=100" in message
    for fragment in body_fragments:
        assert all(fragment not in text for text in crm.error_texts), fragment
    assert warehouse_rows(CRM_DATA_ROWS) == before


def test_missing_data_field_fails(crm: CrmHarness) -> None:
    before = crm.preload()

    message = crm.fail(["missing_data@100"], full_refresh=True)

    assert "has no 'data' field" in message
    assert "offset=100" in message
    assert "data_selector" in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


def test_null_data_is_an_empty_page(crm: CrmHarness) -> None:
    result = crm.run(["null_data@200"], checks=True)

    # The empty page ends paging; the rows-vs-total check then reports the 50 records missed.
    assert crm.offsets() == [0, 100, 200]
    metadata = materialized_metadata(result)
    assert metadata["records_fetched"] == 200
    assert metadata["crm_reported_total"] == RECORDS
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(200,)]
    total_check = check_results(result)[ROWS_MATCH_CRM_TOTAL]
    assert not total_check.passed
    assert total_check.metadata["difference"].value == -50
    assert not result.success


def test_total_as_string_loads(crm: CrmHarness) -> None:
    result = crm.run(["total_stringx3"])

    assert result.success
    assert crm.offsets() == [0, 100, 200]
    assert materialized_metadata(result)["crm_reported_total"] == RECORDS
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


def test_total_absent_where_required_fails(crm: CrmHarness) -> None:
    before = crm.preload()

    message = crm.fail(["no_total@100"], full_refresh=True)

    assert "has no total at 'total'" in message
    assert "offset=100" in message
    assert 'total_path = ""' in message
    assert warehouse_rows(CRM_DATA_ROWS) == before


def test_total_absent_when_optional_loads(crm: CrmHarness) -> None:
    crm.sandbox.update_settings(include_total=False)

    result = crm.run(contract=crm.contract(total_path=""), checks=True)

    assert result.success
    assert crm.offsets() == [0, 100, 200]
    assert "crm_reported_total" not in materialized_metadata(result)
    assert check_results(result)[ROWS_MATCH_CRM_TOTAL].passed
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


# --- Paging ------------------------------------------------------------------------------------


def test_full_last_page_with_total_stops(crm: CrmHarness) -> None:
    crm.sandbox.delete(list(range(201, RECORDS + 1)))

    result = crm.run()

    assert result.success
    assert crm.offsets() == [0, 100]
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(200,)]


def test_full_last_page_without_total_stops(crm: CrmHarness) -> None:
    crm.sandbox.delete(list(range(201, RECORDS + 1)))
    crm.sandbox.update_settings(include_total=False)

    result = crm.run(contract=crm.contract(total_path=""))

    assert result.success
    # One empty page past the full last page, and nothing after it.
    assert crm.offsets() == [0, 100, 200]
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(200,)]


def test_repeated_record_is_one_row(crm: CrmHarness) -> None:
    # A record inserted before offset 100 pushes record 100 onto the second page as well.
    # Sequential paging makes the pages' contents deterministic.
    result = crm.run(["prepend:1@100"], contract=crm.contract(max_in_flight=1))

    assert result.success
    assert materialized_metadata(result)["records_fetched"] == RECORDS + 1
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data WHERE id = 100") == [(1,)]
    assert warehouse_rows("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data") == [
        (RECORDS, RECORDS)
    ]


def test_shifted_offsets_fail_the_total_check(crm: CrmHarness) -> None:
    # Two records inserted at the front while paging: without a stable sort, the client
    # receives two records twice and never receives the two new ones.
    result = crm.run(["prepend:2@100"], contract=crm.contract(max_in_flight=1), checks=True)

    assert not result.success
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]
    total_check = check_results(result)[ROWS_MATCH_CRM_TOTAL]
    assert not total_check.passed
    assert total_check.metadata["crm_reported_total"].value == RECORDS + 2
    assert total_check.metadata["rows_in_last_load"].value == RECORDS
    assert total_check.metadata["difference"].value == -2
    assert "stable sort order" in total_check.description


def test_read_ahead_shift_fails_check(crm: CrmHarness) -> None:
    # With 4 pages in flight, the third page is served before or after the insert, and either
    # way records are missed: the check fails whatever the order.
    result = crm.run(["prepend:2@100"], contract=crm.contract(max_in_flight=4), checks=True)

    assert not result.success
    total_check = check_results(result)[ROWS_MATCH_CRM_TOTAL]
    assert not total_check.passed
    assert total_check.metadata["crm_reported_total"].value == RECORDS + 2
    assert total_check.metadata["difference"].value < 0


def test_records_added_while_paging_load(crm: CrmHarness) -> None:
    # The sandbox sorts by id, a stable order: new records land after every existing one.
    # Sequential paging requests the last page after the records were added.
    result = crm.run(["add:5@100"], contract=crm.contract(max_in_flight=1), checks=True)

    assert result.success
    assert warehouse_rows("SELECT COUNT(*), MIN(id), MAX(id) FROM crm.crm_data") == [
        (RECORDS + 5, 1, RECORDS + 5)
    ]
    total_check = check_results(result)[ROWS_MATCH_CRM_TOTAL]
    assert total_check.passed
    assert total_check.metadata["crm_reported_total"].value == RECORDS + 5


# --- Records and schema ------------------------------------------------------------------------


def test_records_without_id_are_rejected(crm: CrmHarness, caplog: pytest.LogCaptureFixture) -> None:
    result = crm.run(["null_id@0", "missing_id@100"], checks=True)

    assert result.success
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS - 2,)]
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data WHERE id IN (1, 101)") == [(0,)]
    rejected = warehouse_rows(
        "SELECT customer_id, id, _rejected_reason FROM crm.crm_data_rejected ORDER BY customer_id"
    )
    assert rejected == [("CUST-000001", None, "id is null"), ("CUST-000101", None, "id is missing")]
    assert materialized_metadata(result)["rejected_records"] == 2
    checks = check_results(result)
    assert not checks[NO_REJECTED_RECORDS].passed
    assert checks[NO_REJECTED_RECORDS].severity == AssetCheckSeverity.WARN
    assert checks[NO_REJECTED_RECORDS].metadata["rejected_records"].value == 2
    assert "crm_data_rejected" in checks[NO_REJECTED_RECORDS].description
    assert checks[ROWS_MATCH_CRM_TOTAL].passed
    warnings = [
        record.getMessage() for record in caplog.records if "without 'id'" in record.getMessage()
    ]
    assert warnings == [
        "CRM records without 'id' on this page: 1. They are written to crm_data_rejected "
        "(1 in this load so far)",
        "CRM records without 'id' on this page: 1. They are written to crm_data_rejected "
        "(2 in this load so far)",
    ]


def test_clean_load_rejects_nothing(crm: CrmHarness) -> None:
    result = crm.run(checks=True)

    assert result.success
    assert materialized_metadata(result)["rejected_records"] == 0
    checks = check_results(result)
    assert checks[NO_REJECTED_RECORDS].passed
    assert checks[ROWS_MATCH_CRM_TOTAL].passed


def test_type_change_fails_without_variant_column(crm: CrmHarness) -> None:
    before = crm.preload()
    crm.sandbox.upsert([changed(5, 1, annual_revenue="n/a")])

    message = crm.fail()

    assert "CRM record id=5" in message
    assert "crm_data.annual_revenue" in message
    assert "of type decimal" in message
    assert "columns.annual_revenue.data_type" in message
    assert "n/a" not in message
    assert warehouse_rows(CRM_DATA_ROWS) == before
    columns = warehouse_rows(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'crm' AND column_name LIKE 'annual_revenue%'"
    )
    assert columns == [("annual_revenue",)]


ADDRESS = {"street": "1 Harbour Way", "city": "Dublin", "postal_code": "D01", "country": "IE"}
CHILD_TABLE = "crm.crm_data__contact_info__address"


def address_state(record_id: int) -> tuple[str | None, int]:
    """Return the flattened city of a record and the number of its nested address rows."""
    ((city,),) = warehouse_rows(
        f"SELECT contact_info__address__city FROM crm.crm_data WHERE id = {record_id}"
    )
    ((children,),) = warehouse_rows(
        f"SELECT COUNT(*) FROM {CHILD_TABLE} AS child JOIN crm.crm_data AS parent "
        f"ON child._dlt_root_id = parent._dlt_id WHERE parent.id = {record_id}"
    )
    return city, children


def orphaned_child_rows() -> int:
    ((orphans,),) = warehouse_rows(
        f"SELECT COUNT(*) FROM {CHILD_TABLE} AS child LEFT JOIN crm.crm_data AS parent "
        "ON child._dlt_root_id = parent._dlt_id WHERE parent._dlt_id IS NULL"
    )
    return int(orphans)


def test_nested_field_drift_merges_cleanly(crm: CrmHarness) -> None:
    crm.preload()
    second = {**ADDRESS, "city": "Cork"}
    # Each step gives records 5, 6 and 7 an address as a list, an object or null, and the
    # expected (flattened city, nested address rows) of each afterwards.
    steps = [
        (
            {5: [ADDRESS, second], 6: ADDRESS, 7: None},
            {5: (None, 2), 6: ("Dublin", 0), 7: (None, 0)},
        ),
        (
            {5: ADDRESS, 6: [second], 7: [ADDRESS, second]},
            {5: ("Dublin", 0), 6: (None, 1), 7: (None, 2)},
        ),
        (
            {5: None, 6: [], 7: second},
            {5: (None, 0), 6: (None, 0), 7: ("Cork", 0)},
        ),
    ]

    for second, (addresses, expected) in enumerate(steps):
        crm.sandbox.upsert(
            [
                changed(key, second, contact_info={"address": value})
                for key, value in addresses.items()
            ]
        )
        assert crm.run().success
        assert {key: address_state(key) for key in expected} == expected
        assert orphaned_child_rows() == 0
        assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


# --- Interrupted load --------------------------------------------------------------------------

MATERIALIZE_SCRIPT = """
import sys
from dagster import DagsterInstance, EnvVar, materialize
from dagster_dlt import DagsterDltResource
from crm_dagster.assets import crm_assets
from crm_dagster.resources import CrmResource

crm = CrmResource(base_url=sys.argv[1], api_key=EnvVar("CRM_API_KEY"), contract_file=sys.argv[2])
resources = {"dlt": DagsterDltResource(), "crm": crm}
materialize([crm_assets], resources=resources, instance=DagsterInstance.get())
"""


def test_failed_incremental_load_keeps_cursor(crm: CrmHarness) -> None:
    before = crm.preload()
    crm.sandbox.upsert([changed(7, 1, lifecycle_stage="churned"), changed(RECORDS + 1, 2)])

    message = crm.fail(["status:503x4"])

    assert "updated_since=" in message
    assert warehouse_rows(CRM_DATA_ROWS) == before

    result = crm.run()

    assert result.success
    # The two changed records, and the newest record of the first load: the CRM returns
    # records changed at or after the cursor.
    assert materialized_metadata(result)["records_fetched"] == 3
    assert warehouse_rows("SELECT lifecycle_stage FROM crm.crm_data WHERE id = 7") == [("churned",)]
    assert warehouse_rows("SELECT COUNT(*), MAX(id) FROM crm.crm_data") == [
        (RECORDS + 1, RECORDS + 1)
    ]


def test_killed_load_then_rerun_equals_source(
    crm: CrmHarness, tmp_path: Path, dagster_home: Path
) -> None:
    crm.preload()
    crm.sandbox.upsert(
        [
            changed(3, 1, lifecycle_stage="churned", churn_reason="price"),
            changed(10, 2),
            changed(120, 3),
            *[changed(RECORDS + number, 4) for number in range(1, 21)],
        ]
    )
    # 23 changed records in pages of 10. The second page hangs, so the process is killed
    # after the first page was extracted.
    contract = crm.contract(limit=10)
    crm.sandbox.set_faults(["delay:20@10"])
    output = tmp_path / "killed-run.out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", MATERIALIZE_SCRIPT, crm.sandbox.base_url, str(contract)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        )
        try:
            deadline = time.monotonic() + 60
            while crm.sandbox.faults and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert crm.sandbox.faults == [], "the killed run never requested the second page"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
    crm.error_texts.append(output.read_text())
    assert process.returncode == -signal.SIGKILL

    # The killed run still claims the crm_load pool slot, so a rerun would wait for it forever.
    # Deleting the run, as `dagster run delete RUN_ID` does, frees the slot.
    (killed_run,) = crm.instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    pool = crm.instance.event_log_storage.get_concurrency_info(POOL)
    assert [slot.run_id for slot in pool.claimed_slots] == [killed_run.run_id]
    crm.instance.delete_run(killed_run.run_id)
    assert crm.instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []

    result = crm.run(contract=contract)

    assert result.success
    source = {record["id"]: record for record in crm.sandbox.records}
    rows = warehouse_rows("SELECT id, updated_at, lifecycle_stage FROM crm.crm_data ORDER BY id")
    assert [row[0] for row in rows] == sorted(source)
    for record_id, updated_at, stage in rows:
        assert updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") == source[record_id]["updated_at"]
        assert stage == source[record_id]["lifecycle_stage"]


# --- Settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"base_url": "crm.example.com"}, "CRM_BASE_URL"),
        ({"limit": 0}, "limit=0"),
        ({"paginator": "cursor"}, "paginator='cursor'"),
    ],
)
def test_invalid_setting_sends_no_request(
    crm: CrmHarness, tmp_path: Path, setting: dict[str, Any], named: str
) -> None:
    before = crm.preload()
    log_file = tmp_path / "sandbox-requests.jsonl"
    logged_before = log_file.read_text().count("\n")
    contract_settings = {key: value for key, value in setting.items() if key != "base_url"}

    message = crm.fail(contract=crm.contract(**contract_settings), base_url=setting.get("base_url"))

    assert named in message
    assert crm.sandbox.requests == []
    assert log_file.read_text().count("\n") == logged_before
    assert warehouse_rows(CRM_DATA_ROWS) == before
