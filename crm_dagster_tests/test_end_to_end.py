"""The dagster CLI loads a live sandbox CRM process into DuckDB, as `make demo` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from crm_dagster.sandbox import generate_record
from crm_dagster_tests.conftest import (
    PROJECT_ROOT,
    SENTINEL_KEY,
    find_secret,
    warehouse_rows,
)

pytestmark = pytest.mark.slow


def dagster_materialize(base_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRM_BASE_URL": base_url, "CRM_API_KEY": SENTINEL_KEY}
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "asset", "materialize", "-m", "crm_dagster.definitions"]
    return subprocess.run(
        [*command, "--select", "crm_data"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_materializes_sandbox_records(
    sandbox_process: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base_url, _ = sandbox_process

    first = dagster_materialize(base_url)
    assert first.returncode == 0, first.stderr[-3000:]
    second = dagster_materialize(base_url)
    assert second.returncode == 0, second.stderr[-3000:]

    rows = warehouse_rows(
        "SELECT id, customer_id, contact_info__email, contact_info__address__city, "
        "annual_revenue, is_active, churn_reason FROM crm.crm_data ORDER BY id"
    )
    assert len(rows) == 250
    for row in rows:
        record = generate_record(row[0], 7)
        contact = record["contact_info"]
        expected = (
            record["id"],
            record["customer_id"],
            contact["email"],
            contact["address"]["city"],
            Decimal(str(record["annual_revenue"])),
            record["is_active"],
            record["churn_reason"],
        )
        assert row == expected

    log_lines = (tmp_path / "sandbox-requests.jsonl").read_text().splitlines()
    served = [json.loads(line) for line in log_lines]
    queries = [entry["query"] for entry in served if entry["path"] == "/v1/resource"]
    offsets = [int(query["offset"]) for query in queries]
    # The first run fetches every page, the last two concurrently and so in either order. The
    # second run requests only records changed since the first, which fit on one page.
    assert sorted(offsets[:3]) == [0, 100, 200]
    assert offsets[3:] == [0]
    assert "updated_since" not in queries[0]
    assert "updated_since" in queries[3]

    texts = [first.stdout, first.stderr, second.stdout, second.stderr]
    assert find_secret(texts, [tmp_path]) == []
