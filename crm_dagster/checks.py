"""Asset checks on ``crm_data``, run after each load: ids present and unique, rows match the CRM."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, asset_check

from crm_dagster.contract import RESOURCE_NAME, load_contract
from crm_dagster.pipeline import crm_pipeline
from crm_dagster.warehouse import count_rows, query

ASSET_KEY = AssetKey(RESOURCE_NAME)


def _table_sql(pipeline) -> str:  # type: ignore[no-untyped-def]
    with pipeline.sql_client() as client:
        return client.make_qualified_table_name(RESOURCE_NAME)


@asset_check(asset=ASSET_KEY, description="No row of crm_data has a null primary key.")
def crm_data_id_not_null() -> AssetCheckResult:
    """Count rows whose primary key is null."""
    pipeline = crm_pipeline()
    key = load_contract().primary_key
    rows = query(pipeline, f'SELECT COUNT(*) FROM {_table_sql(pipeline)} WHERE "{key}" IS NULL')
    null_rows = int(rows[0][0])
    return AssetCheckResult(passed=null_rows == 0, metadata={"null_id_rows": null_rows})


@asset_check(asset=ASSET_KEY, description="Each primary key appears in one row of crm_data.")
def crm_data_id_unique() -> AssetCheckResult:
    """Count primary keys that appear in more than one row."""
    pipeline = crm_pipeline()
    key = load_contract().primary_key
    sql = (
        f'SELECT COUNT(*) FROM (SELECT "{key}" FROM {_table_sql(pipeline)} '
        f'GROUP BY "{key}" HAVING COUNT(*) > 1) AS duplicates'
    )
    duplicate_ids = int(query(pipeline, sql)[0][0])
    return AssetCheckResult(passed=duplicate_ids == 0, metadata={"duplicate_ids": duplicate_ids})


@asset_check(
    asset=ASSET_KEY,
    description="Rows in crm_data equal the record count that the CRM reported in its last load.",
)
def crm_data_matches_crm_total(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Compare the table's row count with the total the CRM reported during the last load."""
    event = context.instance.get_latest_materialization_event(ASSET_KEY)
    materialization = event.asset_materialization if event else None
    reported = materialization.metadata.get("crm_reported_total") if materialization else None
    table_rows = count_rows(crm_pipeline(), RESOURCE_NAME)

    if reported is None:
        return AssetCheckResult(
            passed=True,
            metadata={"table_rows": table_rows, "crm_reported_total": "not reported"},
            description="The CRM reported no total, so there is nothing to compare.",
        )

    crm_total = int(reported.value)
    return AssetCheckResult(
        passed=table_rows == crm_total,
        metadata={
            "table_rows": table_rows,
            "crm_reported_total": crm_total,
            "difference": table_rows - crm_total,
        },
    )


CRM_DATA_CHECKS = [crm_data_id_not_null, crm_data_id_unique, crm_data_matches_crm_total]
