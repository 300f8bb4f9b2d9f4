"""Asset tests on recorded HTTP: paging, merge, retries, auth, and the Pipedrive-style contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crm_dagster.transport import CrmTransport
from crm_dagster_tests.conftest import (
    CASSETTES,
    FULL_REFRESH,
    SENTINEL_KEY,
    dlt_pipeline_dir,
    failure_message,
    find_secret,
    run_crm_asset,
    warehouse_rows,
)
from crm_dagster_tests.recording import KEY_PLACEHOLDER, REPLAY_BASE_URL, crm_vcr

PIPEDRIVE_CONTRACT = Path(__file__).resolve().parent.parent / "examples" / "pipedrive.toml"


@pytest.fixture
def recorded_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits instead of sleeping through them."""
    waits: list[float] = []
    monkeypatch.setattr(CrmTransport, "sleep", staticmethod(waits.append))
    return waits


def requested_offsets(cassette) -> list[int]:  # type: ignore[no-untyped-def]
    """Return the offsets of the recorded requests, sorted: pages after the first are fetched
    concurrently, so a re-recorded cassette may hold them in another order."""
    offsets = []
    for request in cassette.requests:
        query = dict(request.query)
        offsets.append(int(query.get("offset", query.get("start", 0))))
    return sorted(offsets)


def materialized_metadata(result) -> dict:  # type: ignore[no-untyped-def]
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_full_load_fetches_every_page_once() -> None:
    with crm_vcr().use_cassette("full_load.yaml") as cassette:
        result = run_crm_asset(REPLAY_BASE_URL)

    assert result.success
    assert requested_offsets(cassette) == [0, 100, 200]
    assert cassette.all_played
    assert warehouse_rows("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data") == [(250, 250)]
    assert warehouse_rows("SELECT MIN(id), MAX(id) FROM crm.crm_data") == [(1, 250)]


def test_full_load_reports_metadata() -> None:
    with crm_vcr().use_cassette("full_load.yaml"):
        metadata = materialized_metadata(run_crm_asset(REPLAY_BASE_URL))

    assert metadata["rows_loaded"] == 250
    assert metadata["dagster/row_count"] == 250
    assert metadata["http_requests"] == 3
    assert metadata["pages_fetched"] == 3
    assert metadata["crm_reported_total"] == 250
    assert metadata["dagster/table_name"] == "duckdb.crm.crm_data"
    column_names = {column.name for column in metadata["dagster/column_schema"].columns}
    assert {"id", "customer_id", "contact_info__email", "annual_revenue"} <= column_names


def test_declared_column_types() -> None:
    with crm_vcr().use_cassette("full_load.yaml"):
        run_crm_asset(REPLAY_BASE_URL)

    columns = dict(
        warehouse_rows(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'crm' AND table_name = 'crm_data'"
        )
    )
    assert columns["id"] == "BIGINT"
    assert columns["annual_revenue"] == "DECIMAL(18,2)"
    assert columns["is_active"] == "BOOLEAN"
    assert columns["updated_at"] == "TIMESTAMP WITH TIME ZONE"
    assert columns["contact_info__address__city"] == "VARCHAR"
    assert columns["churn_reason"] == "VARCHAR"
    nullable = dict(
        warehouse_rows(
            "SELECT column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'crm' AND table_name = 'crm_data'"
        )
    )
    assert nullable["id"] == "NO"
    assert nullable["churn_reason"] == "YES"


def test_second_run_merges_to_same_rows() -> None:
    with crm_vcr().use_cassette("full_load.yaml"):
        run_crm_asset(REPLAY_BASE_URL)
    first = warehouse_rows("SELECT * FROM crm.crm_data ORDER BY id")

    with crm_vcr().use_cassette("full_load.yaml"):
        result = run_crm_asset(REPLAY_BASE_URL, run_config=FULL_REFRESH)

    assert result.success
    second = warehouse_rows("SELECT * FROM crm.crm_data ORDER BY id")
    assert len(second) == 250
    assert [row[:3] for row in second] == [row[:3] for row in first]


