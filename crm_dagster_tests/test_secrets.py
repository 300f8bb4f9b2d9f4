"""The API key stays out of output, logs, errors and every file a load writes, under faults.

The ``crm`` fixture of test_faults scans captured output, DEBUG logs, error texts, dlt's pipeline
directory, Dagster's storage, the DuckDB file and the cassettes after each test. These tests add
the cases that need more: other key parameter names, a separate process with DEBUG logging on
for every logger, the files that must exist for a scan to mean anything, and invalid settings
that carry the key.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from crm_dagster.redaction import register_secret
from crm_dagster_tests import test_faults
from crm_dagster_tests.conftest import (
    CASSETTES,
    SENTINEL_KEY,
    dlt_pipeline_dir,
    find_secret,
    warehouse_rows,
)
from crm_dagster_tests.test_faults import RECORDS, CrmHarness, closed_port, materialized_metadata

# The fixtures of test_faults, under the names that the tests request.
crm = test_faults.crm
dagster_home = test_faults.dagster_home
dagster_instance = test_faults.dagster_instance
preloaded_warehouse = test_faults.preloaded_warehouse

# Faults that make the transport retry each kind of failure, and still load: two retries of
# the first page, one of each later page.
RETRIED_FAULTS = ["status:503", "status:429,retry_after=0", "drop@100", "reset_mid_body@200"]


def files_containing(root: Path, text: str) -> list[Path]:
    """Return the files under ``root`` whose bytes contain ``text``."""
    needle = text.encode()
    return [path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


@pytest.mark.parametrize(
    "crm", [{"api_key_param": "api_token"}, {"api_key_param": "x"}], indirect=True
)
def test_any_key_param_name_stays_hidden(crm: CrmHarness) -> None:
    name = crm.sandbox.api_key_param
    contract = crm.contract(api_key_param=name)

    result = crm.run(RETRIED_FAULTS, contract=contract)

    assert result.success
    assert materialized_metadata(result)["http_retries"] == len(RETRIED_FAULTS)
    assert all(entry["query"][name] == "***" for entry in crm.sandbox.requests)

    port = closed_port()
    message = crm.fail(contract=contract, base_url=f"http://127.0.0.1:{port}")

    assert f"127.0.0.1:{port} refused the connection" in message
    assert find_secret([message]) == []


def test_pipeline_and_dagster_files_hold_no_key(crm: CrmHarness, dagster_home: Path) -> None:
    crm.preload()
    port = closed_port()
    message = crm.fail(base_url=f"http://127.0.0.1:{port}")
    assert "refused the connection" in message

    # The scan only means something if the files it reads hold the run's error and data.
    trace = dlt_pipeline_dir() / "trace.pickle"
    assert b"refused the connection" in trace.read_bytes()
    assert files_containing(dagster_home, "refused the connection") != []
    warehouse = Path(os.environ["CRM_DUCKDB_PATH"])
    assert warehouse_rows("SELECT COUNT(*) FROM crm.crm_data") == [(RECORDS,)]
    assert find_secret(paths=[trace, dagster_home, warehouse, CASSETTES]) == []


DEBUG_SCRIPT = """
import logging
import sys
from dagster import DagsterInstance, EnvVar, materialize
from dagster_dlt import DagsterDltResource
from crm_dagster.assets import crm_assets
from crm_dagster.resources import CrmResource

logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
instance = DagsterInstance.get()
for base_url in sys.argv[1:]:
    crm = CrmResource(base_url=base_url, api_key=EnvVar("CRM_API_KEY"))
    resources = {"dlt": DagsterDltResource(), "crm": crm}
    result = materialize([crm_assets], resources=resources, instance=instance, raise_on_error=False)
    print("run succeeded" if result.success else "run failed", flush=True)
"""


def test_debug_output_of_separate_process_has_no_key(
    crm: CrmHarness, dagster_home: Path, tmp_path: Path
) -> None:
    crm.sandbox.set_faults(RETRIED_FAULTS)
    base_urls = [crm.sandbox.base_url, f"http://127.0.0.1:{closed_port()}"]
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "RUNTIME__LOG_LEVEL": "DEBUG",
        "CRM_CONTRACT_FILE": str(crm.contract()),
    }

    completed = subprocess.run(
        [sys.executable, "-c", DEBUG_SCRIPT, *base_urls],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    crm.error_texts.extend([completed.stdout, completed.stderr])

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines() == ["run succeeded", "run failed"]
    # DEBUG records of urllib3 and dlt are on, and urllib3 logged the keyed URL, redacted.
    assert "DEBUG:urllib3.connectionpool:" in completed.stderr
    assert "api_key=***" in completed.stderr
    assert "refused the connection" in completed.stderr
    assert find_secret([completed.stdout, completed.stderr]) == []


@pytest.mark.parametrize(
    "base_url",
    [
        f"https://crm.example.com/?api_key={quote_plus(SENTINEL_KEY)}",
        f"crm.example.com?api_key={quote(SENTINEL_KEY, safe='')}",
        f"https://user:{quote(SENTINEL_KEY, safe='')}@crm.example.com",
    ],
)
def test_base_url_with_key_is_not_echoed(crm: CrmHarness, base_url: str) -> None:
    message = crm.fail(base_url=base_url)

    assert "CRM base URL" in message
    assert crm.sandbox.requests == []
    assert find_secret([message]) == []


def test_key_in_contract_params_is_not_echoed(crm: CrmHarness) -> None:
    message = crm.fail(contract=crm.contract(params={"api_key": SENTINEL_KEY}))

    assert "params sets 'api_key', the api_key_param" in message
    assert crm.sandbox.requests == []
    assert find_secret([message]) == []
    # The contract file itself contains the key in this case; the scan after the test must not
    # count that file, which the user wrote, as a leak.
    for contract in crm.workdir.glob("contract-*.toml"):
        contract.unlink()


def test_log_filter_redacts_tracebacks() -> None:
    register_secret(SENTINEL_KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("urllib3.connectionpool")
    logger.addHandler(handler)
    try:
        try:
            raise ConnectionError(f"GET /v1/resource?api_key={quote_plus(SENTINEL_KEY)} failed")
        except ConnectionError:
            logger.error("request to %s failed", f"/?x={SENTINEL_KEY}", exc_info=True)
    finally:
        logger.removeHandler(handler)

    output = stream.getvalue()
    assert "request to /?x=*** failed" in output
    assert "ConnectionError: GET /v1/resource?api_key=*** failed" in output
    assert find_secret([output]) == []
