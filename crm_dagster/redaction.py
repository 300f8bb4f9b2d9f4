"""Keep the CRM API key out of log records and error messages.

The key is added to each request URL only inside :class:`crm_dagster.transport.CrmTransport`, so
dlt never receives it. Two places still expose it: urllib3 logs the request line at DEBUG
level, and requests puts the full URL into connection errors. The transport rewrites those
errors, and :class:`SecretFilter` rewrites log records of the loggers that print URLs.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote, quote_plus

REDACTED = "***"

# Loggers whose records can contain a request URL. A filter on a logger applies only to the records
# created on that logger, not those of its children, so each one is listed.
URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3", "requests", "dlt")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Add a secret, in plain and URL-encoded forms, to the values that :func:`redact` hides."""
    if not secret:
        return

    with _lock:
        _secrets.update({secret, quote(secret, safe=""), quote_plus(secret)})
    install_log_filter()


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class SecretFilter(logging.Filter):
    """Logging filter that formats a record and removes registered secrets from it.

    It redacts the message, and the traceback of a record logged with ``exc_info``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set, so they never format the raw traceback.
            record.exc_text = redact(_traceback_formatter.formatException(record.exc_info))
        return True


_traceback_formatter = logging.Formatter()


_filter = SecretFilter()


def install_log_filter() -> None:
    """Attach the secret filter to the loggers that print request URLs, once each."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
