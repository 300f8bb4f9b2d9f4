"""The schedule ``crm_data_schedule``: merge the CRM's records into crm_data on a cron.

The cron and its timezone are read from the environment when the code location loads, so a
change takes effect after a reload (``dagster dev`` restart, or Reload in the UI):

* ``CRM_SCHEDULE_CRON``: a standard 5-field cron expression; default ``0 * * * *`` (hourly).
* ``CRM_SCHEDULE_TIMEZONE``: an IANA timezone name; default ``UTC``.

The schedule starts stopped. Turn it on in the UI (Automation, crm_data_schedule), or run
``dagster schedule start crm_data_schedule`` in the project root with the DAGSTER_HOME of
``dagster dev``. A running ``dagster-daemon`` (part of ``dagster dev``) then launches its runs.
Dagster keeps the on/off state per code location name:
without ``-m`` the CLI loads the location ``crm_dagster`` of pyproject.toml, as ``dagster dev``
does, while ``-m crm_dagster.definitions`` would name another location.
"""

from __future__ import annotations

import os

from dagster import DagsterInvalidDefinitionError, DefaultScheduleStatus, ScheduleDefinition

from crm_dagster.errors import CrmSettingsError
from crm_dagster.jobs import crm_data_job

SCHEDULE_NAME = "crm_data_schedule"
CRON_ENV = "CRM_SCHEDULE_CRON"
TIMEZONE_ENV = "CRM_SCHEDULE_TIMEZONE"
DEFAULT_CRON = "0 * * * *"
DEFAULT_TIMEZONE = "UTC"


def build_crm_data_schedule() -> ScheduleDefinition:
    """Build the schedule from ``CRM_SCHEDULE_CRON`` and ``CRM_SCHEDULE_TIMEZONE``.

    Empty or unset variables take the defaults (hourly, UTC).

    Raises:
        CrmSettingsError: the cron expression or the timezone is invalid.
    """
    cron = os.environ.get(CRON_ENV, "").strip() or DEFAULT_CRON
    timezone = os.environ.get(TIMEZONE_ENV, "").strip() or DEFAULT_TIMEZONE
    try:
        return ScheduleDefinition(
            name=SCHEDULE_NAME,
            job=crm_data_job,
            cron_schedule=cron,
            execution_timezone=timezone,
            default_status=DefaultScheduleStatus.STOPPED,
            description=(
                f"Merge the CRM's records into crm_data on the cron {cron!r} ({timezone}), "
                f"set by {CRON_ENV} and {TIMEZONE_ENV}."
            ),
        )
    except DagsterInvalidDefinitionError as error:
        raise CrmSettingsError(
            f"Invalid schedule settings {CRON_ENV}={cron!r}, {TIMEZONE_ENV}={timezone!r}: "
            f"{error}. Set {CRON_ENV} to a 5-field cron expression such as '0 * * * *' and "
            f"{TIMEZONE_ENV} to an IANA timezone such as 'Europe/Berlin'."
        ) from None


crm_data_schedule = build_crm_data_schedule()
