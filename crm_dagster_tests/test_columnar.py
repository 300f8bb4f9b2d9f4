"""Pages as Arrow tables: the same rows as dictionaries give, and a fallback that loses none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dlt
import pyarrow as pa
import pytest
from dlt.common.normalizers.naming.snake_case import NamingConvention

from crm_dagster.columnar import PagesToArrow, _rounded_decimal, arrow_pages_enabled
from crm_dagster.contract import CrmContract
from crm_dagster.sandbox import SandboxServer
from crm_dagster.schema import crm_columns
from crm_dagster_tests.conftest import (
    FULL_REFRESH,
    SENTINEL_KEY,
    failure_message,
    run_crm_asset,
    warehouse_rows,
)

RECORDS = 250
COLUMNS = crm_columns(None, "id", "updated_at")


@pytest.fixture
def crm() -> Iterator[SandboxServer]:
    with SandboxServer(records=RECORDS, api_key=SENTINEL_KEY, seed=11) as server:
        yield server


@pytest.fixture
def arrow_tables(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the row count of each Arrow table that PagesToArrow passes on to dlt."""
    rows: list[int] = []
    to_arrow = PagesToArrow._to_arrow

    def recording(self: PagesToArrow, values: dict[str, list[Any]]) -> Any:
        table = to_arrow(self, values)
        rows.append(table.num_rows)
        return table

    monkeypatch.setattr(PagesToArrow, "_to_arrow", recording)
    return rows


def use_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> None:
    """Point CRM_CONTRACT_FILE at a contract with ``settings``."""
    lines = [f"{name} = {value!r}" for name, value in settings.items()]
    path = tmp_path / "contract.toml"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("CRM_CONTRACT_FILE", str(path))


def table_columns() -> list[tuple[str, str, str]]:
    return warehouse_rows(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'crm' AND table_name = 'crm_data' ORDER BY column_name"
    )


def table_rows() -> list[tuple[Any, ...]]:
    return warehouse_rows("SELECT * EXCLUDE (_dlt_id, _dlt_load_id) FROM crm.crm_data ORDER BY id")


def record(index: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": index,
        "customer_id": f"CUST-{index:06d}",
        "contact_info": {"email": f"c{index}@example.com", "address": {"city": "Berlin"}},
        "annual_revenue": 1250.5,
        "is_active": True,
        "created_at": "2025-01-02T03:04:05Z",
        "updated_at": "2025-02-03T04:05:06Z",
    }
    base.update(changes)
    return base


def to_arrow_step(batch_records: int = 1_000) -> PagesToArrow:
    return PagesToArrow(COLUMNS, NamingConvention(), batch_records)


# Values where a conversion could differ: rounding to the column's 2 decimals, offsets and
# fractions of seconds, text outside ASCII, and empty or missing nested objects.
EDGE_VALUES = [
    {"id": 1, "annual_revenue": 1.005},
    {"id": 2, "annual_revenue": 2.675},
    {"id": 3, "annual_revenue": 12345678.999},
    {"id": 4, "annual_revenue": 0.1 + 0.2},
    {"id": 5, "annual_revenue": -0.005},
    {"id": 6, "annual_revenue": 7},
    {"id": 7, "created_at": "2025-01-02T03:04:05+02:00"},
    {"id": 8, "created_at": "2025-01-02T03:04:05.123456Z"},
    {"id": 9, "first_name": "Zoë 🚀 ß", "last_name": ""},
    {"id": 10, "contact_info": None},
    {"id": 11, "contact_info": {"email": "x@example.com", "address": None}},
    {"id": 12, "contact_info": {}},
]


def test_warehouse_matches_dictionary_pages(
    crm: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arrow_tables: list[int],
) -> None:
    crm.upsert(EDGE_VALUES)
    use_contract(tmp_path, monkeypatch, arrow_batch_records=0)
    run_crm_asset(crm.base_url)
    dict_columns, dict_rows = table_columns(), table_rows()
    assert arrow_tables == []

    monkeypatch.setenv("CRM_DUCKDB_PATH", str(tmp_path / "arrow.duckdb"))
    monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "arrow-dlt"))
    use_contract(tmp_path, monkeypatch, arrow_batch_records=100)
    run_crm_asset(crm.base_url)

    # 250 records in batches of 100: two full batches, then the rest when the pages end.
    assert arrow_tables == [100, 100, 50]
    assert table_columns() == dict_columns
    assert table_rows() == dict_rows
    assert warehouse_rows(
        "SELECT count(*), count(DISTINCT _dlt_id), count(_dlt_load_id) FROM crm.crm_data"
    ) == [(RECORDS, RECORDS, RECORDS)]


