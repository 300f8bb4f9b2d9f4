"""Asset checks on ``crm_data``, run after each load: ids present and unique, rows match the CRM.

The four checks run as one step with one warehouse connection, in the asset's pool: DuckDB
allows a single writer process, so separate check processes would fight over its lock. The
rows-vs-total check is blocking: when it fails, the run fails.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    multi_asset_check,
)

from crm_dagster.assets import POOL
from crm_dagster.contract import RESOURCE_NAME, load_contract
from crm_dagster.locking import pipeline_lock
from crm_dagster.pipeline import crm_pipeline
from crm_dagster.rejected import REJECTED_TABLE
from crm_dagster.warehouse import query

ASSET_KEY = AssetKey(RESOURCE_NAME)

ID_NOT_NULL = "id_not_null"
ID_UNIQUE = "id_unique"
ROWS_MATCH_CRM_TOTAL = "rows_match_crm_total"
NO_REJECTED_RECORDS = "no_rejected_records"


@multi_asset_check(
    specs=[
        AssetCheckSpec(ID_NOT_NULL, asset=ASSET_KEY, description="No row has a null primary key."),
        AssetCheckSpec(ID_UNIQUE, asset=ASSET_KEY, description="Each primary key is in one row."),
        AssetCheckSpec(
            ROWS_MATCH_CRM_TOTAL,
            asset=ASSET_KEY,
            description="Rows written by the last load plus records it rejected equal the "
            "largest total the CRM reported during that load.",
            blocking=True,
        ),
        AssetCheckSpec(
            NO_REJECTED_RECORDS,
            asset=ASSET_KEY,
            description=f"The last load rejected no record for a missing primary key "
            f"(rejected records are kept in {REJECTED_TABLE}).",
        ),
    ],
    pool=POOL,
)
def crm_data_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """Check the primary key and compare the row count with the CRM's reported total."""
    key = load_contract().primary_key
    # The pool keeps checks and loads apart; the lock also covers two processes given its slot.
    with pipeline_lock(context.log):
        pipeline = crm_pipeline()
        with pipeline.sql_client() as client:
            table = client.make_qualified_table_name(RESOURCE_NAME)
            loads = client.make_qualified_table_name("_dlt_loads")
        ((rows, null_ids, distinct_ids),) = query(
            pipeline,
            f'SELECT COUNT(*), COUNT(*) - COUNT("{key}"), COUNT(DISTINCT "{key}") FROM {table}',
        )
        # A merge rewrites every row it receives, so the rows that carry the newest load id are
        # the distinct records of the last load. Status 0 marks a completed load.
        ((rows_in_last_load,),) = query(
            pipeline,
            f"SELECT COUNT(*) FROM {table} WHERE _dlt_load_id = "
            f"(SELECT MAX(load_id) FROM {loads} WHERE status = 0)",
        )
    duplicates = rows - null_ids - distinct_ids

    yield AssetCheckResult(
        check_name=ID_NOT_NULL,
        passed=null_ids == 0,
        metadata={"null_id_rows": null_ids, "table_rows": rows},
    )
    yield AssetCheckResult(
        check_name=ID_UNIQUE,
        passed=duplicates == 0,
        metadata={"duplicate_rows": duplicates, "distinct_ids": distinct_ids},
    )
    metadata = _latest_materialization_metadata(context)
    rejected = int(metadata["rejected_records"].value) if "rejected_records" in metadata else 0
    yield _compare_with_crm_total(metadata, rows, rows_in_last_load, rejected)
    yield _report_rejected(rejected, key)


def _report_rejected(rejected: int, key: str) -> AssetCheckResult:
    description = None
    if rejected:
        description = (
            f"The last load wrote {rejected} records without {key!r} to {REJECTED_TABLE} "
            f"instead of {RESOURCE_NAME}. Inspect them there (column _rejected_reason, newest "
            "_dlt_load_id) and fix them in the CRM."
        )
    return AssetCheckResult(
        check_name=NO_REJECTED_RECORDS,
        passed=rejected == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"rejected_records": rejected, "rejected_table": REJECTED_TABLE},
        description=description,
    )


def _latest_materialization_metadata(context: AssetCheckExecutionContext) -> dict[str, Any]:
    event = context.instance.get_latest_materialization_event(ASSET_KEY)
    materialization = event.asset_materialization if event else None
    return dict(materialization.metadata) if materialization else {}


def _compare_with_crm_total(
    metadata: dict[str, Any], rows: int, rows_in_last_load: int, rejected: int
) -> AssetCheckResult:
    reported = metadata.get("crm_reported_total")
    if reported is None:
        return AssetCheckResult(
            check_name=ROWS_MATCH_CRM_TOTAL,
            passed=True,
            metadata={"table_rows": rows},
            description="The CRM reported no total in the last load: nothing to compare.",
        )

    crm_total = int(reported.value)
    difference = rows_in_last_load + rejected - crm_total
    description = None
    if difference:
        description = (
            f"The last load wrote {rows_in_last_load} distinct records and rejected {rejected}, "
            f"but the CRM reported {crm_total}. Records moved between pages while the load "
            "paged through them, or the CRM's total is wrong. Set a stable sort order in the "
            "contract's params (for example by id), then rerun."
        )
    return AssetCheckResult(
        check_name=ROWS_MATCH_CRM_TOTAL,
        passed=difference == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "table_rows": rows,
            "rows_in_last_load": rows_in_last_load,
            "rejected_records": rejected,
            "crm_reported_total": crm_total,
            "difference": difference,
        },
        description=description,
    )


CRM_DATA_CHECKS = [crm_data_checks]
