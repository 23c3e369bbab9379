"""Envelope decoding: every wrongly typed field of a foreign or forged envelope is named."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from exospherehost.broker.codec import Envelope, MalformedEntry, decode, encode

GRAPH_STATE: dict[str, Any] = {"v": 1, "i": "s", "in": {}, "r": "run", "g": "g", "gv": 1, "n": "a"}


def _decode(m: dict[str, Any]) -> Envelope:
    return decode(b"1-0", {b"_exo": msgpack.packb(m)})


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"gv": "x"}, "graph version 'gv' must be an integer, got 'x'"),
        ({"gv": 1.5}, "graph version 'gv' must be an integer, got 1.5"),
        ({"r": 5}, "needs strings run 'r', graph 'g' and identifier 'n'"),
        ({"g": None}, "needs strings run 'r', graph 'g' and identifier 'n'"),
        ({"a": -1}, "attempt 'a' must be an integer >= 0, got -1"),
        ({"a": True}, "attempt 'a' must be an integer >= 0, got True"),
        ({"c": [1]}, "ctx 'c' must be a map"),
        ({"gr": {"u": 1}}, "groups 'gr' must be a map of strings"),
        ({"p": ["x"]}, "path 'p' must be a list of integers"),
        ({"u": [1]}, "unite 'u' must be a string"),
    ],
)
def test_wrongly_typed_fields_are_named(extra: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedEntry, match=reason.replace("(", r"\(").replace(")", r"\)")):
        _decode({**GRAPH_STATE, **extra})


def test_every_field_round_trips() -> None:
    env = Envelope(
        "s", {"x": 1}, "run", "g", 3, "a", {"k": {"f": 1}}, 2, False, {"u": "t"}, [0, 2], "t"
    )
    assert decode(b"1-0", {b"_exo": encode(env)}) == env
    graphless = Envelope("s", {"x": "1"}, attempt=1, foreign=True)
    assert decode(b"1-0", {b"_exo": encode(graphless)}) == graphless


def test_encode_successor_is_encode_of_the_same_envelope() -> None:
    # Settle planning encodes successors without an Envelope: the bytes must not differ
    # (the wire format), with and without ctx, groups and a fan-out path.
    from exospherehost.broker.codec import encode_successor

    cases = [
        ({}, {}, ()),
        ({"a": {"x": 1}}, {}, ()),
        ({"a": {"x": 1}}, {"u": "s1"}, (0, 3)),
        ({}, {"u": "s1"}, (2,)),
    ]
    for ctx, groups, path in cases:
        env = Envelope("s9", {"x": [1, "y"]}, "r1", "g", 3, "b", ctx, 0, False, groups, list(path))
        got = encode_successor("s9", {"x": [1, "y"]}, "r1", "g", 3, "b", ctx, groups, path)
        assert got == encode(env)
        assert decode(b"1-1", {b"_exo": got}) == env
