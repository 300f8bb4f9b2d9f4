"""The dlt pipeline ``crm``: where ``crm_data`` is written.

By default it writes the dataset ``crm`` to DuckDB at ``data/warehouse.duckdb`` (override the
path with ``CRM_DUCKDB_PATH``). To write elsewhere, use dlt's own configuration: set
``destination_type`` (for example ``DESTINATION_TYPE=postgres``) and that destination's
credentials in ``.dlt/secrets.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dlt
from dlt.common.destination import Destination

PIPELINE_NAME = "crm"
DATASET_NAME = "crm"
DUCKDB_PATH_ENV = "CRM_DUCKDB_PATH"
DEFAULT_DUCKDB_PATH = Path("data") / "warehouse.duckdb"


def duckdb_path() -> Path:
    """Return the DuckDB file that the default destination writes to.

    The default is named ``warehouse.duckdb`` and not after the dataset: DuckDB 2 rejects a
    database file whose name equals the schema it holds (``crm.duckdb`` with dataset ``crm``).
    """
    return Path(os.environ.get(DUCKDB_PATH_ENV) or DEFAULT_DUCKDB_PATH)


def crm_destination() -> Destination | None:
    """Return the default DuckDB destination, or None when dlt's configuration names another."""
    if dlt.config.get("destination_type") or os.environ.get("DESTINATION_TYPE"):
        return None

    path = duckdb_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return dlt.destinations.duckdb(str(path))


def crm_pipeline() -> dlt.Pipeline:
    """Return the ``crm`` pipeline with the configured destination and the dataset ``crm``."""
    return dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        destination=crm_destination(),
        dataset_name=DATASET_NAME,
    )
