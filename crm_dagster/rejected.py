"""Records without a primary key: kept out of ``crm_data`` and appended to ``crm_data_rejected``.

A merge needs a primary key on every row, so a record whose key is missing or null cannot be
merged. Instead of failing the whole load, the records of each page that lack a key go to the
table ``crm_data_rejected`` in the same dataset, with the column ``_rejected_reason`` and dlt's
``_dlt_load_id``. The rest of the page loads as usual, and ``LoadStats.rejected`` counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dlt
from dlt.common.schema.typing import TColumnSchema

from crm_dagster.transport import LoadStats

logger = logging.getLogger("crm_dagster")

REJECTED_TABLE = "crm_data_rejected"
REASON_COLUMN = "_rejected_reason"


def rejected_table_hints(columns: dict[str, TColumnSchema]) -> Any:
    """Return dlt hints for the rejected-records table, given the columns of ``crm_data``.

    dlt builds a table variant from the resource's hints, so the declared columns come along.
    They become nullable, because a rejected record may lack any of them, and the table is
    appended to without a primary key.
    """
    overrides: dict[str, Any] = {
        name: {"nullable": True, "primary_key": False}
        for name, hints in columns.items()
        if hints.get("nullable") is False or hints.get("primary_key")
    }
    for name, hints in columns.items():
        if "dedup_sort" in hints:
            overrides.setdefault(name, {})["dedup_sort"] = None
    overrides[REASON_COLUMN] = {"data_type": "text", "nullable": False}
    return dlt.mark.make_hints(
        table_name=REJECTED_TABLE,
        write_disposition="append",
        primary_key=[],
        columns=overrides,
    )


class RejectRecordsWithoutKey:
    """dlt pipe step that moves records without a primary key to ``crm_data_rejected``.

    Args:
        primary_key: field that identifies a record.
        columns: column hints of ``crm_data``, used to build the rejected table's hints.
        stats: counters of the load; ``stats.rejected`` grows by the records moved.
    """

    def __init__(
        self, primary_key: str, columns: dict[str, TColumnSchema], stats: LoadStats
    ) -> None:
        self.primary_key = primary_key
        self.hints = rejected_table_hints(columns)
        self.stats = stats

    def __call__(self, page: Any, meta: Any = None) -> Any:
        """Return the page unchanged, or an iterator of its valid records and its rejects."""
        records = page if isinstance(page, list) else [page]
        rejected = [
            self._rejected_row(record)
            for record in records
            if not isinstance(record, dict) or record.get(self.primary_key) is None
        ]
        if not rejected:
            return page

        valid = [
            record
            for record in records
            if isinstance(record, dict) and record.get(self.primary_key) is not None
        ]
        total = self.stats.count_rejected(len(rejected))
        logger.warning(
            "CRM records without %r on this page: %d. They are written to %s (%d in this load "
            "so far)",
            self.primary_key,
            len(rejected),
            REJECTED_TABLE,
            total,
        )
        return self._split(valid, rejected)

    def _split(self, valid: list[Any], rejected: list[dict[str, Any]]) -> Iterator[Any]:
        if valid:
            yield valid
        yield dlt.mark.with_hints(rejected, self.hints, create_table_variant=True)

    def _rejected_row(self, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            reason = f"record is a JSON {type(record).__name__}, not an object"
            return {REASON_COLUMN: reason, "value": record}
        if self.primary_key not in record:
            return {**record, REASON_COLUMN: f"{self.primary_key} is missing"}
        return {**record, REASON_COLUMN: f"{self.primary_key} is null"}
