"""Offset pagination that stops correctly with or without a total, and logs progress."""

from __future__ import annotations

import logging
import time
from typing import Any

from dlt.common import jsonpath
from dlt.sources.helpers.rest_client.paginators import OffsetPaginator
from requests import Request, Response

from crm_dagster.concurrent import PageReadAhead
from crm_dagster.contract import CrmContract
from crm_dagster.errors import CrmResponseError
from crm_dagster.transport import LoadStats, describe_request

logger = logging.getLogger("crm_dagster")

PROGRESS_INTERVAL_S = 5.0


class CrmOffsetPaginator(OffsetPaginator):
    """dlt's offset paginator with errors that never contain a response body.

    It stops on the first of: offset past the reported total, ``has_more`` false, an empty page,
    a page shorter than the limit, or the ``max_offset`` guard. It logs pages and records fetched
    at most every five seconds, and stores the largest reported total in ``stats``.
    """

    def __init__(
        self,
        contract: CrmContract,
        stats: LoadStats,
        read_ahead: PageReadAhead | None = None,
    ) -> None:
        super().__init__(
            limit=contract.limit,
            offset_param=contract.offset_param,
            limit_param=contract.limit_param,
            total_path=contract.total_path,
            maximum_offset=contract.max_offset,
            stop_after_empty_page=contract.stop_on_empty_page,
            has_more_path=contract.has_more_path,
        )
        self.contract = contract
        self.stats = stats
        self._where = ""
        self._last_progress_at = 0.0
        # Sends the requests for the next pages early; None pages sequentially.
        self.read_ahead = read_ahead

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        self._where = describe_request(response.request)
        records = len(data or [])
        pages, total_records = self.stats.count_page(records)

        super().update_state(response, data)
        self._store_total(response)
        if self.contract.stop_on_short_page and records < self.contract.limit:
            self._has_next_page = False

        self._log_progress(pages, total_records)

    def update_request(self, request: Request) -> None:
        super().update_request(request)
        if self.read_ahead is not None and self._has_next_page:
            offsets = self.read_ahead.offsets_to_read(
                self.current_value, self.value_step, self.stats.reported_total
            )
            self.read_ahead.read_ahead(request, self.param_name, offsets)

    def _store_total(self, response: Response) -> None:
        # Keep the largest total seen. Records created while paging raise the total, and a
        # record deleted while paging can hide another one behind a page boundary, so the
        # rows-vs-total check compares the distinct rows loaded with the largest total.
        if self.total_path is None:
            return
        values = jsonpath.find_values(self.total_path, response.json())
        try:
            total = int(values[0])
        except (IndexError, TypeError, ValueError):
            return
        self.stats.record_total(total)

    def _log_progress(self, pages: int, records: int) -> None:
        now = time.monotonic()
        last_page = not self._has_next_page
        if not last_page and now - self._last_progress_at < PROGRESS_INTERVAL_S and pages > 1:
            return

        self._last_progress_at = now
        total = self.stats.reported_total
        of_total = f" of {total}" if total is not None else ""
        state = "done" if last_page else "in progress"
        logger.info("CRM paging %s: %d pages, %d records%s", state, pages, records, of_total)

    def _handle_missing_total(self, response_json: dict[str, Any]) -> None:
        raise CrmResponseError(
            f"CRM response to {self._where} has no total at {self.contract.total_path!r}. If this "
            'CRM does not report a total, set total_path = "" in the contract (paging then stops '
            "on an empty or short page, or on has_more_path)."
        )

    def _handle_invalid_total(self, total: Any) -> None:
        raise CrmResponseError(
            f"CRM response to {self._where} has a total at {self.contract.total_path!r} that is "
            f"not an integer (a {type(total).__name__}). Fix total_path in the contract."
        )

    def _handle_missing_has_more(self, response_json: dict[str, Any]) -> None:
        raise CrmResponseError(
            f"CRM response to {self._where} has no value at has_more_path "
            f"{self.contract.has_more_path!r}. Fix has_more_path in the contract."
        )

    def _handle_invalid_has_more(self, has_more: Any) -> None:
        raise CrmResponseError(
            f"CRM response to {self._where} has a value at has_more_path "
            f"{self.contract.has_more_path!r} that is not a boolean (a {type(has_more).__name__})."
            " Fix has_more_path in the contract."
        )
