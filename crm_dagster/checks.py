"""Asset checks on ``crm_data``, run after each load: ids present and unique, rows match the CRM.

The three checks run as one step with one warehouse connection, in the asset's pool: DuckDB
allows a single writer process, so separate check processes would fight over its lock.
"""

from collections.abc import Iterator

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
from crm_dagster.pipeline import crm_pipeline
from crm_dagster.warehouse import query

ASSET_KEY = AssetKey(RESOURCE_NAME)

ID_NOT_NULL = "id_not_null"
ID_UNIQUE = "id_unique"
ROWS_MATCH_CRM_TOTAL = "rows_match_crm_total"


@multi_asset_check(
    specs=[
        AssetCheckSpec(ID_NOT_NULL, asset=ASSET_KEY, description="No row has a null primary key."),
        AssetCheckSpec(ID_UNIQUE, asset=ASSET_KEY, description="Each primary key is in one row."),
        AssetCheckSpec(
            ROWS_MATCH_CRM_TOTAL,
            asset=ASSET_KEY,
            description="Rows in the table equal the total the CRM reported in the last load.",
        ),
    ],
    pool=POOL,
)
def crm_data_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """Check the primary key and compare the row count with the CRM's reported total."""
    key = load_contract().primary_key
    pipeline = crm_pipeline()
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name(RESOURCE_NAME)
    ((rows, null_ids, distinct_ids),) = query(
        pipeline,
        f'SELECT COUNT(*), COUNT(*) - COUNT("{key}"), COUNT(DISTINCT "{key}") FROM {table}',
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
    yield _compare_with_crm_total(context, rows)


def _compare_with_crm_total(context: AssetCheckExecutionContext, rows: int) -> AssetCheckResult:
    event = context.instance.get_latest_materialization_event(ASSET_KEY)
    materialization = event.asset_materialization if event else None
    reported = materialization.metadata.get("crm_reported_total") if materialization else None
    if reported is None:
        return AssetCheckResult(
            check_name=ROWS_MATCH_CRM_TOTAL,
            passed=True,
            metadata={"table_rows": rows},
            description="The CRM reported no total in the last load: nothing to compare.",
        )

    crm_total = int(reported.value)
    return AssetCheckResult(
        check_name=ROWS_MATCH_CRM_TOTAL,
        passed=rows == crm_total,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "table_rows": rows,
            "crm_reported_total": crm_total,
            "difference": rows - crm_total,
        },
    )


CRM_DATA_CHECKS = [crm_data_checks]
