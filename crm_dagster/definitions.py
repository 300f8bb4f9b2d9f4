"""Dagster definitions of the project: the crm_data asset, its checks, schedule and sensors.

Environment variables: CRM_BASE_URL and CRM_API_KEY (read at run time, so definitions load
without them), CRM_CONTRACT_FILE, CRM_DUCKDB_PATH, CRM_SCHEDULE_CRON, CRM_SCHEDULE_TIMEZONE.
"""

from dagster import Definitions, EnvVar
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import crm_assets
from crm_dagster.checks import CRM_DATA_CHECKS
from crm_dagster.resources import CrmResource

defs = Definitions(
    assets=[crm_assets],
    asset_checks=CRM_DATA_CHECKS,
    resources={
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=EnvVar("CRM_BASE_URL"), api_key=EnvVar("CRM_API_KEY")),
    },
)