def test_undeclared_field_goes_through_dlt(
    crm: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arrow_tables: list[int],
) -> None:
    crm.upsert([{"id": 120, "loyalty_tier": "gold"}])
    use_contract(tmp_path, monkeypatch, arrow_batch_records=100)

    run_crm_asset(crm.base_url)

    # The page with offset 100 contains record 120 and reaches dlt as dictionaries.
    assert sum(arrow_tables) == RECORDS - 100
    assert warehouse_rows(
        "SELECT id, loyalty_tier FROM crm.crm_data WHERE loyalty_tier IS NOT NULL"
    ) == [(120, "gold")]
    assert warehouse_rows("SELECT count(*) FROM crm.crm_data") == [(RECORDS,)]


def test_dictionary_pages_round_decimals_like_duckdb(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record 120 sends its page as dictionaries, which dlt writes to parquet as well. The record
    # without an id goes to crm_data_rejected, also as dictionaries.
    crm.upsert(
        [
            {"id": 120, "loyalty_tier": "gold", "annual_revenue": 1.005},
            {"id": 121, "annual_revenue": 0.1 + 0.2},
            {"id": 122, "annual_revenue": "2.675"},
        ]
    )
    crm.set_faults(["null_id@200"])
    use_contract(tmp_path, monkeypatch, arrow_batch_records=100)

    run_crm_asset(crm.base_url)

    assert warehouse_rows(
        "SELECT id, annual_revenue FROM crm.crm_data WHERE id BETWEEN 120 AND 122 ORDER BY id"
    ) == [(120, Decimal("1.01")), (121, Decimal("0.30")), (122, Decimal("2.68"))]
    assert warehouse_rows("SELECT count(*) FROM crm.crm_data_rejected") == [(1,)]


def test_decimal_beyond_precision_names_record(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_contract(tmp_path, monkeypatch, arrow_batch_records=100)
    run_crm_asset(crm.base_url)
    rows_before = table_rows()
    crm.upsert([{"id": 42, "annual_revenue": 1e17, "updated_at": "2026-11-30T00:00:00Z"}])

    result = run_crm_asset(crm.base_url, raise_on_error=False, run_config=FULL_REFRESH)

    assert not result.success
    message = failure_message(result)
    assert "CRM record id=42 has a value in crm_data.annual_revenue" in message
    assert "decimal(18, 2)" in message
    assert "columns.annual_revenue.precision = 38" in message
    assert "1e+17" not in message
    assert table_rows() == rows_before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.005, Decimal("1.01")),
        (-0.005, Decimal("-0.01")),
        (0.1 + 0.2, Decimal("0.30")),
        (7, Decimal("7.00")),
        ("2.675", Decimal("2.68")),
        ("n/a", "n/a"),
        (1e30, 1e30),
    ],
)
def test_rounded_decimal(value: Any, expected: Any) -> None:
    assert _rounded_decimal(value, 2) == expected


