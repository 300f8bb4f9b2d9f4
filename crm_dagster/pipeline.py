"""The dlt pipeline ``crm``: where ``crm_data`` is written.

By default it writes the dataset ``crm`` to DuckDB at ``data/warehouse.duckdb``. Override the
path with ``CRM_DUCKDB_PATH``, and DuckDB's memory limit (128MB by default) with
``CRM_DUCKDB_MEMORY_LIMIT``, for example ``1GB``. To write elsewhere, use dlt's own
configuration: set ``destination_type`` (for example ``DESTINATION_TYPE=postgres``) and that
destination's credentials in ``.dlt/secrets.toml``.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dlt
from dlt.common.destination import Destination
from dlt.destinations.impl.duckdb.configuration import DuckDbCredentials

PIPELINE_NAME = "crm"
DATASET_NAME = "crm"
DUCKDB_PATH_ENV = "CRM_DUCKDB_PATH"
DEFAULT_DUCKDB_PATH = Path("data") / "warehouse.duckdb"
DUCKDB_MEMORY_LIMIT_ENV = "CRM_DUCKDB_MEMORY_LIMIT"
# DuckDB otherwise lets a load take up to 80% of the machine's memory. This limit about halved
# the peak memory of a 1,000,000-record load (docs/benchmarks.md). DuckDB spills larger
# intermediate results to a temporary folder next to the database file.
DEFAULT_DUCKDB_MEMORY_LIMIT = "128MB"
# Without insertion order, DuckDB may read and merge the load files in parallel: at 1,000,000
# records the load step took 3.1 s instead of 4.1 s (docs/benchmarks.md). SQL tables have no
# row order, so queries see no difference.
DUCKDB_SETTINGS: dict[str, Any] = {"preserve_insertion_order": False}


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Keep Python's cyclic garbage collector away from the objects that exist before a load.

    A load creates millions of short-lived objects, so the collector runs often, and each full
    run traced every object of Dagster and dlt too. With them frozen, a load of 1,000,000 records
    took 34 s instead of 39 s (docs/benchmarks.md). They are unfrozen when the block ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def duckdb_path() -> Path:
    """Return the DuckDB file that the default destination writes to.

    The default is named ``warehouse.duckdb`` and not after the dataset: DuckDB 2 rejects a
    database file whose name equals the schema it contains (``crm.duckdb`` with dataset ``crm``).
    """
    return Path(os.environ.get(DUCKDB_PATH_ENV) or DEFAULT_DUCKDB_PATH)


def crm_destination() -> Destination | None:
    """Return the default DuckDB destination, or None when dlt's configuration names another."""
    if dlt.config.get("destination_type") or os.environ.get("DESTINATION_TYPE"):
        return None

    # dlt resolves a relative DuckDB path against the directory the pipeline first ran in, which
    # it keeps in its working directory. That directory is shared by every project on the
    # machine that uses dlt's default pipelines dir, so a relative path could point into another
    # project. An absolute path always means the current directory's warehouse.
    path = duckdb_path().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    memory_limit = os.environ.get(DUCKDB_MEMORY_LIMIT_ENV) or DEFAULT_DUCKDB_MEMORY_LIMIT
    credentials = DuckDbCredentials(
        str(path), global_config={**DUCKDB_SETTINGS, "memory_limit": memory_limit}
    )
    return dlt.destinations.duckdb(credentials)


def crm_pipeline() -> dlt.Pipeline:
    """Return the ``crm`` pipeline with the configured destination and the dataset ``crm``."""
    return dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        destination=crm_destination(),
        dataset_name=DATASET_NAME,
    )


def definition_pipeline() -> dlt.Pipeline:
    """Return the ``crm`` pipeline for the asset definition, in a working directory of its own.

    dagster-dlt keeps this pipeline as asset metadata and reads its name, destination and
    dataset, while the asset passes :func:`crm_pipeline` to each load. Creating a dlt pipeline
    writes into its working directory, and a load drops that directory when it starts. Every
    Dagster process that loads the definitions (run workers, step processes, code servers) would
    otherwise write into the working directory of a load running in another process. The
    directory is removed at normal process exit.
    """
    pipelines_dir = tempfile.mkdtemp(prefix="crm-dlt-definitions-")
    atexit.register(shutil.rmtree, pipelines_dir, ignore_errors=True)
    return dlt.pipeline(
        pipeline_name=PIPELINE_NAME,
        pipelines_dir=pipelines_dir,
        destination=crm_destination(),
        dataset_name=DATASET_NAME,
    )
