"""What runs inside the kernels during a carry (``carry/kernel_code.py``), on plain dicts
standing in for IPython's ``user_ns`` and ``user_ns_hidden``."""

from __future__ import annotations

import importlib.util
import json
import os.path as osp
import pickle
import socket

import pytest

from notebook_kernels_mixer.carry import kernel_code
from notebook_kernels_mixer.carry.kernel_code import CarryError, CarryReport, Sink, Source, user_names

HAS_CLOUDPICKLE = importlib.util.find_spec("cloudpickle") is not None


def carry(user_ns: dict, *, serializer: str = "pickle", protocol: int = 5, cap: int = 1 << 30,
          chunk: int = 1 << 20, hidden: dict | None = None) -> tuple[dict, Source, dict, dict]:
    """Source → chunks → Sink, in one process: (target namespace, source, restored, failed)."""
    source = Source(user_ns, hidden or {}, serializer, protocol, cap, chunk)
    manifest = json.loads(json.dumps(source.manifest()))  # as it travels
    target: dict = {}
    sink = Sink(target, manifest["values"])
    restored, failed = sink.import_modules(manifest["modules"])
    for seq in range(manifest["chunks"]):
        done, bad = sink.feed([source.pull(seq)])
        restored += done
        failed.update(bad)
    assert sink.complete
    return target, source, {n: True for n in restored}, failed


def test_user_names_leave_ipython_names_underscores_and_unchanged_hidden_ones_behind() -> None:
    marker = object()
    user_ns = {
        "In": [], "Out": {}, "exit": 1, "quit": 2, "get_ipython": 3, "_": 4, "__": 5, "_i1": "x",
        "_oh": {}, "_private": 6, "startup": marker, "rebound": 7, "mine": 8,
    }  # fmt: skip
    hidden = {"startup": marker, "rebound": "what IPython put there"}
    assert user_names(user_ns, hidden) == ["rebound", "mine"]


def test_values_modules_and_containers_arrive_equal_and_modules_by_name() -> None:
    user_ns = {
        "n": 42, "s": "héllo", "nested": {"a": [1, (2, 3), {4, 5}], "b": None},
        "raw": b"\x00\xff" * 5000, "buf": bytearray(b"abc") * 1000, "osp": osp, "js": json,
    }  # fmt: skip
    target, source, restored, failed = carry(user_ns, chunk=777)
    assert failed == {}
    assert set(restored) == set(user_ns)
    assert {k: target[k] for k in ("n", "s", "nested", "raw", "buf")} == {
        k: user_ns[k] for k in ("n", "s", "nested", "raw", "buf")
    }
    assert target["osp"] is osp and target["js"] is json
    assert source.modules == {"osp": osp.__name__, "js": "json"}


