"""Declared columns of the ``crm_data`` table: names, dlt data types and nullability.

Nested objects are flattened by dlt with a double underscore, so ``contact_info.address.city``
becomes the column ``contact_info__address__city``. Fields the CRM sends that are not declared
here are added as new columns with inferred types. A value whose type does not match its declared
column fails the load (dlt's ``data_type: freeze`` contract) instead of creating a variant column.
"""

from __future__ import annotations

from typing import Any

from dlt.common.schema.typing import TColumnSchema, TSchemaContract

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
        updated_at_field: column whose newest value wins when a merge load sees one id twice.
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
