"""broker/codec.py behaviour the mutmut survivors showed unpinned (issue 16): plain-XADD
entries (README "Enqueue from any client"), the minimal envelope, every envelope field
round-tripping, the complete error messages a dead letter carries, and the readable
bounded fields of a bad entry."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from exospherehost.broker.codec import (
    Envelope,
    MalformedEntry,
    decode,
    encode,
    pack,
    packer,
    printable_fields,
    unpack,
)

GRAPH_STATE: dict[str, Any] = {"v": 1, "i": "s", "in": {}, "r": "run", "g": "g", "gv": 1, "n": "a"}


def _message(fields: dict[bytes, bytes]) -> str:
    with pytest.raises(MalformedEntry) as info:
        decode(b"1-0", fields)
    return str(info.value)


def _envelope(m: Any) -> dict[bytes, bytes]:
    return {b"_exo": msgpack.packb(m)}


def test_a_plain_entry_is_the_nodes_inputs_as_strings_under_its_entry_id() -> None:
    env = decode(b"1700000000000-3", {b"name": b"Alice", b"data": b'{"k":1}'})
    assert env == Envelope("1700000000000-3", {"name": "Alice", "data": '{"k":1}'}, foreign=True)


def test_an_entry_without_fields_is_malformed() -> None:
    assert _message({}) == "entry has no fields"


def test_a_plain_entry_that_is_not_utf8_names_the_field() -> None:
    assert _message({b"ok": b"x", b"bad": b"\xff"}) == "field 'bad' is not UTF-8 text"
    # A name that is not UTF-8 either is still shown, readably.
    assert _message({b"k\xff": b"v"}) == "field 'k\ufffd' is not UTF-8 text"


def test_an_envelope_entry_with_other_fields_names_them() -> None:
    fields = {**_envelope({"v": 1, "i": "s", "in": {}}), b"name": b"x", b"\xfe": b"y"}
    assert _message(fields) == "envelope entry has unexpected extra fields ['name', '\ufffd']"


def test_an_envelope_that_is_not_msgpack_or_not_a_map_is_malformed() -> None:
    assert _message({b"_exo": b"\xc1"}).startswith("field '_exo' is not valid msgpack (")
    assert _message(_envelope(5)) == "envelope must be a msgpack map, got int"
    assert _message(_envelope("abc")) == "envelope must be a msgpack map, got str"


def test_the_minimal_envelope_decodes_with_its_inputs() -> None:
    env = decode(b"9-9", _envelope({"v": 1, "i": "s", "in": {"x": [1, 2]}}))
    assert env == Envelope("s", {"x": [1, 2]})


def test_inputs_of_any_msgpack_type_survive_the_envelope() -> None:
    """README: the envelope "carries inputs of any msgpack type" (integer map keys too)."""
    inputs = {"m": {1: "one", 2: b"two"}, "f": 1.5, "n": None}
    assert decode(b"1-0", _envelope({"v": 1, "i": "s", "in": inputs})).inputs == inputs
    assert unpack(pack({3: {4: "x"}})) == {3: {4: "x"}}


@pytest.mark.parametrize(
    "env",
    [
        Envelope("s", {}, "run", "g", 0, "a"),  # graph version 0, nothing else set
        Envelope("s", {}, "run", "g", 2, "a", deliveries=3),
        Envelope("s", {"x": "1"}, foreign=True, deliveries=1, attempt=4),
        Envelope("s", {}, "run", "g", 1, "a", {"c": 1}, 0, False, {}, [], None, 0),
    ],
)
def test_every_envelope_round_trips(env: Envelope) -> None:
    assert decode(b"1-0", {b"_exo": encode(env)}) == env


def test_graph_fields_outside_a_graph_run_mean_nothing() -> None:
    """Without a run id `r` the state is not in a graph: `g`, `gv`, `n` are not taken."""
    env = decode(b"1-0", _envelope({"v": 1, "i": "s", "in": {}, "g": "x", "gv": 2, "n": "a"}))
    assert env == Envelope("s", {})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"i": ""}, "envelope has no state id (key 'i' must be a non-empty string)"),
        ({"in": [1]}, "envelope inputs (key 'in') must be a map"),
        ({"r": 5}, "envelope of a graph run needs strings run 'r', graph 'g' and identifier 'n'"),
        ({"gv": -1}, "envelope graph version 'gv' must be an integer, got -1"),
        ({"a": "1"}, "envelope attempt 'a' must be an integer >= 0, got '1'"),
        ({"d": -2}, "envelope deliveries 'd' must be an integer >= 0, got -2"),
        ({"c": 1}, "envelope ctx 'c' must be a map"),
        ({"gr": {"u": 1}}, "envelope groups 'gr' must be a map of strings"),
        ({"p": [-1]}, "envelope path 'p' must be a list of integers"),
        ({"u": 1}, "envelope unite 'u' must be a string"),
        ({"zz": 1, "q": 2}, "envelope has unknown keys 'q', 'zz'"),
        ({"v": 2}, "envelope version 2 is not supported (need 1)"),
    ],
)
def test_the_dead_letters_error_is_the_whole_reason(extra: dict[str, Any], message: str) -> None:
    assert _message(_envelope({**GRAPH_STATE, **extra})) == message


def test_a_value_msgpack_cannot_carry_is_a_type_error_saying_so() -> None:
    with pytest.raises(TypeError, match=r"^value is not msgpack-serialisable: "):
        pack({"x": object()})


def test_packer_packs_as_msgpack_does_in_every_thread() -> None:
    pack_with = packer(use_bin_type=False)
    value = {"k": [1, "x", b"y"]}
    want = msgpack.packb(value, use_bin_type=False)
    got = [pack_with(value), pack_with(value)]
    thread = threading.Thread(target=lambda: got.append(pack_with(value)))
    thread.start()
    thread.join()
    assert got == [want] * 3


def test_printable_fields_are_readable_and_bounded() -> None:
    fields = {b"k\xff": b"v\xfe", b"small": b"a" * 10, b"edge": b"b" * 11, b"big": b"c" * 12}
    assert printable_fields(fields, limit=11) == {
        "k\ufffd": "v\ufffd",
        "small": "a" * 10,
        "edge": "b" * 11,  # exactly the limit: still shown
        "big": "<12 bytes>",
    }
    default = printable_fields({b"a": b"x" * 4096, b"b": b"x" * 4097})
    assert default == {"a": "x" * 4096, "b": "<4097 bytes>"}