class Blob:
    """Pickled as numpy arrays are: its memory as a protocol-5 out-of-band buffer."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            return Blob, (pickle.PickleBuffer(self.data),)
        return Blob, (bytearray(self.data),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and bytes(self.data) == bytes(other.data)


def test_an_out_of_band_buffer_travels_from_the_values_own_memory() -> None:
    data = bytearray(b"z") * 10_000
    source = Source({"blob": Blob(data)}, {}, "pickle", 5, 1 << 30, 1 << 20)
    (entry,) = source.manifest()["values"]
    assert len(entry["parts"]) == 2 and entry["parts"][1] == 10_000  # pickle, then the buffer
    # the second part is a view of ``data`` itself, not a copy
    data[-1] = ord("!")
    assert bytes(source.values[0][2][1][-1:]) == b"!"
    target, _, _, failed = carry({"blob": Blob(bytearray(b"y") * 5000)}, chunk=999)
    assert failed == {} and target["blob"] == Blob(bytearray(b"y") * 5000)


def test_protocol_4_sends_everything_in_band() -> None:
    target, source, _, failed = carry({"data": Blob(bytearray(b"q") * 100)}, protocol=4, chunk=10)
    assert failed == {} and target["data"] == Blob(bytearray(b"q") * 100)
    assert len(source.manifest()["values"][0]["parts"]) == 1


def test_what_cannot_be_serialized_is_skipped_by_name_with_the_reason() -> None:
    sock = socket.socket()
    try:
        target, source, _, _ = carry({"gen": (i for i in range(3)), "sock": sock, "ok": 1})
    finally:
        sock.close()
    assert set(source.skipped) == {"gen", "sock"}
    assert source.skipped["gen"].startswith("cannot be serialized (pickle): TypeError")
    assert target == {"ok": 1}


def test_over_the_cap_the_largest_values_stay_behind_until_the_rest_fits() -> None:
    user_ns = {"huge": b"h" * 5000, "a": b"a" * 600, "b": b"b" * 500, "c": 1}
    target, source, _, _ = carry(user_ns, cap=1000)
    assert sorted(target) == ["b", "c"]
    assert set(source.skipped) == {"huge", "a"}
    assert all(why.startswith("over the size cap") for why in source.skipped.values())
    assert source.total <= 1000


def test_a_value_known_to_be_over_the_cap_is_not_serialized() -> None:
    class Big(bytes):
        def __reduce_ex__(self, protocol):  # would be called by pickle
            raise AssertionError("serialized although its size was known")

    _, source, _, _ = carry({"big": Big(b"x" * 2000)}, cap=1000)
    assert source.skipped["big"].startswith("over the size cap")


def _refuse() -> None:
    raise ValueError("not here")


class Fragile:
    """Serializes, but cannot be restored."""

    def __reduce__(self):
        return _refuse, ()


def test_a_value_that_cannot_be_restored_is_reported_and_the_rest_arrives() -> None:
    target, _, restored, failed = carry({"obj": Fragile(), "after": 2})
    assert failed == {"obj": "cannot be restored here: ValueError: not here"}
    assert target == {"after": 2} and set(restored) == {"after"}


def test_a_module_the_target_cannot_import_is_reported() -> None:
    sink = Sink({}, [])
    restored, failed = sink.import_modules({"np": "no_such_module_for_carry", "js": "json"})
    assert restored == ["js"]
    assert failed["np"].startswith("module 'no_such_module_for_carry' cannot be imported here")


@pytest.mark.skipif(not HAS_CLOUDPICKLE, reason="cloudpickle is not installed")
def test_a_notebook_function_sees_the_target_notebooks_globals() -> None:
    namespace: dict = {"__name__": "__main__", "k": 10}
    exec("def f(x):\n    return x + k\n", namespace)  # a function "defined in the notebook"
    user_ns = {"f": namespace["f"], "k": 10}
    target, _, _, failed = carry(user_ns, serializer="cloudpickle")
    assert failed == {} and target["f"](1) == 11
    target["k"] = 20
    assert target["f"](1) == 21
    assert target["f"].__globals__ is target


@pytest.mark.parametrize("chunk", [1, 3, 64, 4096])
def test_any_chunk_size_rebuilds_the_same_values(chunk: int) -> None:
    user_ns = {"a": list(range(50)), "b": Blob(bytearray(range(200))), "c": "", "d": Blob(bytearray())}
    target, _, _, failed = carry(user_ns, chunk=chunk)
    assert failed == {} and target == user_ns


def test_pulls_must_come_in_order_and_not_past_the_end() -> None:
    source = Source({"a": b"x" * 100}, {}, "pickle", 5, 1 << 30, 64)
    with pytest.raises(CarryError, match="out of order"):
        source.pull(1)
    source.pull(0)
    source.pull(1)
    with pytest.raises(CarryError, match="past the last chunk"):
        source.pull(2)


def test_a_sink_refuses_more_bytes_than_announced_and_a_bad_manifest() -> None:
    payload = pickle.dumps(1)
    sink = Sink({}, [{"name": "a", "parts": [len(payload)]}])
    sink.feed([payload])
    with pytest.raises(CarryError, match="more bytes"):
        sink.feed([b"extra"])
    with pytest.raises(CarryError, match="invalid manifest entry"):
        Sink({}, [{"name": "a", "parts": [-1]}])


def test_the_report_object_reads_well() -> None:
    report = CarryReport({
        "outcome": "partial", "reason": None, "bytes": 3 * 1024 * 1024, "seconds": 0.5,
        "serializer": "cloudpickle", "source": "local", "target": "remote",
        "carried": [{"name": "big", "type": "bytes", "size": 3 * 1024 * 1024},
                    {"name": "np", "type": "module", "size": 0, "module": "numpy"}],
        "skipped": {"gen": "cannot be serialized (cloudpickle): TypeError: no"},
    })  # fmt: skip
    text = repr(report)
    assert text.splitlines()[0] == ("Variables carried from local to remote: partial, 2 carried, 1 skipped, "
                                    "3.0 MiB in 0.50 s (cloudpickle)")
    assert "    big (bytes, 3.0 MiB)" in text and "    np (module numpy, 0 bytes)" in text
    assert "    gen: cannot be serialized (cloudpickle): TypeError: no" in text
    assert report.carried["big"] == ("bytes", 3 * 1024 * 1024)


def test_the_report_variable_is_the_one_the_engine_names() -> None:
    from notebook_kernels_mixer.carry import REPORT_VARIABLE

    assert kernel_code.REPORT_VARIABLE == REPORT_VARIABLE == "_mixer_carry"