def test_changed_record_merges_by_id() -> None:
    with crm_vcr().use_cassette("full_load.yaml"):
        run_crm_asset(REPLAY_BASE_URL)
    # The change leaves updated_at as it was, so only a full refresh fetches record 3 again.
    with crm_vcr().use_cassette("after_change.yaml"):
        result = run_crm_asset(REPLAY_BASE_URL, run_config=FULL_REFRESH)

    assert result.success
    assert warehouse_rows("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data") == [(251, 251)]
    changed = warehouse_rows("SELECT lifecycle_stage, churn_reason FROM crm.crm_data WHERE id = 3")
    assert changed == [("churned", "price")]


def test_retry_after_503_loads(recorded_waits: list[float]) -> None:
    with crm_vcr().use_cassette("retry_503.yaml") as cassette:
        result = run_crm_asset(REPLAY_BASE_URL)

    assert result.success
    assert requested_offsets(cassette) == [0, 0, 100, 200]
    assert recorded_waits == [2.0]
    assert materialized_metadata(result)["http_retries"] == 1
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(250,)]


def test_retries_exhausted_names_status_and_path(recorded_waits: list[float]) -> None:
    with crm_vcr().use_cassette("retries_exhausted.yaml") as cassette:
        result = run_crm_asset(REPLAY_BASE_URL, raise_on_error=False)

    assert not result.success
    assert len(cassette.requests) == 4
    assert recorded_waits == [2.0, 4.0, 8.0]
    message = failure_message(result)
    assert "HTTP 503" in message
    assert "/v1/resource" in message
    assert "4 attempts" in message
    assert find_secret([message]) == []


def test_unauthorized_is_not_retried(recorded_waits: list[float]) -> None:
    with crm_vcr().use_cassette("unauthorized.yaml") as cassette:
        result = run_crm_asset(REPLAY_BASE_URL, api_key="wrong-key", raise_on_error=False)

    assert not result.success
    assert len(cassette.requests) == 1
    assert recorded_waits == []
    message = failure_message(result)
    assert "rejected the API key (HTTP 401)" in message
    assert "CRM_API_KEY" in message


def test_pipedrive_contract_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(PIPEDRIVE_CONTRACT))
    with crm_vcr(api_key_param="api_token").use_cassette("pipedrive.yaml") as cassette:
        result = run_crm_asset(REPLAY_BASE_URL)

    assert result.success
    assert [request.path for request in cassette.requests] == ["/v1/persons"] * 3
    assert requested_offsets(cassette) == [0, 100, 200]
    assert warehouse_rows("SELECT COUNT(DISTINCT id) FROM crm.crm_data") == [(250,)]


def own_log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the captured log messages, without vcrpy's.

    vcrpy replaces the network connection in these tests and logs each URL it replays.
    """
    return [record.getMessage() for record in caplog.records if not record.name.startswith("vcr")]


def test_pipedrive_key_stays_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level("DEBUG")
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(PIPEDRIVE_CONTRACT))
    with crm_vcr(api_key_param="api_token").use_cassette("pipedrive.yaml"):
        result = run_crm_asset(REPLAY_BASE_URL)

    assert result.success
    logged = own_log_messages(caplog)
    assert any("/v1/persons" in message for message in logged)
    assert find_secret(logged, [dlt_pipeline_dir(), tmp_path]) == []


def test_cassettes_hold_no_key() -> None:
    cassettes = sorted(CASSETTES.glob("*.yaml"))
    assert len(cassettes) >= 6
    for cassette in cassettes:
        interactions = yaml.safe_load(cassette.read_text())["interactions"]
        for interaction in interactions:
            uri = interaction["request"]["uri"]
            assert KEY_PLACEHOLDER.replace("<", "%3C").replace(">", "%3E") in uri or (
                KEY_PLACEHOLDER in uri
            ), uri
            assert "recording-key" not in uri
    assert find_secret(paths=[CASSETTES]) == []


def test_asset_run_leaves_no_sentinel(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    caplog.set_level("DEBUG")
    with crm_vcr().use_cassette("full_load.yaml"):
        result = run_crm_asset(REPLAY_BASE_URL, api_key=SENTINEL_KEY)

    assert result.success
    output = capfd.readouterr()
    logged = own_log_messages(caplog)
    assert find_secret([output.out, output.err, *logged], [tmp_path]) == []
