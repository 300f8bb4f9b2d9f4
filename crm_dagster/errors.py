"""Errors raised by crm_dagster. None of their messages contains the API key or a response body."""

from __future__ import annotations


class CrmError(Exception):
    """Base class of the errors raised by crm_dagster."""


class CrmSettingsError(CrmError, ValueError):
    """Invalid or missing settings, found before any request is sent."""


class CrmRequestError(CrmError):
    """A request to the CRM failed: an error status, a network error, or retries ran out."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class CrmAuthError(CrmRequestError):
    """The CRM rejected the API key (HTTP 401 or 403)."""


class CrmResponseError(CrmError):
    """The CRM returned 2xx with a body that does not fit the contract."""
