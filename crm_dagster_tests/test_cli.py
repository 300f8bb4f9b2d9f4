"""``dagster asset materialize`` loads crm_data, and two CLI runs at once take turns.

The CLI runs each run in its own process, without the daemon's run queue. What keeps two of them
apart is the pool ``crm_load``: with op granularity (.dagster_home/dagster.yaml), each step
claims a slot in the instance's storage before it starts, so both processes must share one
DAGSTER_HOME. A file lock (crm_dagster/locking.py) covers two claims of the same slot at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from crm_dagster.sandbox import SandboxServer
from crm_dagster_tests.conftest import find_secret
from crm_dagster_tests.dagster_processes import (
    DEADLINE_S,
    assert_loads_in_sequence,
    dagster_command,
    dagster_env,
    finished_runs,
    init_instance,
    latest_row_count,
    overlapping_windows,
    start_process,
    stop_process,
    warehouse_rows_when_unlocked,
)

MATERIALIZE = ["asset", "materialize", "-m", "crm_dagster.definitions", "--select", "crm_data"]


@pytest.mark.slow
def test_two_cli_runs_take_turns(sandbox: SandboxServer, tmp_path: Path) -> None:
    # Slow pages widen each load, so a load that did not wait for the pool would overlap another.
    sandbox.update_settings(latency_ms=1000)
    init_instance()
    env = dagster_env(sandbox.base_url)
    logs = [tmp_path / f"materialize-{index}.log" for index in (1, 2)]
    processes = []
    try:
        processes = [
            start_process([dagster_command("dagster"), *MATERIALIZE], env, log) for log in logs
        ]
        exit_codes = [process.wait(timeout=DEADLINE_S) for process in processes]
    finally:
        for process in processes:
            stop_process(process)

    for exit_code, log in zip(exit_codes, logs, strict=True):
        assert exit_code == 0, f"dagster asset materialize failed:\n{log.read_text()}"
    with DagsterInstance.get() as instance:
        runs = finished_runs(instance)
        records = [instance.get_run_record_by_id(run.run_id) for run in runs]
        row_count = latest_row_count(instance)

    assert len(runs) == 2
    for run in runs:
        assert run.status == DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}"
    run_windows = [(record.start_time, record.end_time) for record in records]
    assert overlapping_windows(run_windows) == [(0, 1)], (
        f"the two runs did not run at the same time, so the pool was not tested: {run_windows}"
    )
    assert_loads_in_sequence(sandbox.requests)
    assert row_count == 250
    counts = warehouse_rows_when_unlocked("SELECT COUNT(*), COUNT(DISTINCT id) FROM crm.crm_data")
    assert counts == [(250, 250)]
    hits = find_secret(paths=[Path(os.environ["DAGSTER_HOME"]), tmp_path])
    assert hits == [], f"the API key is stored in {hits}"
