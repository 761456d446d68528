"""One backend's kernels API as the mixer reads it (resources/backend_kernels.py): ids
that the mixer could neither route nor keep in its state file are not taken in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notebook_kernels_mixer import jsonutil
from notebook_kernels_mixer.app import STATE
from notebook_kernels_mixer.resources import backend_kernels
from notebook_kernels_mixer.resources.backend_kernels import listed_models
from notebook_kernels_mixer.resources.naming import valid_id
from tests.unit.inventory_fakes import stub

BAD_IDS = ["../evil", "k\n", "k" * 129, "ké", "\udcff"]


async def test_kernels_listed_with_ids_the_mixer_cannot_keep_are_left_out(
    fakes, mixer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(jsonutil, "loads", json.loads)  # decodes "\udcff" (orjson refuses it)
    local = await fakes("local")
    m = await mixer([("local", local)], state_file=str(tmp_path / "state.sqlite"))
    status, good = await m.call("POST", "/api/kernels", json={"name": "local-python3"})
    assert status == 201
    for bad in BAD_IDS:
        local.kernels[bad] = {"id": bad, "name": "python3"}
    for _ in range(3):
        status, listed = await m.call("GET", "/api/kernels")
        assert status == 200 and [k["id"] for k in listed] == [good["id"]], listed
    store = m.app[STATE]
    await store.flush()
    assert set(store.kernels) == {good["id"]} and store.status()["problem"] is None
    warned = [r.getMessage() for r in caplog.records if "without a valid id" in r.getMessage()]
    assert len(warned) == 1 and f"listed {len(BAD_IDS)} kernels" in warned[0], warned


async def test_a_kernel_started_with_an_id_the_mixer_cannot_keep_is_a_backend_error(
    fakes, mixer, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = await fakes("local")
    m = await mixer([("local", local)])
    monkeypatch.setattr(local, "_new_kernel", lambda name: {"id": "../evil", "name": name})
    status, err = await m.call("POST", "/api/kernels", json={"name": "local-python3"})
    assert status == 502 and "backend 'local'" in err["message"] and "valid id" in err["message"], err
    assert "../evil" not in m.app[STATE].kernels


def test_ids_a_backend_listed_before_are_not_matched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing's cost grows with its kernels: an id already found valid in the
    backend's previous listing is not checked again, only new ones (and invalid ones
    are still left out)."""
    checked: list[object] = []

    def counting(value: object) -> bool:
        checked.append(value)
        return valid_id(value)

    monkeypatch.setattr(backend_kernels, "valid_id", counting)
    backend = stub("counted")
    answer = [{"id": f"k{i}", "name": "python3"} for i in range(100)]
    assert listed_models(backend, answer, "kernels") == answer
    assert len(checked) == 100
    checked.clear()
    assert listed_models(backend, [dict(m) for m in answer], "kernels") == answer
    assert checked == []
    again = [*answer[:50], {"id": "new"}, {"id": "../evil"}, {"name": "no id"}]
    assert listed_models(backend, again, "kernels") == [*answer[:50], {"id": "new"}]
    assert checked == ["new", "../evil", None]
    checked.clear()
    assert listed_models(backend, again, "sessions") == [*answer[:50], {"id": "new"}]
    assert len(checked) == 53  # each listing of a backend has its own
