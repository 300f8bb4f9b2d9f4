"""A lock between processes around every use of the ``crm`` pipeline's working directory.

The pool ``crm_load`` keeps crm_data loads and checks apart in most cases. But Dagster 1.13's
SQLite storage, the default storage of a DAGSTER_HOME, can give the pool's one slot to two
processes that claim it in the same moment: it reads a free slot, then takes it without checking
that it is still free. Two such loads would corrupt each other, because each load drops the
working directory when it starts, and DuckDB allows one writer process. This lock closes that
gap for processes on one machine, which is where the working directory and the DuckDB file live.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlt.common.pipeline import get_dlt_pipelines_dir
from filelock import FileLock, Timeout

from crm_dagster.pipeline import PIPELINE_NAME

logger = logging.getLogger("crm_dagster")


def pipeline_lock_path(pipeline_name: str = PIPELINE_NAME) -> Path:
    """Return the lock file of a pipeline, next to its working directory in dlt's pipelines dir.

    The file is outside the working directory because a load deletes that directory.
    """
    return Path(get_dlt_pipelines_dir()) / f"{pipeline_name}.lock"


@contextmanager
def pipeline_lock(log: Any = logger, pipeline_name: str = PIPELINE_NAME) -> Iterator[None]:
    """Hold the pipeline's lock for the block, waiting as long as another process holds it.

    Args:
        log: Logger (or Dagster log manager) that gets one line when the lock is busy.
        pipeline_name: dlt pipeline whose working directory the block uses.
    """
    path = pipeline_lock_path(pipeline_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info(
            "Waiting for another process that uses the dlt pipeline %r to finish (lock file %s)",
            pipeline_name,
            path,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
