"""Dagster definitions of the project: the crm_data asset, its checks, schedule and sensors.

Environment variables: CRM_BASE_URL and CRM_API_KEY (read at run time, so definitions load
without them), CRM_CONTRACT_FILE, CRM_DUCKDB_PATH, CRM_SCHEDULE_CRON, CRM_SCHEDULE_TIMEZONE,
CRM_SENSOR_INTERVAL_S, CRM_SENSOR_NEWEST_FIRST.
"""

from dagster import Definitions, EnvVar, in_process_executor
from dagster_dlt import DagsterDltResource

from crm_dagster.assets import crm_assets
from crm_dagster.checks import CRM_DATA_CHECKS
from crm_dagster.jobs import crm_data_job
from crm_dagster.resources import CrmResource
from crm_dagster.schedules import crm_data_schedule
from crm_dagster.sensors import crm_change_sensor, crm_data_failure_sensor

defs = Definitions(
    assets=[crm_assets],
    asset_checks=CRM_DATA_CHECKS,
    # crm_data_job loads crm_data and runs its checks. The schedule and the change sensor
    # launch it and start stopped; the failure sensor only logs and runs by default.
    jobs=[crm_data_job],
    schedules=[crm_data_schedule],
    sensors=[crm_change_sensor, crm_data_failure_sensor],
    # A run has one load step and one check step that runs after it, so a process per step
    # buys no parallelism. Running both in the run's own process saves several seconds of
    # process start-up per run (docs/benchmarks.md).
    executor=in_process_executor,
    resources={
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=EnvVar("CRM_BASE_URL"), api_key=EnvVar("CRM_API_KEY")),
    },
)
