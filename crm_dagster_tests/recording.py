"""vcrpy settings for the asset tests, and the command that re-records their cassettes.

Re-record with ``make cassettes`` (``python -m crm_dagster_tests.recording``): it starts the
sandbox CRM on 127.0.0.1, runs each scenario against it with recording on, and writes the
cassettes under ``crm_dagster_tests/cassettes``. The API key is replaced by ``<API_KEY>`` before a
request is written, and requests match on method, path and query, so the replaying tests can use
any key and any local base URL.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import vcr

if TYPE_CHECKING:
    from crm_dagster.sandbox import SandboxServer

CASSETTES = Path(__file__).resolve().parent / "cassettes"
KEY_PLACEHOLDER = "<API_KEY>"
# Replayed requests go to a closed local port, so a request missing from a cassette fails fast
# on this machine instead of reaching any other host.
REPLAY_BASE_URL = "http://127.0.0.1:9"


def crm_vcr(api_key_param: str = "api_key", record_mode: str = "none") -> vcr.VCR:
    """Return a VCR that stores cassettes without the key and matches on method, path and query."""
    return vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode=record_mode,
        match_on=("method", "path", "query"),
        filter_query_parameters=[(api_key_param, KEY_PLACEHOLDER)],
        decode_compressed_response=True,
    )


@contextmanager
def _isolated_env() -> Iterator[None]:
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as directory:
        os.environ["DLT_DATA_DIR"] = str(Path(directory) / "dlt")
        os.environ["CRM_DUCKDB_PATH"] = str(Path(directory) / "warehouse.duckdb")
        os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
        os.environ.pop("CRM_CONTRACT_FILE", None)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _record(name: str, run: Callable[[], object], api_key_param: str = "api_key") -> None:
    path = CASSETTES / f"{name}.yaml"
    path.unlink(missing_ok=True)
    with _isolated_env(), crm_vcr(api_key_param, record_mode="all").use_cassette(path.name):
        run()


def record_all() -> None:
    """Record every cassette from a fresh in-process sandbox."""
    from crm_dagster.sandbox import SandboxServer
    from crm_dagster.transport import CrmTransport
    from crm_dagster_tests.conftest import run_crm_asset

    CASSETTES.mkdir(exist_ok=True)
    key = "recording-key-not-a-secret"
    CrmTransport.sleep = staticmethod(lambda seconds: None)
    pipedrive = Path(__file__).resolve().parent.parent / "examples" / "pipedrive.toml"

    with SandboxServer(records=250, api_key=key, seed=7) as sandbox:
        _record("full_load", lambda: run_crm_asset(sandbox.base_url, key))

        sandbox.set_faults(["status:503"])
        _record("retry_503", lambda: run_crm_asset(sandbox.base_url, key))

        sandbox.set_faults(["status:503x4"])
        _record("retries_exhausted", lambda: run_crm_asset(sandbox.base_url, key, False))

        sandbox.set_faults([])
        _record("unauthorized", lambda: run_crm_asset(sandbox.base_url, "wrong-key", False))

        def run_pipedrive() -> None:
            os.environ["CRM_CONTRACT_FILE"] = str(pipedrive)
            run_crm_asset(sandbox.base_url, key)

        _record("pipedrive", run_pipedrive, api_key_param="api_token")

        sandbox.upsert([{"id": 3, "lifecycle_stage": "churned", "churn_reason": "price"}])
        sandbox.add(1)
        _record("after_change", lambda: run_crm_asset(sandbox.base_url, key))

    with SandboxServer(records=250, api_key=key, seed=7) as sandbox:
        _record("sensor_ticks", lambda: record_sensor_ticks(sandbox, key))


def record_sensor_ticks(sandbox: SandboxServer, key: str) -> None:
    """Run three change-sensor checks: the first, one without a change, one after a change.

    Between the second and the third check, record 5 is touched and record 251 is added, so the
    third response has total 251 and record 251 as the newest.
    """
    from crm_dagster.sensors import evaluate_change

    os.environ["CRM_BASE_URL"] = sandbox.base_url
    os.environ["CRM_API_KEY"] = key
    first = evaluate_change(None)
    evaluate_change(first.cursor)
    sandbox.touch([5])
    sandbox.add(1)
    evaluate_change(first.cursor)


if __name__ == "__main__":
    record_all()
