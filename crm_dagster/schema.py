"""Declared columns of the ``crm_data`` table: names, dlt data types and nullability.

Nested objects are flattened by dlt with a double underscore, so ``contact_info.address.city``
becomes the column ``contact_info__address__city``. Fields the CRM sends that are not declared
here are added as new columns with inferred types. A value whose type does not match its column's
type, declared here or inferred on an earlier load, fails the load (dlt's ``data_type: freeze``
contract) instead of creating a variant column. :func:`schema_violation_error` words that failure.
"""

from __future__ import annotations

from typing import Any

from dlt.common.schema.exceptions import DataValidationError
from dlt.common.schema.typing import TColumnSchema, TSchemaContract

from crm_dagster.errors import CrmResponseError

CRM_COLUMNS: dict[str, TColumnSchema] = {
    "id": {"data_type": "bigint", "nullable": False, "primary_key": True},
    "customer_id": {"data_type": "text", "nullable": False},
    "first_name": {"data_type": "text", "nullable": True},
    "last_name": {"data_type": "text", "nullable": True},
    "company_name": {"data_type": "text", "nullable": True},
    "contact_info__email": {"data_type": "text", "nullable": True},
    "contact_info__phone": {"data_type": "text", "nullable": True},
    "contact_info__address__street": {"data_type": "text", "nullable": True},
    "contact_info__address__city": {"data_type": "text", "nullable": True},
    "contact_info__address__postal_code": {"data_type": "text", "nullable": True},
    "contact_info__address__country": {"data_type": "text", "nullable": True},
    "lifecycle_stage": {"data_type": "text", "nullable": True},
    "annual_revenue": {"data_type": "decimal", "precision": 18, "scale": 2, "nullable": True},
    "is_active": {"data_type": "bool", "nullable": True},
    "churn_reason": {"data_type": "text", "nullable": True},
    "created_at": {"data_type": "timestamp", "nullable": False},
    "updated_at": {"data_type": "timestamp", "nullable": False, "dedup_sort": "desc"},
}

# dlt names a variant column after its base column, e.g. annual_revenue__v_text.
VARIANT_SEPARATOR = "__v_"

SCHEMA_CONTRACT: TSchemaContract = {
    "tables": "evolve",
    "columns": "evolve",
    "data_type": "freeze",
}


def crm_columns(
    declared: dict[str, Any] | None, primary_key: str, updated_at_field: str
) -> dict[str, TColumnSchema]:
    """Return the column hints for ``crm_data``.

    Args:
        declared: the contract's columns; None uses :data:`CRM_COLUMNS`.
        primary_key: column that identifies a record; it is marked non-nullable.
        updated_at_field: column whose newest value wins when a merge load receives one id twice.
    """
    source = CRM_COLUMNS if declared is None else declared
    columns: dict[str, dict[str, Any]] = {name: dict(hints) for name, hints in source.items()}
    for hints in columns.values():
        hints.pop("primary_key", None)
        hints.pop("dedup_sort", None)

    columns.setdefault(primary_key, {})
    columns[primary_key].update(primary_key=True, nullable=False)
    columns.setdefault(updated_at_field, {})
    columns[updated_at_field]["dedup_sort"] = "desc"
    return columns  # type: ignore[return-value]


def schema_violation_error(error: DataValidationError) -> CrmResponseError:
    """Turn dlt's data-type freeze violation into an error that names the record and column.

    The message names the record's primary key and the column, never the offending value.
    """
    table = error.table_name
    column = (error.column_name or "").split(VARIANT_SEPARATOR)[0]
    table_columns = (error.table_schema or {}).get("columns", {})
    declared_type = table_columns.get(column, {}).get("data_type")
    key_names = [name for name, hints in table_columns.items() if hints.get("primary_key")]
    item = error.data_item if isinstance(error.data_item, dict) else {}
    record = ", ".join(f"{name}={item[name]!r}" for name in key_names if name in item)

    of_type = f" of type {declared_type}" if declared_type else ""
    return CrmResponseError(
        f"CRM record {record or '(no primary key)'} has a value in {table}.{column} that does "
        f"not fit the column{of_type}. The schema contract freezes data types, so the load "
        f"stopped before writing and {table} is unchanged. Fix the value in the CRM, or declare "
        f"the column with another type in the contract's columns (for example "
        f'columns.{column}.data_type = "text"), then rerun.'
    )
