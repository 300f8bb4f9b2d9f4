"""Definitions load with no CRM settings, and expose crm_data as the project promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import crm_assets
from crm_dagster.definitions import defs
from crm_dagster.resources import CrmResource
from crm_dagster_tests.conftest import PROJECT_ROOT, failure_message


def test_definitions_load_without_secrets() -> None:
    assert "CRM_API_KEY" not in os.environ
    repository = defs.get_repository_def()
    asset_keys = repository.asset_graph.get_all_asset_keys()
    assert AssetKey("crm_data") in asset_keys


def test_crm_data_spec() -> None:
    (spec,) = crm_assets.specs
    assert spec.key == AssetKey("crm_data")
    assert spec.group_name == "crm"
    assert list(spec.deps) == []
    assert crm_assets.op.pool == "crm_load"


def test_dagster_validate_cli() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_API")}
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (CrmResource(api_key="some-key"), "CRM_BASE_URL"),
        (CrmResource(base_url="http://127.0.0.1:9"), "CRM_API_KEY"),
        (CrmResource(base_url="127.0.0.1:9", api_key="some-key"), "http:// or https://"),
    ],
)
def test_missing_settings_fail_clearly(resource: CrmResource, expected: str) -> None:
    result = materialize(
        [crm_assets],
        resources={"dlt": DagsterDltResource(), "crm": resource},
        raise_on_error=False,
        instance=DagsterInstance.ephemeral(),
    )
    assert not result.success
    message = failure_message(result)
    assert expected in message
    assert "some-key" not in message
