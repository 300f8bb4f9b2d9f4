"""Sensors on crm_data: a change sensor that launches merge runs, and a run-failure summary.

``crm_change_sensor`` sends one request per tick: the first record of the CRM's list, newest
first, with ``limit=1``. It compares the reported total and the newest record's id and
``updated_at`` with its cursor, and requests one run of ``crm_data_job`` for each change. It
starts stopped: turn it on in the UI, or run ``dagster sensor start crm_change_sensor`` in the
project root with the DAGSTER_HOME of ``dagster dev``. Leave out ``-m``, so the CLI names the
same code location as ``dagster dev``. The first check after it starts requests a run, because
the sensor has nothing to compare with yet.

Environment variables:

* ``CRM_SENSOR_INTERVAL_S``: minimum seconds between two checks; default 300. Read when the
  code location loads.
* ``CRM_SENSOR_NEWEST_FIRST``: query string that sorts the CRM's list newest first; default
  ``sort=-updated_at``. Set it empty for a CRM without such a sort: the sensor then detects
  added and deleted records (through the total) but not updates of existing ones. Read at
  each tick.
* ``CRM_BASE_URL``, ``CRM_API_KEY``, ``CRM_CONTRACT_FILE``: read at each tick, as the asset
  reads them at each run.

``crm_data_failure_sensor`` logs one summary per failed run of this code location: run id,
failed step, error class and message, with the API key redacted. It runs by default because it
sends no request and only writes logs, which the UI shows on the sensor's ticks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl

import requests
from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)
from dlt.common.jsonpath import find_values

from crm_dagster.assets import forward_logs
from crm_dagster.contract import CrmContract, validate_base_url
from crm_dagster.errors import CrmError, CrmResponseError, CrmSettingsError
from crm_dagster.jobs import crm_data_job
from crm_dagster.redaction import redact, register_secret
from crm_dagster.resources import CrmResource
from crm_dagster.transport import build_session

CHANGE_SENSOR_NAME = "crm_change_sensor"
FAILURE_SENSOR_NAME = "crm_data_failure_sensor"

INTERVAL_ENV = "CRM_SENSOR_INTERVAL_S"
DEFAULT_INTERVAL_S = 300
NEWEST_FIRST_ENV = "CRM_SENSOR_NEWEST_FIRST"
DEFAULT_NEWEST_FIRST = "sort=-updated_at"
BASE_URL_ENV = "CRM_BASE_URL"
API_KEY_ENV = "CRM_API_KEY"
CONTRACT_FILE_ENV = "CRM_CONTRACT_FILE"

# Limits for the check request. Dagster 1.13 cancels a sensor evaluation after 60 s unless
# DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS sets another value, so a check takes at most 50 s: two
# attempts of 5 s connect plus 15 s read, with up to 10 s between them. The next tick repeats a
# failed check anyway.
CHECK_MAX_RETRIES = 1
CHECK_BACKOFF_S = 1.0
CHECK_RETRY_AFTER_MAX_S = 10.0
CHECK_CONNECT_TIMEOUT_S = 5.0
CHECK_READ_TIMEOUT_S = 15.0

# Maximum length of the error message in a failure summary, in characters.
SUMMARY_MESSAGE_MAX = 500


def sensor_interval_s() -> int:
    """Return the change sensor's minimum interval from ``CRM_SENSOR_INTERVAL_S``, in seconds.

    Raises:
        CrmSettingsError: the value is not a whole number of at least 1.
    """
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        interval = int(text)
    except ValueError:
        interval = 0
    if interval < 1:
        raise CrmSettingsError(
            f"Invalid {INTERVAL_ENV}={text!r}: expected a whole number of seconds >= 1, for "
            f"example {INTERVAL_ENV}=300."
        )
    return interval


def newest_first_params() -> dict[str, str]:
    """Return the query parameters of ``CRM_SENSOR_NEWEST_FIRST`` (default ``sort=-updated_at``).

    Raises:
        CrmSettingsError: the value is not a query string such as ``sort=-updated_at``.
    """
    text = os.environ.get(NEWEST_FIRST_ENV, DEFAULT_NEWEST_FIRST).strip()
    if not text:
        return {}
    try:
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise CrmSettingsError(
            f"Invalid {NEWEST_FIRST_ENV}={text!r}: expected a query string such as "
            "'sort=-updated_at', or an empty value when the CRM cannot sort by update time."
        ) from None


def crm_settings_from_env() -> CrmResource:
    """Return the CRM settings from the environment, as the definitions' ``crm`` resource has them.

    The sensor reads the variables itself because Dagster fails a tick before the sensor runs
    when a resource's environment variable is unset, and the sensor should skip with a reason.
    """
    return CrmResource(
        base_url=os.environ.get(BASE_URL_ENV) or None,
        api_key=os.environ.get(API_KEY_ENV) or None,
        contract_file=os.environ.get(CONTRACT_FILE_ENV) or None,
    )


@dataclass(frozen=True)
class CrmSnapshot:
    """The CRM's record count and newest record, as one check observed them.

    Attributes:
        total: Record count that the CRM reported; None when the contract has no total_path.
        newest_id: Primary key of the first record of the newest-first list, as text.
        newest_updated_at: That record's ``updated_at`` value, as the CRM sent it.
    """

    total: int | None
    newest_id: str | None
    newest_updated_at: str | None

    def describe(self) -> str:
        """Return a one-line description such as ``total 250, newest id 7 updated ...``."""
        total = "no total" if self.total is None else f"total {self.total}"
        if self.newest_id is None:
            return f"{total}, no records"
        return f"{total}, newest id {self.newest_id} updated {self.newest_updated_at}"


@dataclass(frozen=True)
class ChangeCursor:
    """The change sensor's cursor: the last snapshot and how many changes were seen so far."""

    snapshot: CrmSnapshot
    changes: int

    def to_json(self) -> str:
        return json.dumps({**asdict(self.snapshot), "changes": self.changes}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ChangeCursor | None:
        """Parse a cursor; None for an empty or unreadable one, which counts as a first check."""
        if not text:
            return None
        try:
            values = json.loads(text)
            snapshot = CrmSnapshot(
                total=values["total"],
                newest_id=values["newest_id"],
                newest_updated_at=values["newest_updated_at"],
            )
            return cls(snapshot=snapshot, changes=int(values["changes"]))
        except (ValueError, TypeError, KeyError):
            return None


def _check_contract(contract: CrmContract) -> CrmContract:
    return contract.model_copy(
        update={
            "max_retries": min(contract.max_retries, CHECK_MAX_RETRIES),
            "backoff_factor": min(contract.backoff_factor, CHECK_BACKOFF_S),
            "retry_after_max_s": min(contract.retry_after_max_s, CHECK_RETRY_AFTER_MAX_S),
            "connect_timeout_s": min(contract.connect_timeout_s, CHECK_CONNECT_TIMEOUT_S),
            "read_timeout_s": min(contract.read_timeout_s, CHECK_READ_TIMEOUT_S),
        }
    )


def fetch_snapshot(settings: CrmResource) -> CrmSnapshot:
    """Send one ``limit=1`` request, newest first, and return the CRM's total and newest record.

    The request goes through :class:`~crm_dagster.transport.CrmTransport`, which adds the key,
    retries once at most, and rejects error statuses and non-JSON bodies.

    Raises:
        CrmSettingsError: the base URL, the key, the contract or ``CRM_SENSOR_NEWEST_FIRST`` is
            missing or invalid.
        CrmRequestError: the CRM is unreachable or returned an error status.
        CrmResponseError: the response lacks the record list or has an invalid total.
    """
    base_url = validate_base_url(settings.base_url)
    if not settings.api_key:
        raise CrmSettingsError(
            f"CRM API key is missing. Set the environment variable {API_KEY_ENV}."
        )
    contract = settings.contract()
    params: dict[str, Any] = {
        **contract.params,
        **newest_first_params(),
        contract.offset_param: 0,
        contract.limit_param: 1,
    }

    with build_session(_check_contract(contract), settings.api_key) as session:
        body = session.get(base_url + contract.path, params=params).json()
    return _snapshot_from_body(body, contract)


def _snapshot_from_body(body: Any, contract: CrmContract) -> CrmSnapshot:
    found = find_values(contract.data_selector, body) if isinstance(body, dict) else []
    records = found[0] if found else None
    if not isinstance(records, list):
        raise CrmResponseError(
            f"CRM response has no record list at data_selector {contract.data_selector!r}. "
            "Set data_selector in the contract to the field that holds the records."
        )

    total = None
    if contract.total_path:
        total = _parse_total(find_values(contract.total_path, body), contract.total_path)

    newest = records[0] if records and isinstance(records[0], dict) else None
    if newest is None:
        return CrmSnapshot(total=total, newest_id=None, newest_updated_at=None)
    newest_id = newest.get(contract.primary_key)
    updated_at = newest.get(contract.updated_at_field)
    return CrmSnapshot(
        total=total,
        newest_id=None if newest_id is None else str(newest_id),
        newest_updated_at=None if updated_at is None else str(updated_at),
    )


def _parse_total(values: list[Any], total_path: str) -> int:
    value = values[0] if values else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise CrmResponseError(
        f"CRM response has no valid record count at total_path {total_path!r} (got {value!r}). "
        "Fix total_path in the contract, or set it empty when the CRM reports no total."
    )


def evaluate_change(cursor: str | None) -> SensorResult | SkipReason:
    """Check the CRM once and return a run request with the new cursor, or a skip reason.

    A missing setting or a failed request returns a :class:`SkipReason` that states the reason,
    so the sensor tick records the reason instead of an error. No message contains the API key.
    """
    try:
        snapshot = fetch_snapshot(crm_settings_from_env())
    except (CrmError, requests.RequestException) as error:
        return SkipReason(f"CRM change check failed, so no run was requested: {redact(str(error))}")

    previous = ChangeCursor.from_json(cursor)
    # NOTE: updated_at often has whole seconds, so a second update of the newest record within
    # the second of the previous check leaves the snapshot equal and waits for the next change.
    if previous is not None and previous.snapshot == snapshot:
        return SkipReason(f"No change in the CRM since the last check ({snapshot.describe()}).")

    changes = previous.changes + 1 if previous is not None else 1
    if previous is None:
        reason = f"first check: {snapshot.describe()}"
    else:
        reason = f"was {previous.snapshot.describe()}; now {snapshot.describe()}"
    # One run key per detected change: Dagster never launches two runs for one run key, so a
    # retried tick cannot start a second run for the same change.
    run_key = f"change-{changes}:{snapshot.total}:{snapshot.newest_id}:{snapshot.newest_updated_at}"
    run_request = RunRequest(run_key=run_key, tags={"crm_dagster/change": redact(reason)[:200]})
    return SensorResult(
        run_requests=[run_request],
        cursor=ChangeCursor(snapshot=snapshot, changes=changes).to_json(),
    )


@sensor(
    name=CHANGE_SENSOR_NAME,
    job=crm_data_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Checks the CRM with one limit=1 request per tick and launches one merge run of "
        f"crm_data for each change in its total or newest record. Interval: {INTERVAL_ENV}."
    ),
)
def crm_change_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Launch a merge run of crm_data when the CRM's total or newest record changed."""
    with forward_logs(context.log):
        return evaluate_change(context.cursor)


