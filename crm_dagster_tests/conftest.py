"""Shared fixtures: an isolated dlt and Dagster home per test, the sandbox CRM, and secret scans."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import duckdb
import pytest
from dagster import materialize
from dagster_dlt import DagsterDltResource
from dlt.common.configuration.container import Container
from dlt.common.pipeline import PipelineContext

from crm_dagster.assets import crm_assets
from crm_dagster.resources import CrmResource
from crm_dagster.sandbox import SandboxServer

# A key with characters that change under URL encoding, so scans cover both forms.
SENTINEL_KEY = "sntl-KEY+9f3/q=7"
SECRET_FORMS = (SENTINEL_KEY, quote(SENTINEL_KEY, safe=""), quote_plus(SENTINEL_KEY))

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CASSETTES = Path(__file__).resolve().parent / "cassettes"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Give each test its own dlt data dir, DuckDB file and Dagster home, and no CRM settings."""
    for name in ("CRM_BASE_URL", "CRM_API_KEY", "CRM_CONTRACT_FILE", "DESTINATION_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))
    monkeypatch.setenv("CRM_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("RUNTIME__DLTHUB_TELEMETRY", "false")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        (PROJECT_ROOT / ".dagster_home" / "dagster.yaml").read_text()
    )
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))

    # dlt keeps the last pipeline that ran as the active one, and a resource iterated outside a
    # pipeline reads its incremental state from it. Each test starts with none.
    pipeline_context = Container()[PipelineContext]
    if pipeline_context.is_active():
        pipeline_context.deactivate()
    return tmp_path


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """Run the sandbox CRM in this process with 250 records and the sentinel key."""
    with SandboxServer(records=250, api_key=SENTINEL_KEY, seed=7) as server:
        yield server


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run the sandbox CRM as a separate process, as `make demo` does; yield its base URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crm_dagster.sandbox",
            "--port",
            "0",
            "--records",
            "250",
            "--api-key",
            SENTINEL_KEY,
            "--seed",
            "7",
            "--request-log",
            str(tmp_path / "sandbox-requests.jsonl"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", first_line)
    assert match, f"sandbox printed no URL: {first_line!r}"
    try:
        yield match.group(0), process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


# Run config that makes a crm_data run fetch every record, not only those changed since the last.
FULL_REFRESH = {"ops": {"crm": {"config": {"full_refresh": True}}}}


def run_crm_asset(  # type: ignore[no-untyped-def]
    base_url: str,
    api_key: str = SENTINEL_KEY,
    raise_on_error: bool = True,
    run_config: dict | None = None,
):
    """Materialize crm_data in process against ``base_url`` and return the execution result."""
    resources = {
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=base_url, api_key=api_key),
    }
    return materialize(
        [crm_assets], resources=resources, raise_on_error=raise_on_error, run_config=run_config
    )


def warehouse_rows(sql: str) -> list[tuple]:
    """Run ``sql`` against the test's DuckDB warehouse (dataset ``crm``)."""
    with duckdb.connect(os.environ["CRM_DUCKDB_PATH"], read_only=True) as connection:
        return connection.execute(sql).fetchall()


def files_under(*roots: Path) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.exists():
            yield from (path for path in root.rglob("*") if path.is_file())


def find_secret(texts: Iterable[str] = (), paths: Iterable[Path] = ()) -> list[str]:
    """Return where any form of the sentinel key occurs in ``texts`` or in files under ``paths``."""
    hits = []
    for index, text in enumerate(texts):
        hits.extend(f"text {index}" for form in SECRET_FORMS if form in text)
    encoded = [form.encode() for form in SECRET_FORMS]
    for path in files_under(*paths):
        content = path.read_bytes()
        hits.extend(str(path) for form in encoded if form in content)
    return hits


def dlt_pipeline_dir() -> Path:
    """Return the working directory of the ``crm`` dlt pipeline in this test's dlt data dir."""
    return Path(os.environ["DLT_DATA_DIR"]) / "pipelines" / "crm"


def failure_message(result, node: str = "crm") -> str:  # type: ignore[no-untyped-def]
    """Return the error message of a failed step, with the messages of its causes."""
    error = result.failure_data_for_node(node).error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)
