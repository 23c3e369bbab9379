"""Core executor against a real redis-server: enqueue, execute, settle, results."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, Runtime, StateManager
from exospherehost.broker.keys import GROUP
from tests.integration.apps.nodes import SampleNode, Typed
from tests.integration.helpers import running

# Also on a private Redis Cluster (tests/conftest.py): issue 14.
pytestmark = pytest.mark.cluster_too


def runtime(url: str, ns: str, *nodes: type[BaseNode], **kw: Any) -> Runtime:
    return Runtime(namespace=ns, name="test", nodes=list(nodes), redis_url=url, **kw)


async def test_seed_example_processes_a_redis_cli_xadd(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli not installed")
    stream = sm.keys.queue("SampleNode")
    async with running(runtime(redis_url, namespace, SampleNode)):
        proc = await asyncio.create_subprocess_exec(
            cli,
            "-c",  # on a cluster: follow MOVED to the namespace's master
            "-u",
            redis_url,
            "XADD",
            stream,
            "*",
            "name",
            "Alice",
            "data",
            '{"k":1}',
            stdout=asyncio.subprocess.PIPE,
        )
        out = (await proc.communicate())[0].decode().strip()
        assert proc.returncode == 0 and out, out
        results = await sm.wait_for_states("SampleNode", [out], timeout=10)
    r = results[out]
    assert r.status == "SUCCEEDED"
    assert r.outputs == {"message": "success", "processed_data": {"input": {"k": 1}}}
    # The raw wire format as any client sees it: msgpack outputs + the state id.
    ((_entry, fields),) = await sm.client.xrange(sm.keys.output("SampleNode"))
    assert fields[b"state"] == out.encode()
    assert msgpack.unpackb(fields[b"outputs"])["message"] == "success"


async def test_sdk_enqueue_with_any_msgpack_types(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    inputs = [
        {
            "count": k,
            "ratio": 0.5 + k,
            "flag": k % 2 == 0,
            "tags": ["a", str(k)],
            "meta": {"x": k},
            "maybe": None if k else "set",
            "inner": {"label": f"l{k}", "weights": [1.5, k]},
        }
        for k in range(50)
    ]
    async with running(runtime(redis_url, namespace, Typed)):
        ids = await sm.enqueue_many("Typed", inputs)
        results = await sm.wait_for_states("Typed", ids, timeout=10)
    for k, state_id in enumerate(ids):
        r = results[state_id]
        assert r.status == "SUCCEEDED", r.error
        assert r.outputs == {
            "doubled": 2 * k,
            "inner": {"label": f"l{k}", "weights": [1.5, float(k)]},
            "echo": {
                "ratio": 0.5 + k,
                "flag": k % 2 == 0,
                "tags": ["a", str(k)],
                "meta": {"x": k},
                "maybe": None if k else "set",
            },
        }


async def test_plain_xadd_coerces_strings_to_the_inputs_model(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    fields = {
        "count": "7",
        "ratio": "2.5",
        "flag": "true",
        "tags": '["p","q"]',
        "meta": '{"a": 1}',
        "inner": '{"label": "z", "weights": [1, 2]}',
    }
    entry = (await sm.client.xadd(sm.keys.queue("Typed"), fields)).decode()
    async with running(runtime(redis_url, namespace, Typed)):
        r = (await sm.wait_for_states("Typed", [entry], timeout=10))[entry]
    assert r.status == "SUCCEEDED", r.error
    assert r.outputs["doubled"] == 14
    assert r.outputs["echo"]["tags"] == ["p", "q"]


async def test_entries_added_before_any_worker_ran_are_delivered(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    ids = await sm.enqueue_many("SampleNode", [{"name": "early", "data": {}}] * 20)
    async with running(runtime(redis_url, namespace, SampleNode)):
        results = await sm.wait_for_states("SampleNode", ids, timeout=10)
    assert {r.status for r in results.values()} == {"SUCCEEDED"}


async def test_malformed_entries_are_dead_lettered_and_the_batch_goes_on(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    q = sm.keys.queue("SampleNode")
    good_before = await sm.enqueue("SampleNode", {"name": "a", "data": {"i": 1}})
    bad = {
        "not valid msgpack": {"_exo": b"\xc1\xff not msgpack"},
        "must be a msgpack map": {"_exo": msgpack.packb([1, 2, 3])},
        "data: Field required": {"name": "no data field"},
        "data: Input should be a valid dictionary": {"name": "x", "data": "not json"},
        "'name' is not UTF-8 text": {"name": b"\xff\xfe", "data": "{}"},
        # A huge value of the wrong type: the reason stays short (no 2 MB echo).
        "data: Input should be a valid dictionary ": {"name": "h", "data": "x" * 2_000_000},
        # Wrongly typed envelope fields from a foreign client: named, not a crashed reader.
        "graph version 'gv' must be an integer, got 'x'": {
            "_exo": msgpack.packb(
                {"v": 1, "i": "s", "in": {}, "r": "run", "g": "g", "gv": "x", "n": "a"}
            )
        },
        "path 'p' must be a list of integers": {
            "_exo": msgpack.packb({"v": 1, "i": "s", "in": {}, "p": ["x"]})
        },
        "graph 'nope' version 1 not found": {
            "_exo": msgpack.packb(
                {"v": 1, "i": "s", "in": {}, "r": "run", "g": "nope", "gv": 1, "n": "a"}
            )
        },
    }
    entry_of = {}
    for reason, fields in bad.items():
        entry_of[reason] = await sm.client.xadd(q, fields)
    await sm.client.xadd(
        q, {"name": "huge", "data": '{"blob": "' + "x" * 2_000_000 + '"}', "extra": "1"}
    )
    good_after = await sm.enqueue("SampleNode", {"name": "b", "data": {"i": 2}})
    async with running(runtime(redis_url, namespace, SampleNode, batch_size=100)):
        results = await sm.wait_for_states("SampleNode", [good_before, good_after], timeout=10)
        dead = await _wait_len(sm, sm.keys.dead(), len(bad))
    assert {r.status for r in results.values()} == {"SUCCEEDED"}
    by_entry = {f[b"entry"]: f for _, f in dead}
    assert len(by_entry) == len(bad)
    for reason, entry in entry_of.items():
        error = by_entry[entry][b"error"].decode()
        assert reason.strip() in error and len(error) < 500, error
        assert by_entry[entry][b"node"] == b"SampleNode"
    assert not await sm.client.exists(sm.keys.run("run"))  # no stray run hash was created
    # The original fields are kept, byte for byte, for inspection and redrive.
    original = msgpack.unpackb(
        by_entry[entry_of["data: Input should be a valid dictionary"]][b"original"]
    )
    assert original == {b"name": b"x", b"data": b"not json"}
    # The huge entry was valid (extra fields are ignored by the model): it succeeded.
    info = await sm.pending("SampleNode")
    assert info == {"length": 0, "pending": 0, "delayed": 0}


async def _wait_len(sm: StateManager, stream: str, n: int, timeout: float = 10) -> list[Any]:
    async def poll() -> list[Any]:
        last = "0"
        while True:
            entries = await sm.client.xrange(stream)
            if len(entries) >= n:
                return list(entries)
            await sm.client.xread({stream: entries[-1][0] if entries else last}, block=200)

    return await asyncio.wait_for(poll(), timeout)


async def test_failure_of_a_graphless_state_is_reported_on_the_output_stream(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    class Boom(BaseNode):
        class Inputs(BaseModel):
            x: int

        class Outputs(BaseModel):
            pass

        async def execute(self) -> Outputs:
            raise RuntimeError(f"boom {self.inputs.x}")

    from exospherehost import RetryPolicyModel

    rt = runtime(redis_url, namespace, Boom, default_retry_policy=RetryPolicyModel(max_retries=0))
    async with running(rt):
        sid = await sm.enqueue("Boom", {"x": 3})
        r = (await sm.wait_for_states("Boom", [sid], timeout=10))[sid]
    assert r.status == "FAILED"
    assert r.error == "RuntimeError: boom 3"
    ((_, dead),) = await sm.client.xrange(sm.keys.dead())
    assert dead[b"state"] == sid.encode()
    assert b"RuntimeError: boom 3" in dead[b"traceback"]


async def test_streams_do_not_grow_acked_entries_are_deleted(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    ids = await sm.enqueue_many("SampleNode", [{"name": str(i), "data": {}} for i in range(500)])
    async with running(runtime(redis_url, namespace, SampleNode)):
        await sm.wait_for_states("SampleNode", ids, timeout=20)
    q = sm.keys.queue("SampleNode")
    assert await sm.client.xlen(q) == 0
    groups = await sm.client.xinfo_groups(q)
    assert groups[0]["pending"] == 0 and groups[0]["name"] == GROUP.encode()


async def test_a_deleted_stream_is_recreated_and_serving_goes_on(
    redis_url: str, namespace: str, sm: StateManager
) -> None:
    async with running(runtime(redis_url, namespace, SampleNode)):
        first = await sm.enqueue("SampleNode", {"name": "a", "data": {}})
        await sm.wait_for_states("SampleNode", [first], timeout=10)
        await sm.client.delete(sm.keys.queue("SampleNode"))  # group gone with it
        second = await sm.enqueue("SampleNode", {"name": "b", "data": {}})
        results = await sm.wait_for_states("SampleNode", [second], timeout=10)
    assert results[second].status == "SUCCEEDED"
