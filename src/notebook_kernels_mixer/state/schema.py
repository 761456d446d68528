"""How persisted state is declared: a table is its row type, a schema is its tables
plus the list of migrations that built the file.

A row type is a frozen dataclass whose fields are the table's columns, matched BY NAME
everywhere (rows are written with named parameters and read back as keyword
arguments), so fields may be reordered and a new one appended with a default. The
SQL that creates and changes tables is not derived from the dataclasses: it is the
list of migrations (:attr:`Schema.migrations`), because a released migration must
never change while the dataclass does. Migration ``n`` (1-based) brings a file from
version ``n - 1`` to ``n``; the file's version is how many have run, so a file written
by an older mixer is upgraded in place when it is opened
(:mod:`notebook_kernels_mixer.state.database`).

Every persisted value is a string (:func:`storable`); ids, names and paths come from
clients and backends, so they are checked before they reach the in-memory mirror.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MAX_VALUE_CHARS = 4096  # longest id, name or path kept (PATH_MAX on Linux)

#: One migration: a statement, or several run in the same transaction.
Migration = str | tuple[str, ...]
#: A row as written: column name -> value.
Values = dict[str, str]

RowT = TypeVar("RowT", bound="DataclassInstance")


def storable(value: object) -> bool:
    """A value the state file keeps: a string of at most :data:`MAX_VALUE_CHARS`
    characters that is Unicode text: no lone surrogate such as U+DCFF, which stdlib json
    decodes from the JSON escape ``\\udcff`` but which UTF-8 (and so SQLite) cannot hold."""
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Table(Generic[RowT]):
    """A table declared by its row type: columns are the dataclass's field names."""

    name: str
    row: type[RowT]
    key: str  # the field that is the table's primary key
    columns: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        columns = tuple(f.name for f in dataclasses.fields(self.row))
        object.__setattr__(self, "columns", columns)
        # Names go into SQL text: identifiers only (values always go as parameters).
        if not all(n.isidentifier() for n in (self.name, *columns)):
            raise ValueError(f"table {self.name!r}: names must be identifiers: {columns}")
        if self.key not in columns:
            raise ValueError(f"table {self.name}: key {self.key!r} is not a field of {self.row.__name__}")

    def values(self, row: RowT) -> Values:
        """``row``'s values by column; ValueError for one the file cannot hold."""
        values = {column: getattr(row, column) for column in self.columns}
        if not all(storable(v) for v in values.values()):
            raise ValueError(f"the state file keeps only strings of at most {MAX_VALUE_CHARS} "
                             "characters that are encodable as UTF-8")
        return values

    def key_of(self, row: RowT) -> str:
        key: str = getattr(row, self.key)
        return key

    def row_of(self, values: Mapping[str, Any]) -> RowT:
        return self.row(**values)

    @property
    def select_sql(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name}"

    @property
    def upsert_sql(self) -> str:
        marks = ", ".join(f":{c}" for c in self.columns)  # named: by column, never by position
        return f"INSERT OR REPLACE INTO {self.name} ({', '.join(self.columns)}) VALUES ({marks})"

    @property
    def delete_sql(self) -> str:
        return f"DELETE FROM {self.name} WHERE {self.key} = ?"


@dataclass(frozen=True)
class Schema:
    """The tables a state file holds and the migrations that build them."""

    tables: tuple[Table[Any], ...]
    migrations: tuple[Migration, ...]
    _by_row: dict[type, Table[Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.migrations:
            raise ValueError("a schema needs at least one migration (the one that creates it)")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names) or "schema_version" in names:
            raise ValueError(f"table names must be distinct and not schema_version: {names}")
        object.__setattr__(self, "_by_row", {t.row: t for t in self.tables})
        if len(self._by_row) != len(self.tables):
            raise ValueError("each table needs its own row type")

    @property
    def version(self) -> int:
        """The version of a file that every migration has run on."""
        return len(self.migrations)

    def statements(self, version: int) -> tuple[str, ...]:
        """What brings a file from ``version - 1`` to ``version``."""
        migration = self.migrations[version - 1]
        return (migration,) if isinstance(migration, str) else migration

    def table_of(self, row_type: type[RowT]) -> Table[RowT]:
        try:
            table: Table[RowT] = self._by_row[row_type]
        except KeyError:
            raise KeyError(f"{row_type.__name__} is not a row type of this schema") from None
        return table
