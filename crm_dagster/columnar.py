"""Pages as Arrow tables: the fast path from the CRM's JSON to the warehouse.

dlt normalizes a list of dictionaries one record at a time in Python: it flattens nested
objects, checks each value against its column and parses every timestamp and decimal. For
100,000 records that took longer than fetching them (docs/benchmarks.md). An Arrow table skips
that work: dlt writes it to a parquet file as it is, and DuckDB reads the file in bulk.

:class:`PagesToArrow` turns a page into an Arrow table with one column per declared column, in
the declared types, when every record fits the declared columns exactly. A page that does not fit
goes on as a list of dictionaries, and dlt's own normalizer handles it as before. A field the
contract does not declare becomes a new column. A value of the wrong type fails the load with
the schema contract's error, and a list becomes a child table. The table in the warehouse has
the same columns either way, including dlt's ``_dlt_load_id`` and ``_dlt_id``
(:data:`ARROW_NORMALIZER_CONFIG`).

The fast path needs pyarrow. Without it, or when a declared column has a type that it does not
convert (such as ``json``, ``binary``, ``time`` or ``wei``), every page takes dlt's normal path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from itertools import repeat
from typing import Any

import dlt
from dlt.common.normalizers.naming import NamingConvention
from dlt.common.schema.typing import TColumnSchema
from dlt.extract.items import SupportsPipe
from dlt.extract.items_transform import BaseItemTransform, ItemTransform

from crm_dagster.contract import RESOURCE_NAME, CrmContract
from crm_dagster.errors import CrmResponseError

try:
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError:  # pragma: no cover - pyarrow is a dependency; this keeps the dict path.
    pa = None
    pc = None

# dlt adds its load id and row id to dictionaries by default, and to Arrow tables only when
# configured to. arrow_settings() applies these around each load, so rows from either path
# carry both columns.
ARROW_NORMALIZER_CONFIG: dict[str, Any] = {
    "normalize.parquet_normalizer.add_dlt_load_id": True,
    "normalize.parquet_normalizer.add_dlt_id": True,
}

# Records per Arrow table. dlt checks each Arrow table against the schema, which took about 9 ms
# per table in a profile, so pages go on in batches. A batch of 10,000 records is a few MB.
DEFAULT_BATCH_RECORDS = 10_000

# Digits of Arrow's 128-bit decimals.
MAX_DECIMAL_PRECISION = 38

# dlt's name for the separator of nested fields in flattened column names.
_NESTING_SEPARATOR = "__"


def arrow_settings() -> AbstractContextManager[None]:
    """Return a context in which dlt adds ``_dlt_load_id`` and ``_dlt_id`` to Arrow tables.

    Run each load of the ``crm`` source in it: without it, rows that arrive as Arrow tables
    lack both columns, and a merge into a table that has them fails.
    """
    return dlt.config.values(ARROW_NORMALIZER_CONFIG)


def arrow_pages_enabled(contract: CrmContract, columns: dict[str, TColumnSchema]) -> bool:
    """Return whether pages of ``crm_data`` can reach dlt as Arrow tables.

    That needs pyarrow, ``arrow_batch_records`` above 0, and declared columns whose types
    :class:`PagesToArrow` converts.
    """
    if pa is None or contract.arrow_batch_records == 0 or not columns:
        return False
    return all(_arrow_column(name, hints) is not None for name, hints in columns.items())


class _DoesNotFit(Exception):
    """A page that the declared columns do not describe exactly."""


@dataclass
class _Node:
    """One level of nesting in the records: its declared leaf columns and nested objects."""

    leaves: dict[str, str] = field(default_factory=dict)
    """Normalized field name -> column name."""
    children: dict[str, _Node] = field(default_factory=dict)
    """Normalized field name -> nested object."""
    raw_names: dict[str, str | None] = field(default_factory=dict)
    """Field name as the CRM sends it -> normalized field name, or None when undeclared."""


@dataclass(frozen=True)
class _Column:
    name: str
    arrow_type: Any
    accepts: tuple[Any, ...]
    """Arrow types that pyarrow may infer for the values and that cast to ``arrow_type``."""
    nullable: bool


def _arrow_column(name: str, hints: TColumnSchema) -> _Column | None:
    data_type = hints.get("data_type")
    nullable = hints.get("nullable", True) is not False
    null = pa.null()
    if data_type == "text":
        return _Column(name, pa.string(), (pa.string(), null), nullable)
    if data_type == "bigint":
        return _Column(name, pa.int64(), (pa.int64(), null), nullable)
    if data_type == "bool":
        return _Column(name, pa.bool_(), (pa.bool_(), null), nullable)
    if data_type == "double":
        return _Column(name, pa.float64(), (pa.float64(), pa.int64(), null), nullable)
    if data_type == "decimal":
        precision = hints.get("precision") or 38
        scale = hints.get("scale") or 9
        arrow_type = pa.decimal128(precision, scale)
        return _Column(name, arrow_type, (pa.float64(), pa.int64(), null), nullable)
    if data_type == "timestamp" and hints.get("timezone", True) is not False:
        arrow_type = pa.timestamp("us", tz="UTC")
        return _Column(name, arrow_type, (pa.string(), null), nullable)
    if data_type == "date":
        return _Column(name, pa.date32(), (pa.string(), null), nullable)
    return None


class PagesToArrow(ItemTransform[Any, dict[str, Any]]):
    """dlt pipe step that gathers the pages that fit the declared columns into Arrow tables.

    dlt checks each Arrow table against the schema, so one table per page of 100 records would
    cost more than the conversion saves. The step keeps the fitting pages back and passes them
    on as one table when ``batch_records`` is reached, and when the pages end. A page that does
    not fit passes on at once, as the list of dictionaries it is.

    Args:
        columns: the column hints of ``crm_data``.
        naming: dlt's naming convention, which maps the CRM's field names to column names.
        batch_records: records per Arrow table.
        primary_key: column that identifies a record, named in errors.
    """

    # After dlt's incremental step (1), which reads the cursor from the dictionaries, and after
    # add_limit (1.1); before a fork (2).
    placement_affinity = 1.5

    def __init__(
        self,
        columns: dict[str, TColumnSchema],
        naming: NamingConvention,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        primary_key: str = "id",
    ) -> None:
        BaseItemTransform.__init__(self)
        self.primary_key = primary_key
        self.naming = naming
        self.batch_records = batch_records

        # One Arrow column per declared column, and the nesting that leads to each.
        self.columns: list[_Column] = []
        self.root = _Node()
        for name, hints in columns.items():
            column = _arrow_column(name, hints)
            if column is None:
                raise ValueError(
                    f"column {name!r} has a type that Arrow pages do not convert: "
                    f"{hints.get('data_type')!r}. Check arrow_pages_enabled() first."
                )
            self.columns.append(column)
            *parents, leaf = name.split(_NESTING_SEPARATOR)
            node = self.root
            for parent in parents:
                node = node.children.setdefault(parent, _Node())
            node.leaves[leaf] = name

        self._decimal_types = {
            column.name: column.arrow_type
            for column in self.columns
            if pa.types.is_decimal(column.arrow_type)
        }
        self.arrow_schema = pa.schema(
            [pa.field(c.name, c.arrow_type, c.nullable) for c in self.columns]
        )

        self.arrow_records = 0
        self.dict_records = 0
        self._reset()

    def bind(self, pipe: SupportsPipe) -> PagesToArrow:
        """Make the pipe end with an empty page, so the last held pages are passed on."""
        self._reset()
        if isinstance(pipe.gen, Iterator):
            pipe.replace_gen(_end_with_empty_page(pipe.gen))
        return self

    def __call__(self, item: Any, meta: Any = None) -> Any:
        """Hold a fitting page back, or return what should go on to dlt now.

        Returns:
            None while pages are held back. An Arrow table of the held pages when
            ``batch_records`` is reached or a page is empty. A page that does not fit, as
            dictionaries.
        """
        if not isinstance(item, list):
            return item
        if meta is not None:
            # Records for another table, such as crm_data_rejected, which has the same columns.
            return self._round_decimals(item)
        if not item:
            return self._release()
        try:
            values = self._collect(self.root, item)
        except _DoesNotFit:
            self.dict_records += len(item)
            return self._round_decimals(item)

        self._pages.append(item)
        self._held_records += len(item)
        for name, column_values in values.items():
            self._values[name].extend(column_values)
        if self._held_records >= self.batch_records:
            return self._release()
        return None

    def _reset(self) -> None:
        self._pages: list[list[Any]] = []
        self._held_records = 0
        self._values: dict[str, list[Any]] = {column.name: [] for column in self.columns}

    def _release(self) -> Any:
        if not self._pages:
            return None
        pages, values, count = self._pages, self._values, self._held_records
        self._reset()
        try:
            table = self._to_arrow(values)
        except (_DoesNotFit, pa.ArrowException, OverflowError):
            # A value does not fit its column. dlt's normalizer checks each record and names it.
            self.dict_records += count
            return self._round_decimals([record for page in pages for record in page])
        self.arrow_records += count
        return table

    def _round_decimals(self, records: list[Any]) -> list[Any]:
        """Round the decimal values of records that go on as dictionaries to their column's scale.

        dlt writes these records to parquet too, and its parquet writer rejects a value with more
        decimal places than the column has, such as 0.30000000000000004 for a decimal with 2.
        DuckDB rounds such values half away from zero when it reads JSON lines, so this rounds
        the same way, and the table gets the same value from either path. Values that are not
        numbers stay as they are, for dlt's schema contract to report.
        """
        if self._decimal_types:
            for record in records:
                if type(record) is dict:
                    self._round_in(self.root, record, record)
        return records

    def _round_in(self, node: _Node, obj: dict[str, Any], record: dict[str, Any]) -> None:
        """Round the decimal values of ``obj``, at the level of ``node`` in ``record``.

        Raises:
            CrmResponseError: a value has more digits before the decimal point than its column.
        """
        for raw, value in obj.items():
            normalized = self._normalized(node, raw)
            if normalized is None:
                continue
            if normalized in node.children:
                if type(value) is dict:
                    self._round_in(node.children[normalized], value, record)
                continue
            column = node.leaves[normalized]
            decimal_type = self._decimal_types.get(column)
            if decimal_type is None or type(value) not in (float, int, str):
                continue
            rounded = _rounded_decimal(value, decimal_type.scale)
            integer_digits = decimal_type.precision - decimal_type.scale
            if isinstance(rounded, Decimal) and rounded and rounded.adjusted() >= integer_digits:
                raise self._too_many_digits(record, column, decimal_type)
            obj[raw] = rounded

    def _too_many_digits(
        self, record: dict[str, Any], column: str, decimal_type: Any
    ) -> CrmResponseError:
        # The message names the record and the column, never the value, as dlt's schema errors.
        key = next(
            (
                value
                for raw, value in record.items()
                if self._normalized(self.root, raw) == self.primary_key
            ),
            None,
        )
        record_name = f"{self.primary_key}={key!r}" if key is not None else "(no primary key)"
        integer_digits = decimal_type.precision - decimal_type.scale
        return CrmResponseError(
            f"CRM record {record_name} has a value in {RESOURCE_NAME}.{column} with more than "
            f"{integer_digits} digits before the decimal point, which does not fit the column "
            f"of type decimal({decimal_type.precision}, {decimal_type.scale}). The load stopped "
            f"before writing and {RESOURCE_NAME} is unchanged. Fix the value in the CRM, or "
            f"declare the column with a larger precision in the contract's columns (for example "
            f"columns.{column}.precision = 38), then rerun."
        )

    def _to_arrow(self, values: dict[str, list[Any]]) -> Any:
        arrays = []
        for column in self.columns:
            array = pa.array(values[column.name])
            if array.type not in column.accepts:
                raise _DoesNotFit(column.name)
            if not column.nullable and array.null_count:
                raise _DoesNotFit(column.name)
            if pa.types.is_decimal(column.arrow_type) and array.type == pa.float64():
                arrays.append(_float_to_decimal(array, column.arrow_type))
            else:
                arrays.append(array.cast(column.arrow_type))
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def _collect(self, node: _Node, objects: list[Any]) -> dict[str, list[Any]]:
        """Return the column values of ``objects`` for the leaf columns at and below ``node``.

        Raises:
            _DoesNotFit: an object is not a dictionary, or has a field that is not declared at
                this level.
        """
        if not all(type(obj) is dict for obj in objects if obj is not None):
            raise _DoesNotFit(node)
        present = set().union(*(obj for obj in objects if obj is not None))
        raw_for: dict[str, str] = {}
        for raw in present:
            normalized = self._normalized(node, raw)
            if normalized is None or normalized in raw_for:
                raise _DoesNotFit(raw)
            raw_for[normalized] = raw

        values: dict[str, list[Any]] = {}
        all_objects = None not in objects
        for normalized, column in node.leaves.items():
            raw = raw_for.get(normalized)
            if raw is None:
                values[column] = [None] * len(objects)
            elif all_objects:
                # map() with dict.get runs in C: the faster form where no object is missing.
                values[column] = list(map(dict.get, objects, repeat(raw)))
            else:
                values[column] = [obj.get(raw) if obj is not None else None for obj in objects]
        for normalized, child in node.children.items():
            raw = raw_for.get(normalized)
            nested = [
                obj.get(raw) if obj is not None and raw is not None else None for obj in objects
            ]
            values.update(self._collect(child, nested))
        return values

    def _normalized(self, node: _Node, raw: str) -> str | None:
        try:
            return node.raw_names[raw]
        except KeyError:
            pass
        normalized: str | None
        try:
            normalized = self.naming.normalize_identifier(raw)
        except ValueError:
            # An empty or blank field name: dlt's normalizer decides what to do with it.
            normalized = None
        if normalized not in node.leaves and normalized not in node.children:
            normalized = None
        node.raw_names[raw] = normalized
        return normalized


def _rounded_decimal(value: float | int | str, scale: int) -> Any:
    """Return ``value`` as a Decimal rounded half away from zero, or unchanged if not a number."""
    try:
        exact = Decimal(repr(value) if type(value) is float else value)
        if not exact.is_finite():
            return value
        return exact.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        # Not a number, or more digits than Python's decimal context: dlt reports it.
        return value


def _float_to_decimal(array: Any, decimal_type: Any) -> Any:
    """Convert JSON numbers parsed as floats to ``decimal_type`` as dlt's own path does.

    dlt writes the number's shortest text, such as ``1.005``, and DuckDB rounds that text half
    away from zero to the column's scale: 1.01. Casting the float itself would round its binary
    value, 1.00499999..., to 1.00. This goes through the same text instead.

    Raises:
        _DoesNotFit: a value is beyond 2**53, where floats no longer represent every integer.
        pyarrow.ArrowInvalid: a value has more digits than the conversion keeps.
    """
    largest = pc.max(pc.abs(array)).as_py()
    if largest is not None and largest >= 2**53:
        raise _DoesNotFit(array)
    integer_digits = decimal_type.precision - decimal_type.scale
    # A float's shortest text has at most 17 significant digits, so 18 more places than the
    # scale hold every value down to a hundredth of the column's smallest step.
    exact_scale = min(MAX_DECIMAL_PRECISION - integer_digits, decimal_type.scale + 18)
    exact = array.cast(pa.string()).cast(pa.decimal128(MAX_DECIMAL_PRECISION, exact_scale))
    rounded = pc.round(exact, ndigits=decimal_type.scale, round_mode="half_towards_infinity")
    return rounded.cast(decimal_type)


def _end_with_empty_page(pages: Iterator[Any]) -> Iterator[Any]:
    yield from pages
    yield []
