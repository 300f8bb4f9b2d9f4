"""The job that the schedule and the change sensor launch: load crm_data, then run its checks."""

from dagster import AssetSelection, define_asset_job

from crm_dagster.checks import ASSET_KEY

JOB_NAME = "crm_data_job"

# Selecting an asset also selects the asset checks that target it, so every run of this job
# merges the CRM's records into crm_data and then runs the checks of checks.py on the result.
crm_data_job = define_asset_job(
    name=JOB_NAME,
    selection=AssetSelection.assets(ASSET_KEY),
    description="Merge the CRM's records into crm_data, then run the asset checks of crm_data.",
)
