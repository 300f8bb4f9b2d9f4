"""The Dagster asset ``crm_data``: dlt's REST API source for the CRM, merged into the warehouse."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue
from dagster_dlt import DagsterDltResource, dlt_assets
from dlt.common.schema.exceptions import DataValidationError
from dlt.pipeline.exceptions import PipelineStepFailed
from pydantic import Field

from crm_dagster.columnar import arrow_settings
from crm_dagster.contract import RESOURCE_NAME
from crm_dagster.errors import CrmError
from crm_dagster.locking import pipeline_lock
from crm_dagster.pipeline import crm_pipeline, definition_pipeline, frozen_gc
from crm_dagster.resources import CrmResource
from crm_dagster.schema import schema_violation_error
from crm_dagster.source import placeholder_source
from crm_dagster.translator import CrmTranslator
from crm_dagster.transport import LoadStats
from crm_dagster.warehouse import count_rows


class CrmLoadConfig(Config):
    """Run configuration of ``crm_data``."""

    full_refresh: bool = Field(
        default=False,
        description="Fetch every record from the CRM, even when the contract loads only "
        "records changed since the last load (incremental = true). The records are merged.",
    )


# Runs of crm_data share one dlt working directory, which dagster-dlt drops at the start of
# each run. The project's dagster.yaml limits this pool to one step at a time.
POOL = "crm_load"


@dlt_assets(
    dlt_source=placeholder_source(),
    dlt_pipeline=definition_pipeline(),
    name="crm",
    dagster_dlt_translator=CrmTranslator(),
    pool=POOL,
)
def crm_assets(
    context: AssetExecutionContext,
    dlt: DagsterDltResource,
    crm: CrmResource,
    config: CrmLoadConfig,
) -> Iterator[MaterializeResult]:
    """Load the CRM's records into ``crm_data`` with a merge on the primary key."""
    stats = LoadStats()
    source = crm.build_source(stats, full_refresh=config.full_refresh)

    # The pool keeps loads apart; the lock also covers two processes given its slot at once.
    with pipeline_lock(context.log):
        pipeline = crm_pipeline()
        with forward_logs(context.log), arrow_settings(), frozen_gc():
            try:
                results = list(dlt.run(context=context, dlt_source=source, dlt_pipeline=pipeline))
            except PipelineStepFailed as failure:
                crm_error = _find_crm_error(failure)
                if crm_error is None:
                    raise
                raise crm_error from None

        for result in results:
            yield _with_load_metadata(result, stats, pipeline)


def _with_load_metadata(result: Any, stats: LoadStats, pipeline: Any) -> MaterializeResult:
    table = RESOURCE_NAME
    row_counts = pipeline.last_trace.last_normalize_info.row_counts
    metadata: dict[str, Any] = {
        **(result.metadata or {}),
        "rows_loaded": MetadataValue.int(row_counts.get(table, 0)),
        "dagster/row_count": MetadataValue.int(count_rows(pipeline, table)),
        "http_requests": MetadataValue.int(stats.requests),
        "http_retries": MetadataValue.int(stats.retries),
        "pages_fetched": MetadataValue.int(stats.pages),
        "records_fetched": MetadataValue.int(stats.records),
        "rejected_records": MetadataValue.int(stats.rejected),
    }
    if stats.reported_total is not None:
        metadata["crm_reported_total"] = MetadataValue.int(stats.reported_total)
    return MaterializeResult(asset_key=result.asset_key, metadata=metadata)


def _find_crm_error(error: BaseException) -> CrmError | None:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, CrmError):
            return current
        if isinstance(current, DataValidationError):
            return schema_violation_error(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _ForwardHandler(logging.Handler):
    def __init__(self, target: Any) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, record.getMessage())


@contextmanager
def forward_logs(target: Any, logger_name: str = "crm_dagster") -> Iterator[None]:
    """Send the records of ``logger_name`` to ``target`` (a Dagster run log) for the block."""
    logger = logging.getLogger(logger_name)
    handler = _ForwardHandler(target)
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
