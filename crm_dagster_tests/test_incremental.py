"""Incremental loads: after the first load, a run fetches only records changed since the last one.

The runs go against the in-process sandbox, which filters on ``updated_since``. Records changed
in a test get an ``updated_at`` in 2030, after every generated timestamp.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import materialize
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import crm_assets
from crm_dagster.checks import CRM_DATA_CHECKS, ROWS_MATCH_CRM_TOTAL
from crm_dagster.resources import CrmResource
from crm_dagster.sandbox import SandboxServer
from crm_dagster_tests.conftest import (
    FULL_REFRESH,
    SENTINEL_KEY,
    dlt_pipeline_dir,
    run_crm_asset,
    warehouse_rows,
)

RECORDS = 250
CHANGED_AT = "2030-01-02T03:04:05Z"
# Every column but dlt's load id and row id, which a merge of an unchanged record renews.
RECORD_ROWS = "SELECT * EXCLUDE (_dlt_load_id, _dlt_id) FROM crm.crm_data ORDER BY id"


@pytest.fixture
def crm() -> Iterator[SandboxServer]:
    """Sandbox with 250 records, loaded in 3 pages of 100."""
    with SandboxServer(records=RECORDS, api_key=SENTINEL_KEY, seed=11) as server:
        yield server


def load(server: SandboxServer, run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run crm_data, check it succeeded, and return its metadata; clear the request log first."""
    server.clear_requests()
    result = run_crm_asset(server.base_url, run_config=run_config)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def updated_since_params(server: SandboxServer) -> list[str | None]:
    """Return the updated_since parameter of each request the sandbox served."""
    return [entry["query"].get("updated_since") for entry in server.requests]


def newest_updated_at(server: SandboxServer) -> str:
    return max(record["updated_at"] for record in server.records)


def test_first_load_fetches_everything(crm: SandboxServer) -> None:
    metadata = load(crm)

    assert updated_since_params(crm) == [None, None, None]
    assert metadata["rows_loaded"] == RECORDS
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


def test_unchanged_second_run_makes_one_request(crm: SandboxServer) -> None:
    load(crm)
    first = warehouse_rows(RECORD_ROWS)

    metadata = load(crm)

    cursor = newest_updated_at(crm)
    assert updated_since_params(crm) == [cursor]
    assert metadata["http_requests"] == 1
    # The records updated at the cursor's second come again and merge unchanged.
    at_cursor = sum(1 for record in crm.records if record["updated_at"] == cursor)
    assert metadata["rows_loaded"] == at_cursor
    assert metadata["crm_reported_total"] == at_cursor
    assert warehouse_rows(RECORD_ROWS) == first


def test_changed_and_new_records_arrive(crm: SandboxServer) -> None:
    load(crm)
    cursor = newest_updated_at(crm)
    at_cursor = sum(1 for record in crm.records if record["updated_at"] == cursor)
    crm.upsert([{"id": 3, "lifecycle_stage": "churned", "updated_at": CHANGED_AT}])
    crm.upsert([{"id": RECORDS + 1, "updated_at": CHANGED_AT}])
    newest_before_change = warehouse_rows("SELECT MAX(updated_at) FROM crm.crm_data")[0][0]

    metadata = load(crm)

    assert updated_since_params(crm) == [cursor]
    assert metadata["rows_loaded"] == at_cursor + 2
    changed = warehouse_rows("SELECT lifecycle_stage FROM crm.crm_data WHERE id = 3")
    assert changed == [("churned",)]
    assert warehouse_rows("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data") == [
        (RECORDS + 1, RECORDS + 1)
    ]
    assert warehouse_rows("SELECT MAX(updated_at) FROM crm.crm_data")[0][0] > newest_before_change


def test_cursor_survives_lost_pipeline_dir(crm: SandboxServer) -> None:
    # The cursor must come from the state that dlt stored in the warehouse: dagster-dlt drops
    # dlt's working directory at the start of every run, and this test drops it too.
    load(crm)
    shutil.rmtree(dlt_pipeline_dir())
    crm.upsert([{"id": 9, "first_name": "Ada", "updated_at": CHANGED_AT}])

    load(crm)

    assert updated_since_params(crm) == [newest_updated_at_before(crm, CHANGED_AT)]
    assert warehouse_rows("SELECT first_name FROM crm.crm_data WHERE id = 9") == [("Ada",)]


def newest_updated_at_before(server: SandboxServer, moment: str) -> str:
    return max(record["updated_at"] for record in server.records if record["updated_at"] < moment)


def test_full_refresh_fetches_everything(crm: SandboxServer) -> None:
    load(crm)
    # A change that leaves updated_at alone is invisible to an incremental load.
    crm.upsert([{"id": 5, "last_name": "Changed"}])

    incremental = load(crm)
    assert warehouse_rows("SELECT last_name FROM crm.crm_data WHERE id = 5") != [("Changed",)]
    refreshed = load(crm, FULL_REFRESH)

    assert incremental["http_requests"] == 1
    assert updated_since_params(crm) == [None, None, None]
    assert refreshed["rows_loaded"] == RECORDS
    assert warehouse_rows("SELECT last_name FROM crm.crm_data WHERE id = 5") == [("Changed",)]
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]


def test_contract_switch_turns_it_off(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contract_file = tmp_path / "contract.toml"
    contract_file.write_text("incremental = false\n")
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(contract_file))
    load(crm)

    metadata = load(crm)

    assert updated_since_params(crm) == [None, None, None]
    assert metadata["http_requests"] == 3


def test_rows_check_passes_on_incremental_run(crm: SandboxServer) -> None:
    resources = {
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=crm.base_url, api_key=SENTINEL_KEY),
    }
    materialize([crm_assets, *CRM_DATA_CHECKS], resources=resources)
    cursor = newest_updated_at(crm)
    at_cursor = sum(1 for record in crm.records if record["updated_at"] == cursor)
    crm.upsert([{"id": 8, "lifecycle_stage": "customer", "updated_at": CHANGED_AT}])

    result = materialize([crm_assets, *CRM_DATA_CHECKS], resources=resources)

    evaluations = {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }
    rows_check = evaluations[ROWS_MATCH_CRM_TOTAL]
    assert rows_check.passed
    assert rows_check.metadata["crm_reported_total"].value == at_cursor + 1
    assert rows_check.metadata["rows_in_last_load"].value == at_cursor + 1


def test_default_warehouse_follows_working_directory(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dlt's working directory is shared by projects on one machine. A load from a second
    # project directory must write that project's data/warehouse.duckdb, not the first one's.
    monkeypatch.delenv("CRM_DUCKDB_PATH")
    first, second = tmp_path / "first", tmp_path / "second"
    for project in (first, second):
        project.mkdir()
        monkeypatch.chdir(project)
        run_crm_asset(crm.base_url, run_config=FULL_REFRESH)

    for project in (first, second):
        warehouse = project / "data" / "warehouse.duckdb"
        with duckdb.connect(str(warehouse), read_only=True) as connection:
            count = connection.execute("SELECT COUNT(*) FROM crm.crm_data").fetchone()
        assert count == (RECORDS,), project.name
