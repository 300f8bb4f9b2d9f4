"""Dagster asset specs for the dlt resources of the ``crm`` source."""

from __future__ import annotations

from dagster import AssetKey, AssetSpec
from dagster_dlt import DagsterDltTranslator
from dagster_dlt.translator import DltResourceTranslatorData

GROUP_NAME = "crm"


class CrmTranslator(DagsterDltTranslator):
    """Name each asset after its dlt resource, so the resource ``crm_data`` is ``crm_data``.

    The specs have no upstream dependency: dagster-dlt's default adds a placeholder source asset.
    """

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        default_spec = super().get_asset_spec(data)
        return default_spec.replace_attributes(
            key=AssetKey(data.resource.name),
            deps=[],
            group_name=GROUP_NAME,
            description=f"CRM records loaded by dlt into the table {data.resource.table_name}.",
        ).merge_attributes(kinds={"duckdb"})
