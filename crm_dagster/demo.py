"""Run the project end to end on the embedded defaults: the sandbox CRM into DuckDB.

``python -m crm_dagster.demo`` starts the sandbox with a random API key, materializes
``crm_data`` twice through the ``dagster`` CLI (the second run merges, so the row count stays the
same), prints the row count and a few rows, and stops the sandbox. With ``--dev`` it starts
``dagster dev`` on the sandbox instead, to click Materialize in the UI.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from crm_dagster.pipeline import DATASET_NAME, duckdb_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    """Write one line for the person running the demo."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


@contextmanager
def running_sandbox(records: int, api_key: str) -> Iterator[str]:
    """Start the sandbox CRM as a child process and yield its base URL."""
    command = [sys.executable, "-m", "crm_dagster.sandbox", "--port", "0"]
    command += ["--records", str(records), "--api-key", api_key, "--seed", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if match is None:
            raise RuntimeError(f"The sandbox CRM did not start: it printed {line!r}.")
        yield match.group(0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def materialize(env: dict[str, str]) -> None:
    """Materialize crm_data with the dagster CLI; raise if the run fails."""
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    command = [dagster, "asset", "materialize", "-m", "crm_dagster.definitions"]
    command += ["--select", "crm_data"]
    subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=True)


def table_summary() -> tuple[int, list[tuple]]:
    """Return the row count of crm_data and its first five rows."""
    with duckdb.connect(str(duckdb_path()), read_only=True) as connection:
        table = f"{DATASET_NAME}.crm_data"
        count = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        rows = connection.execute(
            f"SELECT id, customer_id, first_name, last_name, lifecycle_stage, updated_at "
            f"FROM {table} ORDER BY id LIMIT 5"
        ).fetchall()
    return int(count), rows


def run_demo(records: int) -> int:
    """Load the sandbox into DuckDB twice and check that the merge kept one row per record."""
    api_key = secrets.token_urlsafe(24)
    with running_sandbox(records, api_key) as base_url:
        env = {**os.environ, "CRM_BASE_URL": base_url, "CRM_API_KEY": api_key}
        say(f"Sandbox CRM at {base_url} serves {records} records.")

        materialize(env)
        first_count, _ = table_summary()
        say(f"First run: crm_data has {first_count} rows.")

        materialize(env)
        second_count, rows = table_summary()
        say(f"Second run (merge): crm_data has {second_count} rows.")

    say(f"Warehouse: {duckdb_path()} (dataset {DATASET_NAME}, table crm_data). First rows:")
    for row in rows:
        say("  " + " | ".join(str(value) for value in row))

    if first_count != records or second_count != records:
        say(f"Expected {records} rows after each run, one per CRM record.")
        return 1
    return 0


def run_dev(records: int) -> int:
    """Start the sandbox and ``dagster dev`` until interrupted."""
    api_key = secrets.token_urlsafe(24)
    with running_sandbox(records, api_key) as base_url:
        env = {**os.environ, "CRM_BASE_URL": base_url, "CRM_API_KEY": api_key}
        say(f"Sandbox CRM at {base_url}. Starting dagster dev; stop it with Ctrl-C.")
        dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
        process = subprocess.Popen([dagster, "dev"], env=env, cwd=PROJECT_ROOT)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo or ``dagster dev``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000, help="records the sandbox serves")
    parser.add_argument("--dev", action="store_true", help="start dagster dev on the sandbox")
    args = parser.parse_args(argv)
    return run_dev(args.records) if args.dev else run_demo(args.records)


if __name__ == "__main__":
    sys.exit(main())
