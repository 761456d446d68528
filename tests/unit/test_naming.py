import pytest

from notebook_kernels_mixer.errors import BadRequest
from notebook_kernels_mixer.resources.naming import (
    checked_id,
    checked_path,
    checked_resource_path,
    checked_text,
    prefixed,
    split_prefixed,
    valid_id,
)

KNOWN = ("local", "remote", "eg_1")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("local-python3", ("local", "python3")),
        ("remote-python3", ("remote", "python3")),
        ("remote-my-kernel", ("remote", "my-kernel")),
        ("eg_1-spark_python", ("eg_1", "spark_python")),
    ],
)
def test_split_prefixed(name: str, expected: tuple[str, str]) -> None:
    assert split_prefixed(name, KNOWN) == expected
    assert prefixed(*expected) == name


@pytest.mark.parametrize(
    "name", ["python3", "nope-python3", "local-", "-python3", "", 5, None, "local-../x", "local-a/b"]
)
def test_split_prefixed_rejects_with_400(name: object) -> None:
    with pytest.raises(BadRequest):
        split_prefixed(name, KNOWN)


@pytest.mark.parametrize(
    "value",
    ["..", ".", "a/b", "a\r\nX-Injected: 1", "", "%2F", "a b", "x" * 200, "abc\n", "\udcff", "ké"],
)
def test_checked_id_rejects_path_and_header_tricks(value: str) -> None:
    with pytest.raises(BadRequest):
        checked_id(value, "kernel")


def test_checked_id_accepts_uuid() -> None:
    kid = "5f62c0c4-d4ba-4dfb-8cd1-33eafb7f6938"
    assert checked_id(kid, "kernel") == kid


@pytest.mark.parametrize(
    "path", ["../kernel.json", "a/../../x", "/etc/passwd", "a//b", "./x", "a\\b", "x?y", "%2e%2e"]
)
def test_resource_path_cannot_climb(path: str) -> None:
    with pytest.raises(BadRequest):
        checked_resource_path(path)


def test_resource_path_keeps_subdirectories() -> None:
    assert checked_resource_path("logo-64x64.png") == "logo-64x64.png"
    assert checked_resource_path("static/index.js") == "static/index.js"


@pytest.mark.parametrize("value", ["\udcff.ipynb", "a" * 4097, 3, None])
def test_checked_text_refuses_what_the_state_cannot_keep(value: object) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_text(value, "session path")
    assert "session path" in refused.value.message and "\udcff" not in refused.value.message
    assert not valid_id(value)


def test_checked_text_accepts_unicode_paths() -> None:
    checked_text("données/ノート 😀.ipynb", "session path")
    checked_text("a" * 4096, "session path")


@pytest.mark.parametrize("value", ["a\x00.ipynb", "\x00", "\udcff.ipynb", 3])
def test_checked_path_refuses_nul_and_what_the_state_cannot_keep(value: object) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_path(value, "session path")
    assert "session path" in refused.value.message


def test_checked_path_accepts_control_characters_a_file_system_allows() -> None:
    checked_path("a\x0cb\tc 😀.ipynb", "session path")
