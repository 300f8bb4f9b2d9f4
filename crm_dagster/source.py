"""The dlt source ``crm``: dlt's ``rest_api_source`` configured from the CRM contract.

Its one resource, ``crm_data``, pages through ``{base_url}{contract.path}`` and merges the
records into the table ``crm_data``. Run it without Dagster with ``python -m crm_dagster.source``;
the base URL and key then come from dlt's configuration (``sources.crm.base_url`` in
``.dlt/config.toml`` or ``CRM_BASE_URL``, and ``sources.crm.api_key`` in ``.dlt/secrets.toml``).
"""

from __future__ import annotations

import os
from typing import Any

import dlt
from dlt.common import jsonpath
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.sources import DltSource
from dlt.sources.rest_api import RESTAPIConfig, rest_api_source

from crm_dagster.columnar import PagesToArrow, arrow_pages_enabled, arrow_settings
from crm_dagster.concurrent import mount_read_ahead
from crm_dagster.contract import RESOURCE_NAME, CrmContract, load_contract, validate_base_url
from crm_dagster.errors import CrmSettingsError
from crm_dagster.paginator import CrmOffsetPaginator
from crm_dagster.rejected import RejectRecordsWithoutKey
from crm_dagster.schema import SCHEMA_CONTRACT, crm_columns
from crm_dagster.transport import LoadStats, build_session

SOURCE_NAME = "crm"


def crm_source(
    base_url: str | None = None,
    api_key: str | None = None,
    contract: CrmContract | None = None,
    stats: LoadStats | None = None,
    full_refresh: bool = False,
) -> DltSource:
    """Build the ``crm`` dlt source.

    Args:
        base_url: CRM base URL; defaults to ``CRM_BASE_URL`` or dlt's ``sources.crm.base_url``.
        api_key: CRM API key; defaults to dlt's secret ``sources.crm.api_key``.
        contract: CRM contract; defaults to :func:`load_contract`.
        stats: counters that the load fills in (requests, retries, pages, records, total).
        full_refresh: fetch every record even when the contract loads incrementally.

    Raises:
        CrmSettingsError: the base URL or key is missing or invalid.
    """
    contract = contract or load_contract()
    base_url = validate_base_url(base_url or _from_dlt_config("base_url", "CRM_BASE_URL"))
    api_key = api_key or _from_dlt_config("api_key", "CRM_API_KEY", secret=True)
    if not api_key:
        raise CrmSettingsError(
            "CRM API key is missing. Set CRM_API_KEY, or sources.crm.api_key in "
            ".dlt/secrets.toml when running the dlt source on its own."
        )

    stats = stats or LoadStats()
    config = rest_api_config(base_url, api_key, contract, stats, full_refresh)
    source = rest_api_source(config, name=SOURCE_NAME, schema_contract=SCHEMA_CONTRACT)
    # Records without a primary key cannot be merged; they go to crm_data_rejected instead.
    columns = crm_columns(contract.columns, contract.primary_key, contract.updated_at_field)
    reject_step = RejectRecordsWithoutKey(contract.primary_key, columns, stats)
    source.resources[RESOURCE_NAME].add_step(reject_step)
    if arrow_pages_enabled(contract, columns):
        to_arrow = PagesToArrow(
            columns, source.schema.naming, contract.arrow_batch_records, contract.primary_key
        )
        source.resources[RESOURCE_NAME].add_step(to_arrow)
    return source


def rest_api_config(
    base_url: str,
    api_key: str,
    contract: CrmContract,
    stats: LoadStats,
    full_refresh: bool = False,
) -> RESTAPIConfig:
    """Return the ``rest_api_source`` configuration for the contract.

    The key is not part of the returned configuration: the session's transport adds it.
    """
    columns = crm_columns(contract.columns, contract.primary_key, contract.updated_at_field)
    session = build_session(contract, api_key, stats, base_url)
    read_ahead = mount_read_ahead(session, contract)
    return {
        "client": {
            "base_url": base_url,
            "session": session,
            "paginator": CrmOffsetPaginator(contract, stats, read_ahead),
        },
        "resource_defaults": {
            "primary_key": contract.primary_key,
            "write_disposition": _write_disposition(contract),
        },
        "resources": [
            {
                "name": RESOURCE_NAME,
                "columns": columns,
                # Parquet takes the Arrow tables as they are. JSON lines, when pages stay
                # dictionaries, loads several times faster than dlt's default INSERT statements
                # (docs/benchmarks.md). A destination that takes neither falls back to its own
                # default format, with a warning from dlt.
                "file_format": "parquet" if arrow_pages_enabled(contract, columns) else "jsonl",
                "endpoint": {
                    "path": contract.path,
                    "method": "GET",
                    "params": contract.page_size_params(),
                    # Compiled once here: dlt parses a string selector again on every page.
                    "data_selector": jsonpath.compile_path(contract.data_selector),
                    **_incremental_endpoint(contract, full_refresh),
                },
            }
        ],
    }


def _incremental_endpoint(contract: CrmContract, full_refresh: bool) -> dict[str, Any]:
    """Return the endpoint's ``incremental`` setting, or nothing when the load is full."""
    if (
        full_refresh
        or not contract.incremental
        or contract.updated_since_param is None
        or contract.write_disposition == "replace"
    ):
        return {}

    incremental: dict[str, Any] = {
        "start_param": contract.updated_since_param,
        "cursor_path": contract.updated_at_field,
    }
    if contract.write_disposition == "merge":
        # The CRM returns records changed at or after the cursor, so the newest records of the
        # last load come again. The merge rewrites them unchanged. Turning off dlt's own
        # deduplication keeps them, so each load writes as many records as the CRM reports.
        incremental["primary_key"] = []
    return {"incremental": incremental}


def _write_disposition(contract: CrmContract) -> Any:
    if contract.write_disposition == "merge":
        return {"disposition": "merge", "strategy": "delete-insert"}
    return contract.write_disposition


def _from_dlt_config(key: str, env_var: str, secret: bool = False) -> str | None:
    if os.environ.get(env_var):
        return os.environ[env_var]

    provider = dlt.secrets if secret else dlt.config
    try:
        value = provider[f"sources.{SOURCE_NAME}.{key}"]
    except (KeyError, ConfigFieldMissingException):
        return None
    return str(value) if value else None


def placeholder_source() -> DltSource:
    """Build the source with placeholder settings, so definitions load with no URL or key set.

    Only the resource names and hints are read from it. Runs build the real source.
    """
    return crm_source(
        base_url="http://crm.invalid",
        api_key="definitions-placeholder-key",
        contract=load_contract(),
    )


if __name__ == "__main__":
    from crm_dagster.pipeline import crm_pipeline, frozen_gc

    with arrow_settings(), frozen_gc():
        load_info = crm_pipeline().run(crm_source())
    load_info.raise_on_failed_jobs()