def test_switching_to_arrow_keeps_the_table(
    crm: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_contract(tmp_path, monkeypatch, arrow_batch_records=0)
    run_crm_asset(crm.base_url)
    columns_before = table_columns()
    crm.upsert([{"id": 3, "lifecycle_stage": "churned", "updated_at": "2026-11-30T00:00:00Z"}])

    use_contract(tmp_path, monkeypatch, arrow_batch_records=100)
    run_crm_asset(crm.base_url, run_config=FULL_REFRESH)

    assert table_columns() == columns_before
    assert warehouse_rows("SELECT lifecycle_stage FROM crm.crm_data WHERE id = 3") == [("churned",)]
    # The full refresh merged every record again, so every row has the second load's id.
    assert warehouse_rows(
        "SELECT count(*), count(DISTINCT _dlt_id), count(DISTINCT _dlt_load_id) FROM crm.crm_data"
    ) == [(RECORDS, RECORDS, 1)]


def test_pages_held_until_batch_full() -> None:
    step = to_arrow_step(batch_records=3)

    assert step([record(1), record(2)]) is None
    table = step([record(3), record(4)])

    assert isinstance(table, pa.Table)
    assert table.column("id").to_pylist() == [1, 2, 3, 4]
    assert table.column("contact_info__address__city").to_pylist() == ["Berlin"] * 4
    assert table.column("first_name").null_count == 4
    assert str(table.schema.field("annual_revenue").type) == "decimal128(18, 2)"
    assert str(table.schema.field("updated_at").type) == "timestamp[us, tz=UTC]"
    assert step([]) is None


def test_pipe_ends_with_the_held_pages() -> None:
    pages = [[record(1), record(2)], [record(3)]]
    resource = dlt.resource(pages, name="crm_data")
    resource.add_step(to_arrow_step())

    items = list(resource)

    assert len(items) == 1
    assert items[0].column("id").to_pylist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        ([record(1, loyalty_tier="gold")], "undeclared field"),
        ([record(1, contact_info={"email": "a@example.com", "fax": "1"})], "undeclared nested"),
        ([record(1, contact_info="a@example.com")], "text where an object is declared"),
        ([record(1, tags=["a", "b"])], "list field"),
        (["not an object"], "not an object"),
        ([record(1), 7], "a number among objects"),
        ([{**record(1), "": "x"}], "empty field name"),
        ([{**record(1), " ": "x"}], "blank field name"),
    ],
)
def test_page_that_does_not_fit_passes_unchanged(page: list[Any], reason: str) -> None:
    step = to_arrow_step()
    assert step([record(9)]) is None

    assert step(page) is page, reason
    assert step([]).column("id").to_pylist() == [9]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"annual_revenue": "n/a"}, "text in a decimal column"),
        ({"id": "7"}, "text in a bigint column"),
        ({"updated_at": "last tuesday"}, "unparsable timestamp"),
        ({"updated_at": "2025-02-03T04:05:06"}, "timestamp without a zone offset"),
        ({"created_at": None}, "null in a non-nullable column"),
        ({"id": 2**63}, "integer beyond 64 bits"),
        ({"annual_revenue": 2.0**53 + 2}, "float beyond exact integers"),
    ],
)
def test_bad_value_batch_stays_dictionaries(changes: dict[str, Any], reason: str) -> None:
    step = to_arrow_step()
    bad = record(2, **changes)
    assert step([record(1)]) is None
    assert step([bad]) is None

    released = step([])

    assert released == [record(1), bad], reason
    assert step.dict_records == 2


def test_crm_field_names_map_to_declared_columns() -> None:
    step = to_arrow_step(batch_records=1)
    page = [{"ID": 1, "customerId": "CUST-1", "createdAt": "2025-01-02T03:04:05Z",
             "updatedAt": "2025-01-02T03:04:05+02:00"}]  # fmt: skip

    table = step(page)

    assert table.column("customer_id").to_pylist() == ["CUST-1"]
    assert table.column("updated_at").to_pylist()[0].isoformat() == "2025-01-02T01:04:05+00:00"


def test_rejected_records_pass_unchanged() -> None:
    step = to_arrow_step(batch_records=1)
    rejected = [{"customer_id": "CUST-1", "_rejected_reason": "id is missing"}]

    assert step(rejected, meta=object()) is rejected


@pytest.mark.parametrize(
    ("settings", "columns", "enabled"),
    [
        ({}, COLUMNS, True),
        ({"arrow_batch_records": 0}, COLUMNS, False),
        ({}, {}, False),
        ({}, {**COLUMNS, "raw": {"data_type": "json"}}, False),
    ],
)
def test_arrow_pages_enabled(settings: dict[str, Any], columns: Any, enabled: bool) -> None:
    assert arrow_pages_enabled(CrmContract(**settings), columns) is enabled


def test_default_load_uses_arrow(crm: SandboxServer, arrow_tables: list[int]) -> None:
    assert "CRM_CONTRACT_FILE" not in os.environ

    run_crm_asset(crm.base_url)

    assert sum(arrow_tables) == RECORDS
