"""Helpers for the tests that run real Dagster processes: the CLI, the daemon and dagster dev.

Each process starts in its own process group with its output in a log file, and
:func:`stop_process` ends the whole group, so no run worker outlives its test. Waits poll with a
deadline and fail with the tail of the logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import duckdb
import psutil
from dagster import AssetKey, DagsterInstance, RunsFilter

from crm_dagster_tests.conftest import PROJECT_ROOT, SENTINEL_KEY, warehouse_rows

T = TypeVar("T")

# Maximum wait for one step of a process test (a daemon tick, a run, a page load), in seconds.
# A run on the sandbox takes seconds, most of it Python start-up; the rest is room for a busy
# CI machine.
DEADLINE_S = 150.0


def dagster_command(name: str) -> str:
    """Return the path of a console script (``dagster``, ``dagster-daemon``) of this venv."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable} or on PATH")
    return found


def dagster_env(base_url: str, **extra: str) -> dict[str, str]:
    """Return the environment for a Dagster process of this test: its homes and the sandbox.

    The test's ``isolated_env`` fixture has set DAGSTER_HOME, DLT_DATA_DIR and CRM_DUCKDB_PATH.
    """
    env = dict(os.environ)
    env.update(
        {
            "CRM_BASE_URL": base_url,
            "CRM_API_KEY": SENTINEL_KEY,
            "PYTHONUNBUFFERED": "1",
            "DAGSTER_TELEMETRY_DISABLED": "1",
        }
    )
    env.update(extra)
    return env


def init_instance() -> None:
    """Create the storage of the test's DAGSTER_HOME before several processes open it.

    Two processes that both create a fresh SQLite storage at once can leave it with two schema
    versions ("alembic_version has more than one head"), after which every process fails.
    """
    with DagsterInstance.get():
        pass


def start_process(
    args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = PROJECT_ROOT
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new process group, with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Stop a process started by :func:`start_process`, its process group and its descendants.

    SIGTERM first, so Dagster shuts down its code servers and marks runs; SIGKILL after
    ``timeout_s`` seconds, and for every descendant still alive at the end.
    """
    descendants = _descendants(process.pid)
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=timeout_s)
    _signal_group(process, signal.SIGKILL)
    # Run workers may run in a session of their own, outside the group.
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal_group(process: subprocess.Popen[bytes], signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


def run_cli(args: list[str], env: Mapping[str, str], log_path: Path, timeout_s: float) -> int:
    """Run a Dagster CLI command to completion and return its exit code; stop it on timeout."""
    process = start_process(args, env, log_path)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{' '.join(args)} did not finish within {timeout_s:.0f} s. Log:\n{tail(log_path)}"
        ) from None
    finally:
        stop_process(process)


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file, or a note when it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(
    condition: Callable[[], T | None],
    description: str,
    logs: Iterable[Path] = (),
    deadline_s: float = DEADLINE_S,
    interval_s: float = 1.0,
) -> T:
    """Poll ``condition`` until it returns a truthy value, and return that value.

    Raises:
        AssertionError: the deadline passed; the message names ``description`` and shows the logs.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            log_tails = "\n".join(f"--- {path.name}:\n{tail(path)}" for path in logs)
            raise AssertionError(
                f"Timed out after {deadline_s:.0f} s waiting for {description}.\n{log_tails}"
            )
        time.sleep(interval_s)


def finished_runs(instance: DagsterInstance, tags: Mapping[str, str] | None = None) -> list:
    """Return the finished runs (success, failure or canceled) with ``tags``, newest first."""
    return [run for run in instance.get_runs(RunsFilter(tags=tags or {})) if run.is_finished]


def assert_loads_in_sequence(requests_log: list[dict]) -> None:
    """Check that the loads in the sandbox's request log ran one after the other.

    The first load finds no state and requests every page without ``updated_since``. A load
    that starts after a load has finished restores the state from the warehouse and sends
    ``updated_since``. So loads in sequence show all requests without ``updated_since`` first,
    while overlapping loads would each start without state and mix their requests.
    """
    incremental = ["updated_since" in entry["query"] for entry in requests_log]
    assert incremental, "the sandbox received no request"
    assert not incremental[0], f"the first load sent updated_since: {requests_log[0]}"
    assert True in incremental, "every load was a full load, so the loads overlapped"
    first_incremental = incremental.index(True)
    assert all(incremental[first_incremental:]), (
        f"a full-load request came after an incremental one, so loads overlapped: {incremental}"
    )


def overlapping_windows(windows: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Return the index pairs of time windows that overlap."""
    return [
        (first, second)
        for first in range(len(windows))
        for second in range(first + 1, len(windows))
        if windows[first][0] < windows[second][1] and windows[second][0] < windows[first][1]
    ]


def latest_row_count(instance: DagsterInstance) -> int | None:
    """Return ``dagster/row_count`` of the latest crm_data materialization, or None."""
    event = instance.get_latest_materialization_event(AssetKey("crm_data"))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("dagster/row_count")
    return None if value is None else int(value.value)


def warehouse_rows_when_unlocked(sql: str, deadline_s: float = 30.0) -> list[tuple]:
    """Run ``sql`` on the test's DuckDB file once no other process holds its lock.

    A run worker can hold the lock for a moment after its run is marked successful.
    """

    def attempt() -> tuple[list[tuple]] | None:
        try:
            return (warehouse_rows(sql),)
        except duckdb.IOException:
            return None

    (rows,) = wait_for(attempt, f"the DuckDB lock to run {sql!r}", deadline_s=deadline_s)
    return rows


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
