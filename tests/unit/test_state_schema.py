"""Persisted state declared once: a table is its row type (columns are its fields, by
name), and adding a field is one field with a default plus one migration line; a file
written with the old schema is upgraded when it is opened."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from notebook_kernels_mixer.state import Schema, StateError, Store, Table


@dataclass(frozen=True)
class NoteV1:
    id: str
    text: str


V1 = Schema(
    tables=(Table("notes", NoteV1, key="id"),),
    migrations=("CREATE TABLE notes (id TEXT PRIMARY KEY, text TEXT NOT NULL)",),
)


@dataclass(frozen=True)
class Note:
    """NoteV1 and one more field. Columns are matched by name, so the fields may come
    in another order than the file's columns."""

    text: str
    id: str
    author: str = ""


V2 = Schema(
    tables=(Table("notes", Note, key="id"),),
    migrations=(*V1.migrations, "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT ''"),
)


def on_disk(path: Path) -> tuple[int, list[tuple[str, ...]]]:
    """The file's schema version and its notes, read without the store."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
        columns = [r[1] for r in conn.execute("PRAGMA table_info(notes)")]
        rows = conn.execute(f"SELECT {', '.join(columns)} FROM notes ORDER BY id").fetchall()
        return version, [columns, *rows]
    finally:
        conn.close()


async def test_a_field_added_to_a_row_type_upgrades_a_file_of_the_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    old = await Store.open(str(path), V1)
    old.put(NoteV1(id="n1", text="written by the old mixer"))
    old.put(NoteV1(id="n2", text="dropped by the new one"))
    await old.close()
    assert on_disk(path) == (1, [["id", "text"], ("n1", "written by the old mixer"),
                                 ("n2", "dropped by the new one")])

    new = await Store.open(str(path), V2)
    try:
        assert dict(new.rows(Note)) == {  # the old rows, with the new field's default
            "n1": Note(id="n1", text="written by the old mixer", author=""),
            "n2": Note(id="n2", text="dropped by the new one", author=""),
        }
        new.put(Note(id="n3", text="written by the new mixer", author="ada"))
        new.drop(Note, "n2")
        await new.flush()
    finally:
        await new.close()
    assert on_disk(path) == (2, [["id", "text", "author"], ("n1", "written by the old mixer", ""),
                                 ("n3", "written by the new mixer", "ada")])

    again = await Store.open(str(path), V2)  # the upgraded file reads back as it was left
    try:
        assert dict(again.rows(Note)) == {
            "n1": Note(id="n1", text="written by the old mixer"),
            "n3": Note(id="n3", text="written by the new mixer", author="ada"),
        }
    finally:
        await again.close()


async def test_a_field_without_its_migration_line_is_refused_and_the_file_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    old = await Store.open(str(path), V1)
    old.put(NoteV1(id="n1", text="kept"))
    await old.close()
    forgot = Schema(tables=V2.tables, migrations=(*V1.migrations, "CREATE INDEX by_text ON notes (text)"))
    with pytest.raises(StateError, match=r"migration 2 leaves table notes without .*'author'"):
        await Store.open(str(path), forgot)
    assert not [n for n in os.listdir(tmp_path) if ".corrupt-" in n]  # the mixer's bug, not the file's
    assert on_disk(path) == (1, [["id", "text"], ("n1", "kept")])


async def test_a_put_of_an_unchanged_row_writes_nothing_and_a_bad_value_changes_nothing(
    tmp_path: Path,
) -> None:
    store = await Store.open(str(tmp_path / "s.sqlite"), V2)
    try:
        store.put(Note(id="n1", text="t"))
        await store.flush()
        store.put(Note(id="n1", text="t"))
        store.drop(Note, "never-there")
        assert store.unflushed == 0
        with pytest.raises(ValueError, match="UTF-8"):
            store.put(Note(id="n1", text="\udcff"))
        assert dict(store.rows(Note)) == {"n1": Note(id="n1", text="t")} and store.unflushed == 0
    finally:
        await store.close()


def test_a_table_is_declared_by_its_row_type() -> None:
    table = Table("notes", Note, key="id")
    assert table.columns == ("text", "id", "author")
    assert table.values(Note(id="n1", text="t")) == {"id": "n1", "text": "t", "author": ""}
    assert table.row_of({"author": "a", "id": "n1", "text": "t"}) == Note(id="n1", text="t", author="a")
    assert ":id" in table.upsert_sql and ":author" in table.upsert_sql  # by name, not by position
    with pytest.raises(ValueError, match="not a field"):
        Table("notes", Note, key="note_id")
    with pytest.raises(ValueError, match="identifiers"):
        Table("notes; DROP TABLE kept", Note, key="id")
    with pytest.raises(ValueError, match="distinct"):
        Schema(tables=(V1.tables[0], Table("notes", Note, key="id")), migrations=V2.migrations)
    with pytest.raises(ValueError, match="at least one migration"):
        Schema(tables=V1.tables, migrations=())
    with pytest.raises(KeyError, match="Note is not a row type"):
        V1.table_of(Note)
