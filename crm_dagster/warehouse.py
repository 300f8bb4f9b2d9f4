"""Queries against the table that the pipeline writes, through dlt's SQL client."""

from __future__ import annotations

from typing import Any

import dlt


def query(pipeline: dlt.Pipeline, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` in the pipeline's dataset and return all rows."""
    with pipeline.sql_client() as client, client.execute_query(sql, *args) as cursor:
        return list(cursor.fetchall())


def count_rows(pipeline: dlt.Pipeline, table: str) -> int:
    """Return the number of rows in ``table``; 0 when the table does not exist yet."""
    with pipeline.sql_client() as client:
        if not client.has_dataset():
            return 0
        name = client.make_qualified_table_name(table)
        try:
            with client.execute_query(f"SELECT COUNT(*) FROM {name}") as cursor:
                return int(cursor.fetchone()[0])
        except Exception as error:  # noqa: BLE001 - destination-specific "table not found" errors
            if "not exist" in str(error).lower() or "not found" in str(error).lower():
                return 0
            raise
