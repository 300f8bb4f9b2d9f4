"""Unit tests of the schedule, the sensors, crm_data_job and the lock around the pipeline.

The change sensor's main path replays ``cassettes/sensor_ticks.yaml``: three checks recorded
from the sandbox (the first, one without a change, one after record 5 was touched and record
251 added). Re-record it with ``python -m crm_dagster_tests.recording``. Error paths run against
the in-process sandbox CRM.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    job,
    materialize,
    op,
)
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import crm_assets
from crm_dagster.definitions import defs
from crm_dagster.errors import CrmSettingsError
from crm_dagster.jobs import JOB_NAME
from crm_dagster.locking import pipeline_lock, pipeline_lock_path
from crm_dagster.pipeline import crm_pipeline
from crm_dagster.resources import CrmResource
from crm_dagster.sandbox import SandboxServer
from crm_dagster.schedules import SCHEDULE_NAME, build_crm_data_schedule
from crm_dagster.sensors import (
    CHANGE_SENSOR_NAME,
    FAILURE_SENSOR_NAME,
    ChangeCursor,
    crm_change_sensor,
    crm_data_failure_sensor,
    newest_first_params,
    sensor_interval_s,
    summarize_failure,
)
from crm_dagster.transport import CrmTransport
from crm_dagster_tests.conftest import SENTINEL_KEY, find_secret
from crm_dagster_tests.recording import REPLAY_BASE_URL, crm_vcr

# ---------------------------------------------------------------------------------------------
# Schedule


def test_schedule_defaults_hourly_utc_stopped() -> None:
    schedule = build_crm_data_schedule()

    assert schedule.name == SCHEDULE_NAME
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    assert schedule.job_name == JOB_NAME


def test_schedule_reads_cron_and_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_SCHEDULE_CRON", "*/15 6-18 * * 1-5")
    monkeypatch.setenv("CRM_SCHEDULE_TIMEZONE", "Europe/Berlin")
    schedule = build_crm_data_schedule()
    tick_time = datetime(2026, 3, 2, 9, 15, tzinfo=UTC)

    with DagsterInstance.get() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
        result = schedule.evaluate_tick(context)

    assert schedule.cron_schedule == "*/15 6-18 * * 1-5"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert result.run_requests is not None
    assert len(result.run_requests) == 1
    assert isinstance(result.run_requests[0], RunRequest)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CRM_SCHEDULE_CRON", "every hour"),
        ("CRM_SCHEDULE_CRON", "0 * * *"),
        ("CRM_SCHEDULE_TIMEZONE", "Mars/Olympus_Mons"),
    ],
)
def test_schedule_rejects_invalid_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(CrmSettingsError) as raised:
        build_crm_data_schedule()

    assert f"{variable}={value!r}" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Definitions and the job


def test_definitions_register_automation() -> None:
    repository = defs.get_repository_def()
    change_sensor = repository.get_sensor_def(CHANGE_SENSOR_NAME)
    failure_sensor = repository.get_sensor_def(FAILURE_SENSOR_NAME)
    job_def = defs.resolve_job_def(JOB_NAME)
    check_keys = job_def.asset_layer.asset_graph.asset_check_keys

    assert repository.get_schedule_def(SCHEDULE_NAME).job_name == JOB_NAME
    assert change_sensor.job_name == JOB_NAME
    assert change_sensor.default_status == DefaultSensorStatus.STOPPED
    assert change_sensor.minimum_interval_seconds == 300
    assert failure_sensor.default_status == DefaultSensorStatus.RUNNING
    assert job_def.asset_layer.executable_asset_keys == {AssetKey("crm_data")}
    assert check_keys
    assert {key.asset_key for key in check_keys} == {AssetKey("crm_data")}


def test_job_runs_checks_after_load(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("CRM_API_KEY", SENTINEL_KEY)
    job_def = defs.resolve_job_def(JOB_NAME)

    with DagsterInstance.get() as instance:
        result = job_def.execute_in_process(instance=instance)
    evaluations = result.get_asset_check_evaluations()
    by_name = {evaluation.check_name: evaluation for evaluation in evaluations}
    expected = {key.name for key in job_def.asset_layer.asset_graph.asset_check_keys}
    numbers = [
        value.value
        for evaluation in evaluations
        for value in evaluation.metadata.values()
        if isinstance(value.value, int)
    ]

    assert result.success
    assert set(by_name) == expected
    assert all(evaluation.passed for evaluation in evaluations), by_name
    assert numbers, "the checks report no counts"
    assert 250 in numbers


# ---------------------------------------------------------------------------------------------
# Change sensor: settings


def test_sensor_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_SENSOR_INTERVAL_S", raising=False)
    assert sensor_interval_s() == 300

    monkeypatch.setenv("CRM_SENSOR_INTERVAL_S", "30")
    assert sensor_interval_s() == 30


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "five"])
def test_sensor_interval_rejects_invalid(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CRM_SENSOR_INTERVAL_S", value)

    with pytest.raises(CrmSettingsError) as raised:
        sensor_interval_s()

    assert f"CRM_SENSOR_INTERVAL_S={value!r}" in str(raised.value)


def test_newest_first_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_SENSOR_NEWEST_FIRST", raising=False)
    assert newest_first_params() == {"sort": "-updated_at"}

    monkeypatch.setenv("CRM_SENSOR_NEWEST_FIRST", "sort=update_time&order=desc")
    assert newest_first_params() == {"sort": "update_time", "order": "desc"}

    monkeypatch.setenv("CRM_SENSOR_NEWEST_FIRST", "")
    assert newest_first_params() == {}

    monkeypatch.setenv("CRM_SENSOR_NEWEST_FIRST", "sort")
    with pytest.raises(CrmSettingsError):
        newest_first_params()


# ---------------------------------------------------------------------------------------------
# Change sensor: recorded HTTP


def evaluate(cursor: str | None) -> SensorResult | SkipReason:
    return crm_change_sensor(build_sensor_context(cursor=cursor))


def test_change_sensor_replays_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_BASE_URL", REPLAY_BASE_URL)
    monkeypatch.setenv("CRM_API_KEY", SENTINEL_KEY)

    with crm_vcr().use_cassette("sensor_ticks.yaml") as cassette:
        first = evaluate(None)
        assert isinstance(first, SensorResult)
        unchanged = evaluate(first.cursor)
        changed = evaluate(first.cursor)

    first_cursor = ChangeCursor.from_json(first.cursor)
    assert first_cursor is not None
    assert first_cursor.snapshot.total == 250
    assert first_cursor.snapshot.newest_id == "16"
    assert first_cursor.changes == 1
    assert len(first.run_requests) == 1
    assert first.run_requests[0].run_key is not None

    assert isinstance(unchanged, SkipReason)
    assert "No change" in unchanged.skip_message
    assert "total 250" in unchanged.skip_message

    assert isinstance(changed, SensorResult)
    changed_cursor = ChangeCursor.from_json(changed.cursor)
    assert changed_cursor is not None
    assert changed_cursor.snapshot.total == 251
    assert changed_cursor.snapshot.newest_id == "251"
    assert changed_cursor.changes == 2
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].run_key != first.run_requests[0].run_key

    assert cassette.all_played
    queries = [request.query for request in cassette.requests]
    assert all(("limit", "1") in query for query in queries)
    assert all(("sort", "-updated_at") in query for query in queries)


# ---------------------------------------------------------------------------------------------
# Change sensor: live sandbox


def test_sandbox_sorts_newest_first(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/v1/resource"
    newest = max(sandbox.records, key=lambda record: (record["updated_at"], record["id"]))

    sorted_page = requests.get(
        url, params={"api_key": SENTINEL_KEY, "limit": 3, "sort": "-updated_at"}
    ).json()
    invalid = requests.get(url, params={"api_key": SENTINEL_KEY, "sort": "name"})
    stamps = [record["updated_at"] for record in sorted_page["data"]]

    assert sorted_page["total"] == 250
    assert sorted_page["data"][0]["id"] == newest["id"]
    assert stamps == sorted(stamps, reverse=True)
    assert invalid.status_code == 400
    assert "invalid sort 'name'" in invalid.json()["error"]


def use_sandbox(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, key: str) -> None:
    monkeypatch.setenv("CRM_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("CRM_API_KEY", key)


def recorded_requests(sandbox: SandboxServer, count: int) -> list[dict]:
    """Return the sandbox's request log once it has ``count`` entries (or after 5 s) and 0.2 s more.

    The sandbox logs a request after it has sent the response, so the client can finish first.
    The extra wait lets the log show a request beyond ``count``, if one was sent.
    """
    deadline = time.monotonic() + 5.0
    while len(sandbox.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    return sandbox.requests


def test_change_sensor_sends_one_small_request(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)

    result = evaluate(None)
    requests_sent = recorded_requests(sandbox, 1)

    assert isinstance(result, SensorResult)
    assert len(requests_sent) == 1
    query = requests_sent[0]["query"]
    assert query["limit"] == "1"
    assert query["offset"] == "0"
    assert query["sort"] == "-updated_at"
    assert query["api_key"] == "***"


def test_change_sensor_same_state_same_run_key(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)

    # A retried tick evaluates the same change from the same cursor. Dagster launches one run
    # per run key, so both evaluations must request the same key.
    first = evaluate(None)
    retried = evaluate(None)

    assert isinstance(first, SensorResult)
    assert isinstance(retried, SensorResult)
    assert retried.run_requests[0].run_key == first.run_requests[0].run_key
    assert retried.cursor == first.cursor


def test_change_sensor_detects_touch(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    first = evaluate(None)
    assert isinstance(first, SensorResult)

    sandbox.touch([42])
    touched = evaluate(first.cursor)

    assert isinstance(touched, SensorResult)
    cursor = ChangeCursor.from_json(touched.cursor)
    assert cursor is not None
    assert cursor.snapshot.total == 250
    assert cursor.snapshot.newest_id == "42"


def test_change_sensor_detects_delete(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    first = evaluate(None)
    assert isinstance(first, SensorResult)

    sandbox.delete([7])
    deleted = evaluate(first.cursor)

    assert isinstance(deleted, SensorResult)
    cursor = ChangeCursor.from_json(deleted.cursor)
    assert cursor is not None
    assert cursor.snapshot.total == 249


def test_change_sensor_unreadable_cursor_is_first_check(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)

    result = evaluate("not a cursor")

    assert isinstance(result, SensorResult)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["crm_dagster/change"].startswith("first check")


@pytest.mark.parametrize(
    ("unset", "expected"),
    [("CRM_BASE_URL", "CRM_BASE_URL"), ("CRM_API_KEY", "CRM_API_KEY")],
)
def test_change_sensor_skips_missing_setting(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, unset: str, expected: str
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    monkeypatch.delenv(unset)

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert expected in result.skip_message
    assert sandbox.requests == []


def test_change_sensor_skips_invalid_contract(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    contract = tmp_path / "contract.toml"
    contract.write_text("limit = 0\n")
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(contract))

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert "limit" in result.skip_message
    assert sandbox.requests == []


def test_change_sensor_skips_unreachable_crm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CrmTransport, "sleep", staticmethod(lambda seconds: None))
    # Port 9 (discard) of 127.0.0.1 normally has no listener, so the connection is refused.
    monkeypatch.setenv("CRM_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CRM_API_KEY", SENTINEL_KEY)

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert "failed after 2 attempts" in result.skip_message
    assert find_secret([result.skip_message]) == []


def test_change_sensor_skips_rejected_key(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, "wrong-" + SENTINEL_KEY)

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert "401" in result.skip_message
    assert find_secret([result.skip_message]) == []


def test_change_sensor_retries_once_then_skips(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CrmTransport, "sleep", staticmethod(lambda seconds: None))
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    sandbox.set_faults(["status:503x2"])

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert "503" in result.skip_message
    assert [request["status"] for request in recorded_requests(sandbox, 2)] == [503, 503]


def test_change_sensor_skips_body_without_total(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sandbox(monkeypatch, sandbox, SENTINEL_KEY)
    sandbox.set_faults(["no_total"])

    result = evaluate(None)

    assert isinstance(result, SkipReason)
    assert "total_path 'total'" in result.skip_message


# ---------------------------------------------------------------------------------------------
# Run-failure sensor


def failure_context(instance: DagsterInstance, result):  # type: ignore[no-untyped-def]
    return build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR_NAME,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()


def test_failure_sensor_logs_summary(
    sandbox: SandboxServer, capfd: pytest.CaptureFixture[str]
) -> None:
    resources = {
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=sandbox.base_url, api_key="wrong-key"),
    }
    with DagsterInstance.get() as instance:
        result = materialize(
            [crm_assets], resources=resources, instance=instance, raise_on_error=False
        )
        context = failure_context(instance, result)
        summary = summarize_failure(context)
        capfd.readouterr()
        crm_data_failure_sensor(context)
    logged = capfd.readouterr().err

    assert not result.success
    assert summary.startswith(f"Run {result.run_id} of job ")
    assert "step crm raised CrmAuthError: The CRM rejected the API key (HTTP 401)" in summary
    assert "crm_dagster.errors" not in summary
    assert "\n" not in summary
    assert summary in logged


def test_failure_summary_redacts_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_API_KEY", SENTINEL_KEY)

    @op
    def leaky() -> None:
        raise ValueError(f"request to /v1/resource?api_key={SENTINEL_KEY} failed")

    @job
    def leaky_job() -> None:
        leaky()

    with DagsterInstance.get() as instance:
        result = leaky_job.execute_in_process(instance=instance, raise_on_error=False)
        summary = summarize_failure(failure_context(instance, result))

    assert "step leaky raised ValueError: request to /v1/resource?api_key=*** failed" in summary
    assert find_secret([summary]) == []


# ---------------------------------------------------------------------------------------------
# Lock around the pipeline's working directory

TRY_LOCK = """
import sys
from filelock import FileLock, Timeout
try:
    FileLock(sys.argv[1]).acquire(timeout=0)
except Timeout:
    sys.exit(3)
"""


def test_pipeline_lock_excludes_other_process() -> None:
    path = pipeline_lock_path()

    with pipeline_lock():
        while_held = subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], check=False)
    after_release = subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], check=False)

    assert while_held.returncode == 3
    assert after_release.returncode == 0


def test_pipeline_lock_outside_working_dir() -> None:
    working_dir = Path(crm_pipeline().working_dir)
    path = pipeline_lock_path()

    assert path.parent == working_dir.parent
    assert path.parent == Path(os.environ["DLT_DATA_DIR"]) / "pipelines"
    assert working_dir not in path.parents
