"""Promises of the wire protocol (README "Wire protocol") on real Redis: safe names,
checked envelopes, capped output streams (issue 16). Each test fails with the one-line
bug its docstring names."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.asyncio import Redis

from exospherehost import GraphNodeModel, Runtime, StateManager
from tests.integration.apps.nodes import SampleNode
from tests.integration.helpers import running
from tests.integration.promises_support import envelope, until

pytestmark = pytest.mark.redis

BAD_NAMES = ["a:b", "a{b", "a}b", "a b", "a/b", "a*b", "ä", "", "x" * 201, "a\nb"]
GOOD_NAMES = ["a", "A-Z_a.z-09", "x" * 200]
ALPHABET = "A-Z a-z 0-9 _ . -"


@pytest.mark.parametrize("bad", BAD_NAMES)
async def test_names_outside_the_key_alphabet_are_refused(bad: str, redis_url: str) -> None:
    """Namespace, node and graph names go into key names: only `A-Z a-z 0-9 _ . -`
    (no ':' which separates key parts, no braces which would break the hash tag).
    Bug: ':' allowed."""

    def naming(kind: str) -> str:  # the error names what is wrong, the value and the rule
        return f"{kind} {re.escape(repr(bad))} is not valid: use .*{re.escape(ALPHABET)}"

    with pytest.raises(ValueError, match=naming("namespace")):
        StateManager(bad, redis_url=redis_url)
    with pytest.raises(ValueError, match=naming("namespace")):
        Runtime(namespace=bad, name="p", nodes=[SampleNode], redis_url=redis_url)
    with pytest.raises(ValueError, match=naming("name")):
        Runtime(namespace="ok", name=bad, nodes=[SampleNode], redis_url=redis_url)
    async with StateManager("ok", redis_url=redis_url) as sm:
        with pytest.raises(ValueError, match=naming("node name")):
            await sm.enqueue(bad, {"name": "x", "data": {}})
        with pytest.raises(ValueError, match=naming("graph name")):
            await sm.upsert_graph(
                bad,
                [GraphNodeModel(node_name="SampleNode", namespace="ok", identifier="a", inputs={})],
                secrets={},
            )


@pytest.mark.parametrize("good", GOOD_NAMES)
def test_names_inside_the_key_alphabet_are_accepted(good: str, redis_url: str) -> None:
    StateManager(good, redis_url=redis_url)
    Runtime(namespace=good, name=good, nodes=[SampleNode], redis_url=redis_url)


VALID_INPUTS = {"name": "n", "data": {}}
# (envelope fields, what the dead letter's error must name). Three-key envelopes take
# the decoder's fast path; the checks must hold there too.
BAD_ENVELOPES: dict[str, tuple[dict[str, Any], str]] = {
    "fast-id-int": ({"v": 1, "i": 123, "in": VALID_INPUTS}, "'i'"),
    "fast-id-empty": ({"v": 1, "i": "", "in": VALID_INPUTS}, "'i'"),
    "fast-inputs-list": ({"v": 1, "i": "s1", "in": [1, 2]}, "'in'"),
    "fast-inputs-str": ({"v": 1, "i": "s1", "in": "name=n"}, "'in'"),
    "version-2": ({"v": 2, "i": "s1", "in": VALID_INPUTS}, "version"),
    "version-missing": ({"i": "s1", "in": VALID_INPUTS, "a": 0}, "version"),
    "version-str": ({"v": "1", "i": "s1", "in": VALID_INPUTS}, "version"),
    "attempt-negative": ({"v": 1, "i": "s1", "in": VALID_INPUTS, "a": -1}, "'a'"),
    "run-id-int": ({"v": 1, "i": "s1", "in": VALID_INPUTS, "r": 5, "g": "g", "n": "x"}, "'r'"),
}


async def _dead_letters_of(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, entries: list[dict[str, bytes]]
) -> list[str]:
    """XADD `entries` and a good state after them; return each entry's dead-letter error
    (in entry order) once the good one has its result: the rest of the batch goes on."""
    rt = Runtime(namespace=namespace, name="p", nodes=[SampleNode], redis_url=redis_url)
    async with running(rt):
        for fields in entries:
            await redis.xadd(sm.keys.queue("SampleNode"), fields)  # type: ignore[arg-type]
        good = await sm.enqueue("SampleNode", VALID_INPUTS)
        await sm.wait_for_states("SampleNode", [good], timeout=15)

        async def all_settled() -> bool:
            return await sm.pending("SampleNode") == {"length": 0, "pending": 0, "delayed": 0}

        await until(all_settled, "every entry settled (dead-lettered or run)")
        dead = {d.original[b"_exo"]: d.error for d in await sm.dead_letters()}
        outputs = await sm.outputs("SampleNode")
    errors = [dead.get(fields["_exo"], "<not dead-lettered>") for fields in entries]
    assert [r.state_id for r in outputs] == [good], ("only the good state may run", errors)
    return errors


async def test_envelope_fields_are_checked_and_a_bad_one_is_dead_lettered_naming_it(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """An envelope with a wrongly typed field or an unsupported version is dead-lettered
    with an error naming the field, never executed. Bugs: the fast path skips the
    checks; the version check accepts any version."""
    cases = sorted(BAD_ENVELOPES)
    entries = [envelope(**BAD_ENVELOPES[c][0]) for c in cases]
    errors = await _dead_letters_of(redis_url, namespace, sm, redis, entries)
    wrong = {
        c: error for c, error in zip(cases, errors, strict=True) if BAD_ENVELOPES[c][1] not in error
    }
    assert not wrong, wrong


async def test_an_envelope_with_an_unknown_field_is_dead_lettered_naming_it(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """README "Wire protocol": an envelope is `{v, i, in}` plus the listed keys; a key
    outside them (a newer writer's field, a typo) must not be silently dropped: the entry
    is dead-lettered naming the key."""
    bad = envelope(v=1, i="s1", zz=1, **{"in": VALID_INPUTS})
    [error] = await _dead_letters_of(redis_url, namespace, sm, redis, [bad])
    assert "zz" in error, error


async def test_the_output_stream_is_capped_at_output_maxlen(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis
) -> None:
    """`output_maxlen` caps each node's output stream (approximately: Redis trims whole
    stream nodes, `stream-node-max-entries` at most past the cap). Bug: every XADD goes
    without MAXLEN (output streams grow without bound)."""
    maxlen, states = 10, 2000
    node_entries = int(
        (await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"]
    )
    rt = Runtime(
        namespace=namespace, name="p", nodes=[SampleNode], redis_url=redis_url, output_maxlen=maxlen
    )
    async with running(rt):
        await sm.enqueue_many("SampleNode", [VALID_INPUTS] * states)
        await until(lambda: rt.settled == states, f"{states} states settled", 30)
    length = await redis.xlen(sm.keys.output("SampleNode"))
    assert maxlen <= length <= maxlen + node_entries, length