def summarize_failure(context: RunFailureSensorContext) -> str:
    """Return one summary of a failed run: run id, failed steps, error class and message.

    The API key of ``CRM_API_KEY`` is registered and redacted from the text.
    """
    register_secret(os.environ.get(API_KEY_ENV, ""))
    failures = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        failures.append(f"step {event.step_key} raised {_describe_error(error)}")
    if not failures:
        # The run failed outside any step, for example while its resources were configured.
        job_failure = context.failure_event.job_failure_data
        error = job_failure.error if job_failure else None
        failures.append(f"no step ran: {_describe_error(error, context.failure_event.message)}")
    run = context.dagster_run
    return redact(f"Run {run.run_id} of job {run.job_name} failed: " + "; ".join(failures))


def _describe_error(error: Any, fallback: str | None = None) -> str:
    """Return ``Class: first line of message`` of the innermost cause of a serialized error."""
    if error is None:
        lines = (fallback or "").strip().splitlines()
        return (lines[0] if lines else "no error details")[:SUMMARY_MESSAGE_MAX]
    while error.cause is not None:
        error = error.cause
    lines = (error.message or "").strip().splitlines()
    message = lines[0] if lines else "no message"
    # Dagster stores the message as "module.Class: text".
    prefix, separator, text = message.partition(": ")
    if separator and prefix.split(".")[-1] == error.cls_name:
        message = text
    return f"{error.cls_name}: {message[:SUMMARY_MESSAGE_MAX]}"


@run_failure_sensor(
    name=FAILURE_SENSOR_NAME,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Logs one summary of each failed run in this code location, which only materializes "
        "crm_data: run id, failed step, error class and message."
    ),
)
def crm_data_failure_sensor(context: RunFailureSensorContext) -> None:
    """Log a one-line summary of a failed crm_data run on the sensor's tick."""
    context.log.error(summarize_failure(context))
