"""The documents agree with the code they describe: README's flag tables with the
parser (every flag, its default, Go original or the mixer's own), and
``examples/mixer.toml`` with the config loader's keys. A flag or key added without
its line here fails."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
import tomli_w

from notebook_kernels_mixer import cli
from notebook_kernels_mixer.config import LOOPBACK_HOSTS
from notebook_kernels_mixer.config_file import BACKEND_KEYS, MIXER_KEYS, TOP_KEYS, load_files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = ROOT / "examples" / "mixer.toml"

GO_TABLE = "The flags of the Go original, with its defaults:"
MIXER_TABLE = "The mixer's own flags:"


def table_after(marker: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table that follows ``marker`` in the README."""
    lines = README[README.index(marker) + len(marker):].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert rows[0] == ["flag", "default", "meaning"] and set(rows[1][0]) <= set("-:"), rows[:2]
    return rows[2:]


def flags_of(cell: str) -> list[str]:
    """``--state-file PATH`` → ``--state-file``; every flag a row names, aliases included."""
    return [code.split()[0] for code in re.findall(r"`([^`]+)`", cell) if code.startswith("--")]


def long_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--name`` → its action, for every flag but ``--help`` (single-dash Go spellings
    and aliases are the same action)."""
    return {o: a for a in parser._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"}


def go_original_options() -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    cli._original_flags(parser)
    return set(long_options(parser))


def expected_default(action: argparse.Action) -> str | None:
    """What the default column must say for ``action``; None: a dash (no default)."""
    if action.default in (None, [], argparse.SUPPRESS):
        return None
    if action.default is False:
        return "off"
    return str(action.default)


#: Flags whose parser default is None but which have one (computed at run time): what
#: the README's default column must name for them.
COMPUTED_DEFAULTS = {
    "--listen": list(LOOPBACK_HOSTS),
    "--state-file": ["mixer-state-PORT.sqlite", "runtime directory", "--port 0"],
}


@pytest.mark.parametrize(("marker", "go"), [(GO_TABLE, True), (MIXER_TABLE, False)])
def test_readme_flag_tables_list_every_flag_in_the_right_table(marker: str, go: bool) -> None:
    parser_options = set(long_options(cli.mixer_parser()))
    originals = go_original_options()
    expected = originals if go else parser_options - originals
    documented = [flag for row in table_after(marker) for flag in flags_of(row[0])]
    assert len(documented) == len(set(documented)), f"listed twice: {documented}"
    assert set(documented) == expected, (
        f"missing from the table: {sorted(expected - set(documented))}; "
        f"not a flag of this table: {sorted(set(documented) - expected)}"
    )


@pytest.mark.parametrize("marker", [GO_TABLE, MIXER_TABLE])
def test_readme_flag_defaults_are_the_parsers(marker: str) -> None:
    actions = long_options(cli.mixer_parser())
    for flag_cell, default_cell, meaning in table_after(marker):
        assert meaning, f"{flag_cell}: no meaning"
        for flag in flags_of(flag_cell):
            action = actions[flag]
            shown = default_cell.replace("`", "")
            if flag in COMPUTED_DEFAULTS:
                assert action.default is None
                for part in COMPUTED_DEFAULTS[flag]:
                    assert part in shown, f"{flag}: default column {default_cell!r} lacks {part!r}"
                continue
            want = expected_default(action)
            if want is None:
                assert default_cell == "–", f"{flag} has no default; the README says {default_cell!r}"
            else:
                # the value as the parser has it, perhaps followed by a gloss: "67108864 (64 MiB)"
                assert shown.split(" (")[0] == want, f"{flag}: README {default_cell!r}, parser {want!r}"


def documented_keys(text: str) -> dict[str, set[str]]:
    """Keys the example sets or shows commented out, by table (``mixer``, ``backends``)."""
    keys: dict[str, set[str]] = {"": set(), "mixer": set(), "backends": set()}
    table = ""
    for line in text.splitlines():
        header = re.match(r"^\[+([a-z_]+)\]+", line)
        if header:
            table = header.group(1)
            keys.setdefault(table, set())
            continue
        key = re.match(r"^#?\s*([a-z_]+)\s*=\s*(\"|'|\d|true\b|false\b|\[)", line)
        if key:
            keys[table].add(key.group(1))
    return keys


def test_the_example_config_names_every_key_and_no_other() -> None:
    keys = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    assert set(TOP_KEYS) == {"mixer", "backends"} and not keys[""], keys[""]
    assert keys["mixer"] == set(MIXER_KEYS), (
        f"[mixer] missing {sorted(set(MIXER_KEYS) - keys['mixer'])}, "
        f"unknown {sorted(keys['mixer'] - set(MIXER_KEYS))}"
    )
    assert keys["backends"] == set(BACKEND_KEYS), (
        f"[[backends]] missing {sorted(set(BACKEND_KEYS) - keys['backends'])}, "
        f"unknown {sorted(keys['backends'] - set(BACKEND_KEYS))}"
    )


def test_the_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # its kg token_file is ~/.config/mixer/kg.token
    token_file = tmp_path / ".config" / "mixer" / "kg.token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text("kg-token\n")
    settings = load_files([EXAMPLE], environ={"JUPYTER_TOKEN": "t1", "EG_TOKEN": "t2"})
    assert [fb.config.name for fb in settings.backends] == ["local", "remote", "kg", "cluster"]
    # and every commented-out [mixer] setting is valid as written
    mixer_lines = [line[1:].split("  #")[0].strip() for line in EXAMPLE.read_text().splitlines()
                   if re.match(r"^#\s*[a-z_]+\s*=", line)]
    commented = tomllib.loads("\n".join(mixer_lines))
    assert set(commented) <= set(MIXER_KEYS) | set(BACKEND_KEYS)
    mixer = {k: v for k, v in commented.items() if k in MIXER_KEYS and k != "token_env"}
    example = tmp_path / "mixer.toml"
    (tmp_path / "mixer.token").write_text("client-token\n")
    example.write_text(tomli_w.dumps({"mixer": mixer}))
    settings = load_files([example], environ={})
    assert settings.state_file == str(tmp_path / "mixer-state.sqlite")  # relative to the file
    assert settings.token == "client-token"


def test_the_readme_config_snippet_uses_real_keys() -> None:
    section = README[README.index("## Config file"):README.index("## Kernel Gateway and Enterprise Gateway")]
    snippet = section.split("```toml", 1)[1].split("```", 1)[0]
    keys = documented_keys(snippet)
    assert keys["backends"] and keys["backends"] <= set(BACKEND_KEYS), keys
