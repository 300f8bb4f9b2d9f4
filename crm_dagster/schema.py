"""Declared columns of the ``crm_data`` table: names, dlt data types and nullability.

Nested objects are flattened by dlt with a double underscore, so ``contact_info.address.city``
becomes the column ``contact_info__address__city``. Fields the CRM sends that are not declared
here are added as new columns with inferred types. A value whose type does not match its declared
column fails the load (dlt's ``data_type: freeze`` contract) instead of creating a variant column.
"""

from __future__ import annotations

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


def crm_columns(primary_key: str, updated_at_field: str) -> dict[str, TColumnSchema]:
    """Return the declared columns, with the primary key and merge order set from the contract."""
    columns = {name: dict(column) for name, column in CRM_COLUMNS.items()}
    for name, column in columns.items():
        column.pop("primary_key", None)
        column.pop("dedup_sort", None)
        if name == primary_key:
            column["primary_key"] = True
            column["nullable"] = False
        if name == updated_at_field:
            column["dedup_sort"] = "desc"
    columns.setdefault(primary_key, {"nullable": False, "primary_key": True})
    return columns  # type: ignore[return-value]
