"""Issue 17.4: a run sees the secrets of the graph version it was started with, whatever was
upserted since; a replaced version's secrets expire (they do not accumulate)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from exospherehost.broker.codec import pack
from exospherehost.broker.streams import Broker
from exospherehost.graphstore import OLD_SECRETS_TTL_S, GraphStore
from exospherehost.runtime.cron import CronScheduler
from exospherehost.secrets import ENV_SECRETS_KEY, SecretsCipher
from tests.integration.helpers import running

RUNS = 200


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class UseToken(BaseNode):
    """Needs the secret; outputs its digest (never the value)."""

    class Inputs(BaseModel):
        x: int = 0

    class Outputs(BaseModel):
        fingerprint: str

    class Secrets(BaseModel):
        api_token: str

    async def execute(self) -> Outputs:
        return self.Outputs(fingerprint=digest(self.secrets.api_token))


class NoToken(BaseNode):
    """Needs no secret (what v2 uses once the secret is removed)."""

    class Inputs(BaseModel):
        x: int = 0

    class Outputs(BaseModel):
        fingerprint: str

    async def execute(self) -> Outputs:
        return self.Outputs(fingerprint="none")


def one_node(ns: str, node: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name=node, namespace=ns, identifier="n", inputs={"x": 1})]


def runtime(url: str, ns: str) -> Runtime:
    return Runtime(namespace=ns, name="secret-versions", nodes=[UseToken, NoToken], redis_url=url)


@pytest.fixture
def fernet_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(ENV_SECRETS_KEY, key)
    return key


@pytest.fixture
async def registered(redis_url: str, namespace: str, fernet_key: str) -> AsyncIterator[None]:
    """The nodes' schemas are registered (graphs validate against them); no Runtime runs,
    so triggered runs wait in their streams."""
    async with running(runtime(redis_url, namespace)):
        pass
    yield


async def fingerprints(sm: StateManager, run_ids: list[str]) -> list[str]:
    statuses = await sm.wait_all(run_ids, timeout=60)
    bad = [s for s in statuses.values() if s.status != "SUCCEEDED"]
    assert not bad, f"{len(bad)} run(s) did not succeed, e.g. {bad[0]}"
    out = []
    for run in run_ids:
        (result,) = await sm.results(run)
        out.append(result["outputs"]["fingerprint"])
    return out


async def test_waiting_runs_see_the_secret_value_of_their_version(
    redis_url: str, namespace: str, sm: StateManager, registered: None
) -> None:
    await sm.upsert_graph("g", one_node(namespace, "UseToken"), secrets={"api_token": "one"})
    v1_runs = await sm.trigger_many("g", [{}] * RUNS)
    await sm.upsert_graph("g", one_node(namespace, "UseToken"), secrets={"api_token": "two"})
    v2_runs = await sm.trigger_many("g", [{}] * RUNS)
    async with running(runtime(redis_url, namespace)):
        v1 = await fingerprints(sm, v1_runs)
        v2 = await fingerprints(sm, v2_runs)
    assert v1 == [digest("one")] * RUNS, "a v1 state saw another version's secret"
    assert v2 == [digest("two")] * RUNS


async def test_waiting_runs_keep_a_secret_the_next_version_removed(
    redis_url: str, namespace: str, sm: StateManager, registered: None
) -> None:
    await sm.upsert_graph("g", one_node(namespace, "UseToken"), secrets={"api_token": "one"})
    v1_runs = await sm.trigger_many("g", [{}] * RUNS)
    await sm.upsert_graph("g", one_node(namespace, "NoToken"))  # the secret is gone in v2
    v2_runs = await sm.trigger_many("g", [{}] * RUNS)
    async with running(runtime(redis_url, namespace)):
        v1 = await fingerprints(sm, v1_runs)
        v2 = await fingerprints(sm, v2_runs)
    assert v1 == [digest("one")] * RUNS
    assert v2 == ["none"] * RUNS


async def upsert(sm: StateManager, ns: str, token: str) -> int:
    doc = await sm.upsert_graph("g", one_node(ns, "UseToken"), secrets={"api_token": token})
    return int(doc["version"])


async def test_a_replaced_versions_secrets_expire_and_then_fail_loudly(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, registered: None
) -> None:
    sm.graphs.old_secrets_ttl_s = 3600
    base = f"exo:{{{namespace}}}"
    v1 = await upsert(sm, namespace, "1")
    v1_key = f"{base}:secrets:g:{v1}"
    assert await redis.ttl(v1_key) == -1, "the current version's secrets must not expire"
    v1_runs = await sm.trigger_many("g", [{}] * 2)
    v2 = await upsert(sm, namespace, "2")
    v2_key = f"{base}:secrets:g:{v2}"
    assert 3500 < await redis.ttl(v1_key) <= 3600, "a replaced version's secrets get an expiry"
    assert await redis.ttl(v2_key) == -1
    # A later upsert does not push a replaced version's expiry back (EXPIRE NX).
    await redis.expire(v1_key, 1800)
    await upsert(sm, namespace, "3")
    assert 1700 < await redis.ttl(v1_key) <= 1800
    assert 3500 < await redis.ttl(v2_key) <= 3600

    # Once a replaced version's secrets expired, its states needing them fail at once,
    # saying why and naming the secret (never a value).
    await redis.delete(v1_key)  # what the expiry does
    async with running(runtime(redis_url, namespace)):
        statuses = await sm.wait_all(v1_runs, timeout=30)
    assert {s.status for s in statuses.values()} == {"FAILED"}
    dead = [d for d in await sm.dead_letters() if d.run_id in v1_runs]
    assert len(dead) == 2
    for letter in dead:
        assert f"version {v1} are no longer stored" in letter.error, letter.error
        assert "'api_token'" in letter.error and letter.attempts == 1
    # The next upsert forgets versions whose secrets are gone; the others stay listed.
    await upsert(sm, namespace, "4")
    listed = {int(v) for v in await redis.zrange(f"{base}:secretversions:g", 0, -1)}
    assert v1 not in listed and v2 in listed


async def test_a_runtime_running_a_replaced_version_keeps_its_secrets(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, registered: None
) -> None:
    sm.graphs.old_secrets_ttl_s = 3600
    v1 = await upsert(sm, namespace, "1")
    run = await sm.trigger("g")
    await upsert(sm, namespace, "2")
    v1_key = f"exo:{{{namespace}}}:secrets:g:{v1}"
    assert await redis.ttl(v1_key) <= 3600
    async with running(runtime(redis_url, namespace)):
        assert await fingerprints(sm, [run]) == [digest("1")]
    # The Runtime's own expiry for replaced versions, counted from when it loaded them.
    assert await redis.ttl(v1_key) > OLD_SECRETS_TTL_S - 600


async def test_the_sweep_keeps_secrets_of_versions_with_running_runs(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, registered: None
) -> None:
    """A replaced version whose runs still wait (no Runtime ran them, so none loaded its
    secrets) keeps them as long as a run of it is RUNNING; one without such runs is left
    to expire."""
    sm.graphs.old_secrets_ttl_s = 3600
    base = f"exo:{{{namespace}}}"
    v1 = await upsert(sm, namespace, "1")
    waiting = await sm.trigger("g")
    v2 = await upsert(sm, namespace, "2")  # v2 gets no run
    await upsert(sm, namespace, "3")
    v1_key, v2_key = f"{base}:secrets:g:{v1}", f"{base}:secrets:g:{v2}"
    assert await redis.ttl(v1_key) <= 3600 and await redis.ttl(v2_key) <= 3600

    # What a Runtime's sweep does (the scheduler's loop, once an hour per namespace).
    broker = Broker(redis, namespace)
    await redis.delete(f"{base}:secretsweep")  # the fixture's Runtime swept at its start
    sweeper = CronScheduler(broker, GraphStore(redis, broker.keys), reload_s=1e9)
    await sweeper.tick()
    assert await redis.ttl(v1_key) > OLD_SECRETS_TTL_S - 600, "a waiting run's secrets went"
    assert await redis.ttl(v2_key) <= 3600, "a version without runs was kept"
    assert 0 < await redis.ttl(f"{base}:secretsweep") <= 3600  # one sweep per hour
    # Another Runtime within the hour does not sweep again.
    await redis.expire(v1_key, 100)
    assert await GraphStore(redis, broker.keys).keep_live_secrets() == []
    assert await redis.ttl(v1_key) <= 100

    async with running(runtime(redis_url, namespace)):
        assert await fingerprints(sm, [waiting]) == [digest("1")]
    await redis.delete(f"{base}:secretsweep")
    await redis.expire(v1_key, 100)
    assert await GraphStore(redis, broker.keys).keep_live_secrets() == []  # v1's run is done
    assert await redis.ttl(v1_key) <= 100


async def test_versions_from_before_per_version_secrets_read_the_graphs_old_hash(
    redis_url: str, namespace: str, sm: StateManager, redis: Redis, registered: None
) -> None:
    """A version upserted by an older SDK (one hash per graph, no `secrets_per_version` in
    its document) keeps working; the old hash expires only once a newer version replaced
    it, never while it is the current version's."""
    base = f"exo:{{{namespace}}}"
    v1 = await upsert(sm, namespace, "ignored")
    doc = await sm.graphs.load("g", v1)
    assert doc is not None
    del doc["secrets_per_version"]  # as an older SDK wrote it
    await redis.set(f"{base}:graph:g:{v1}", pack(doc))
    await redis.delete(f"{base}:secrets:g:{v1}")
    cipher = SecretsCipher.from_env()  # the old hash, encrypted as before
    assert cipher is not None
    await redis.hset(f"{base}:secrets:g", mapping=cipher.encrypt({"api_token": "old"}))
    run = await sm.trigger("g")
    await redis.delete(f"{base}:secretsweep")
    async with running(runtime(redis_url, namespace)):  # sweeps at its start
        assert await fingerprints(sm, [run]) == [digest("old")]
    assert await redis.ttl(f"{base}:secrets:g") == -1, "the current version's hash expires"
    await upsert(sm, namespace, "new")
    assert 0 < await redis.ttl(f"{base}:secrets:g") <= OLD_SECRETS_TTL_S
