"""The CRM contract: how the CRM's REST API is called, paged, retried and written.

Every setting has the default that the sandbox CRM serves. To point the project at a real CRM,
put the settings that differ in a TOML file and set ``CRM_CONTRACT_FILE`` to its path, for
example ``examples/pipedrive.toml``. Nothing here contains the API key or the base URL: those come
from ``CRM_API_KEY`` and ``CRM_BASE_URL`` (or dlt's secrets outside Dagster).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crm_dagster.errors import CrmSettingsError

CONTRACT_FILE_ENV = "CRM_CONTRACT_FILE"
RESOURCE_NAME = "crm_data"


class CrmContract(BaseModel):
    """Settings of one CRM endpoint. Each field is a key of the contract TOML file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = "/v1/resource"
    """Endpoint path, joined to the base URL."""
    api_key_param: str = Field(default="api_key", min_length=1)
    """Query parameter that carries the API key."""
    params: dict[str, str | int] = Field(default_factory=dict)
    """Extra query parameters sent on every page, such as a stable sort order."""
    data_selector: str = Field(default="data", min_length=1)
    """JSONPath of the record list in each response."""

    paginator: Literal["offset"] = "offset"
    """Pagination style. Only offset pagination is supported."""
    offset_param: str = Field(default="offset", min_length=1)
    limit_param: str = Field(default="limit", min_length=1)
    limit: int = Field(default=100, ge=1, le=10_000)
    """Records requested per page."""
    total_path: str | None = "total"
    """JSONPath of the total record count; empty when the CRM reports none."""
    has_more_path: str | None = None
    """JSONPath of a boolean that is false on the last page."""
    stop_on_empty_page: bool = True
    stop_on_short_page: bool = True
    """Stop after a page with fewer records than ``limit``."""
    max_offset: int | None = Field(default=None, ge=1)
    """Guard: never request an offset at or past this value."""

    primary_key: str = Field(default="id", min_length=1)
    columns: dict[str, dict[str, Any]] | None = None
    """Declared columns as dlt column hints. Unset uses the CRM columns of schema.py, and an
    empty table declares none."""
    updated_at_field: str = "updated_at"
    """Field that orders versions of one record: the newest wins a merge."""
    write_disposition: Literal["merge", "append", "replace"] = "merge"
    updated_since_param: str | None = "updated_since"
    """Query parameter that filters records changed since a timestamp; empty when unsupported."""
    incremental: bool = True
    """Fetch only records changed since the last load: each load after the first sends
    ``updated_since_param`` with the newest ``updated_at_field`` value loaded so far, which dlt
    keeps in its pipeline state in the warehouse. It applies to the merge and append write
    dispositions, and only when ``updated_since_param`` is set. A run with the ``full_refresh``
    config fetches every record. Records deleted in the CRM stay in the table either way."""

    retry_statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
    max_retries: int = Field(default=3, ge=0, le=10)
    """Retries after the first attempt, so ``max_retries + 1`` attempts at most."""
    backoff_factor: float = Field(default=2.0, ge=0)
    """Seconds before the first retry; each further retry waits twice as long."""
    retry_after_max_s: float = Field(default=60.0, ge=0)
    """Longest ``Retry-After`` wait honoured; a longer one fails the load at once."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    max_in_flight: int = Field(default=8, ge=1, le=64)
    """Page requests in flight at once when the CRM reports a total; 1 pages sequentially.

    With the default of 8, paging 100,000 records at 50 ms per request took 7.7 s instead of
    54 s in docs/benchmarks.md, over 8 connections to the CRM. A 429 response is retried after
    its Retry-After wait like any other, but a CRM that limits concurrent requests or request
    rate is better served by a lower value, or by ``requests_per_second``. Without a total,
    paging is always sequential."""
    requests_per_second: float | None = Field(default=None, gt=0)
    """Upper bound on requests sent per second, for CRMs with a rate limit."""

    arrow_batch_records: int = Field(default=10_000, ge=0)
    """Records per Arrow table on the fast path (crm_dagster/columnar.py); 0 turns it off.

    Pages whose records fit the declared columns reach dlt as Arrow tables, which dlt writes
    to the warehouse without checking each record in Python: a load of 1,000,000 records took
    34 s instead of 60 s in docs/benchmarks.md. Other pages, and every page when this is 0,
    reach dlt as dictionaries."""

    @field_validator("path")
    @classmethod
    def _path_starts_with_slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path {value!r} must start with '/', for example '/v1/resource'")
        return value

    @field_validator("retry_statuses")
    @classmethod
    def _statuses_are_errors(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        invalid = [status for status in value if not 400 <= status <= 599]
        if invalid:
            raise ValueError(f"retry_statuses {invalid} are not HTTP error statuses (400 to 599)")
        return value

    @field_validator("total_path", "has_more_path", "updated_since_param", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _query_parameters_are_distinct(self) -> CrmContract:
        # The message names parameters only: a value in params may be a secret put there by
        # mistake, and describe_validation_error prints no value for errors of the whole contract.
        if self.api_key_param in self.params:
            raise ValueError(
                f"params sets {self.api_key_param!r}, the api_key_param. Remove it from params "
                "and put the key in CRM_API_KEY, so it stays out of logs and files."
            )
        for setting, name in (
            ("offset_param", self.offset_param),
            ("limit_param", self.limit_param),
        ):
            if name in self.params:
                raise ValueError(f"params sets {name!r}, the {setting}; the paginator sets it.")
        names = [self.api_key_param, self.offset_param, self.limit_param]
        if len(set(names)) < len(names):
            raise ValueError(
                f"api_key_param, offset_param and limit_param must differ, got {names}."
            )
        return self

    @model_validator(mode="after")
    def _paging_stops(self) -> CrmContract:
        if (
            self.total_path is None
            and self.has_more_path is None
            and self.max_offset is None
            and not self.stop_on_empty_page
        ):
            raise ValueError(
                "paging would never stop: set total_path, has_more_path or max_offset, or set "
                "stop_on_empty_page = true."
            )
        return self

    def page_size_params(self) -> dict[str, str | int]:
        """Return the query parameters sent with every page request, without the key."""
        return {**self.params, self.limit_param: self.limit}


def load_contract(path: str | os.PathLike[str] | None = None) -> CrmContract:
    """Load the contract from a TOML file, or the defaults when no file is given.

    Args:
        path: TOML file; defaults to the ``CRM_CONTRACT_FILE`` environment variable.

    Raises:
        CrmSettingsError: the file is missing, is not TOML, or sets an invalid value.
    """
    path = path or os.environ.get(CONTRACT_FILE_ENV) or None
    if path is None:
        return CrmContract()

    file = Path(path)
    try:
        settings = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise CrmSettingsError(
            f"CRM contract file {str(file)!r} was not found. Fix {CONTRACT_FILE_ENV} or create "
            "the file."
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise CrmSettingsError(
            f"CRM contract file {str(file)!r} is not valid TOML: {error}"
        ) from None

    try:
        return CrmContract(**settings)
    except ValidationError as error:
        raise CrmSettingsError(describe_validation_error(error, str(file))) from None


def describe_validation_error(error: ValidationError, source: str) -> str:
    """Turn a pydantic error into one message that names each invalid setting and its value."""
    problems = []
    for detail in error.errors():
        setting = ".".join(str(part) for part in detail["loc"])
        message = detail["msg"].rstrip(".")
        if not setting or setting.startswith("params"):
            # An error of the whole contract has all settings as input, and params may hold
            # a secret put there by mistake: print neither.
            problems.append(f"{setting or 'contract'}: {message}")
        else:
            problems.append(f"{setting}={detail.get('input')!r}: {message}")
    return (
        f"Invalid CRM contract setting in {source}: "
        + "; ".join(problems)
        + ". Fix the setting in that file (CRM_CONTRACT_FILE)."
    )


def validate_base_url(base_url: str | None) -> str:
    """Check that the CRM base URL is an absolute http(s) URL and return it without a trailing /.

    Raises:
        CrmSettingsError: the URL is missing, has no scheme or host, or carries a query string.
    """
    if not base_url:
        raise CrmSettingsError(
            "CRM base URL is missing. Set CRM_BASE_URL, for example "
            "CRM_BASE_URL=https://crm.example.com."
        )

    parts = urlsplit(base_url)
    printable_url = _url_for_message(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CrmSettingsError(
            f"CRM base URL {printable_url!r} is invalid: it needs an http:// or https:// scheme "
            "and a host, for example https://crm.example.com. Fix CRM_BASE_URL."
        )
    if parts.username or parts.password:
        raise CrmSettingsError(
            f"CRM base URL {printable_url!r} must not carry a user name or password. Put the API "
            "key in CRM_API_KEY."
        )
    if parts.query or parts.fragment:
        raise CrmSettingsError(
            f"CRM base URL {printable_url!r} must not carry a query string or fragment. Put the "
            "API key in CRM_API_KEY and other parameters in the contract's params."
        )
    return base_url.rstrip("/")


def _url_for_message(url: str) -> str:
    """Return ``url`` without query, fragment and user info, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
