"""The daemon runs crm_data: the change sensor and the schedule launch merge runs for real.

Each test starts ``dagster-daemon run`` in the project root, so it loads the code location of
pyproject.toml as ``dagster dev`` does, against the test's own DAGSTER_HOME and the in-process
sandbox CRM. The sensor and the schedule are turned on with the CLI commands that the README
gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.scheduler.instigation import TickStatus

from crm_dagster.definitions import defs
from crm_dagster.jobs import JOB_NAME
from crm_dagster.sandbox import SandboxServer
from crm_dagster.schedules import SCHEDULE_NAME
from crm_dagster.sensors import CHANGE_SENSOR_NAME
from crm_dagster_tests.conftest import find_secret
from crm_dagster_tests.dagster_processes import (
    assert_loads_in_sequence,
    dagster_command,
    dagster_env,
    finished_runs,
    init_instance,
    latest_row_count,
    run_cli,
    start_process,
    stop_process,
    wait_for,
    warehouse_rows_when_unlocked,
)

SENSOR_TAG = "dagster/sensor_name"
SCHEDULE_TAG = "dagster/schedule_name"


def start_instigator(kind: str, name: str, env: dict[str, str], log: Path) -> None:
    """Run ``dagster schedule|sensor start NAME`` in the project root and check it succeeded."""
    exit_code = run_cli([dagster_command("dagster"), kind, "start", name], env, log, 120)
    assert exit_code == 0, f"dagster {kind} start {name} failed:\n{log.read_text()}"


def runs_with_tag(instance: DagsterInstance, name: str, value: str, count: int) -> list | None:
    """Return the finished runs with tag ``name=value`` once there are ``count`` of them."""
    runs = finished_runs(instance, {name: value})
    return runs if len(runs) >= count else None


def assert_succeeded(runs: list) -> None:
    for run in runs:
        assert run.status == DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}"


def skipped_tick_after(instance: DagsterInstance, sensor_name: str, timestamp: float) -> bool:
    """Return whether the sensor recorded a skipped tick after ``timestamp``."""
    for state in instance.all_instigator_state():
        if state.instigator_name != sensor_name:
            continue
        ticks = instance.get_ticks(
            state.instigator_origin_id,
            state.selector_id,
            after=timestamp,
            statuses=[TickStatus.SKIPPED],
        )
        if ticks:
            return True
    return False


def check_names_of_job() -> set[str]:
    job = defs.resolve_job_def(JOB_NAME)
    return {key.name for key in job.asset_layer.asset_graph.asset_check_keys}


def assert_no_secret(tmp_path: Path) -> None:
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    hits = find_secret(paths=[dagster_home, tmp_path])
    assert hits == [], f"the API key is stored in {hits}"


@pytest.mark.slow
def test_sensor_runs_once_per_change(sandbox: SandboxServer, tmp_path: Path) -> None:
    init_instance()
    env = dagster_env(sandbox.base_url, CRM_SENSOR_INTERVAL_S="2")
    daemon_log = tmp_path / "daemon.log"
    start_instigator("sensor", CHANGE_SENSOR_NAME, env, tmp_path / "sensor-start.log")

    daemon = start_process([dagster_command("dagster-daemon"), "run"], env, daemon_log)
    try:
        with DagsterInstance.get() as instance:
            first_runs = wait_for(
                lambda: runs_with_tag(instance, SENSOR_TAG, CHANGE_SENSOR_NAME, 1),
                "the first run of the change sensor",
                [daemon_log],
            )
            assert_succeeded(first_runs)
            rows = warehouse_rows_when_unlocked("SELECT COUNT(*) FROM crm.crm_data")
            assert rows == [(250,)]

            change = {
                "upsert": [{"id": 5, "lifecycle_stage": "churned", "churn_reason": "price"}],
                "touch": [5],
                "add": 1,
            }
            response = requests.post(f"{sandbox.base_url}/_sandbox/records", json=change)
            assert response.status_code == 200, response.text

            runs = wait_for(
                lambda: runs_with_tag(instance, SENSOR_TAG, CHANGE_SENSOR_NAME, 2),
                "a run of the change sensor after the change",
                [daemon_log],
            )
            assert_succeeded(runs)
            second_end = instance.get_run_record_by_id(runs[0].run_id).end_time
            # A tick after the second run finds no change and must not launch a third run.
            wait_for(
                lambda: skipped_tick_after(instance, CHANGE_SENSOR_NAME, second_end),
                "a skipped sensor tick after the second run",
                [daemon_log],
            )
            all_runs = instance.get_runs()
            run_keys = {run.tags.get("dagster/run_key") for run in all_runs}
    finally:
        stop_process(daemon)

    assert len(all_runs) == 2
    assert len(run_keys) == 2
    assert None not in run_keys
    assert all(run.job_name == JOB_NAME for run in all_runs)
    changed = warehouse_rows_when_unlocked(
        "SELECT lifecycle_stage, churn_reason FROM crm.crm_data WHERE id = 5"
    )
    assert changed == [("churned", "price")]
    assert warehouse_rows_when_unlocked("SELECT COUNT(*) FROM crm.crm_data") == [(251,)]
    assert_no_secret(tmp_path)


@pytest.mark.slow
def test_schedule_and_queued_runs_take_turns(sandbox: SandboxServer, tmp_path: Path) -> None:
    # Slow pages widen each load, so a load that did not wait for the pool would overlap another.
    sandbox.update_settings(latency_ms=300)
    init_instance()
    env = dagster_env(sandbox.base_url, CRM_SCHEDULE_CRON="* * * * *")
    daemon_log = tmp_path / "daemon.log"
    start_instigator("schedule", SCHEDULE_NAME, env, tmp_path / "schedule-start.log")

    # Two runs wait in the run queue when the daemon starts. The daemon may launch them together
    # or one after the other, and when both run, their loads must still take turns.
    launch = [dagster_command("dagster"), "job", "launch", "-j", JOB_NAME]
    launch_logs = [tmp_path / f"launch-{index}.log" for index in (1, 2)]
    launches = [start_process(launch, env, log) for log in launch_logs]
    try:
        for process, log in zip(launches, launch_logs, strict=True):
            assert process.wait(timeout=120) == 0, f"dagster job launch failed:\n{log.read_text()}"
    finally:
        for process in launches:
            stop_process(process)
    with DagsterInstance.get() as instance:
        queued = [run.status for run in instance.get_runs()]

    daemon = start_process([dagster_command("dagster-daemon"), "run"], env, daemon_log)
    try:
        with DagsterInstance.get() as instance:
            scheduled = wait_for(
                lambda: runs_with_tag(instance, SCHEDULE_TAG, SCHEDULE_NAME, 1),
                "a run of the schedule",
                [daemon_log],
            )
            runs = wait_for(
                lambda: runs if len(runs := finished_runs(instance)) >= 3 else None,
                "the two launched runs",
                [daemon_log],
            )
            check_evaluations = [
                entry.dagster_event.event_specific_data
                for entry in instance.all_logs(scheduled[0].run_id)
                if entry.dagster_event
                and entry.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
            ]
            row_count = latest_row_count(instance)
    finally:
        stop_process(daemon)

    assert len(scheduled) == 1
    assert scheduled[0].job_name == JOB_NAME
    assert len(runs) == 3
    assert_succeeded(runs)
    assert queued == [DagsterRunStatus.QUEUED, DagsterRunStatus.QUEUED]
    assert_loads_in_sequence(sandbox.requests)
    assert {evaluation.check_name for evaluation in check_evaluations} == check_names_of_job()
    assert row_count == 250
    assert warehouse_rows_when_unlocked("SELECT COUNT(*) FROM crm.crm_data") == [(250,)]
    assert_no_secret(tmp_path)
