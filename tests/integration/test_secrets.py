"""Graph secrets: encrypted at rest with EXOSPHERE_SECRETS_KEY, injected into nodes'
`Secrets`, and never written anywhere in plaintext."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from cryptography.fernet import Fernet
from pydantic import BaseModel
from redis.asyncio import Redis

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    Runtime,
    StateManager,
)
from exospherehost.broker.codec import unpack
from exospherehost.config import ConfigError
from exospherehost.secrets import ENV_SECRETS_KEY, SecretsCipher
from tests.integration.helpers import running


class Start(BaseNode):
    """Declares no secrets."""

    class Inputs(BaseModel):
        x: int = 1

    class Outputs(BaseModel):
        x: int

    async def execute(self) -> Outputs:
        return self.Outputs(x=self.inputs.x)


class CallApi(BaseNode):
    """Uses the secret (and proves it got it) without outputting it."""

    class Inputs(BaseModel):
        x: int

    class Outputs(BaseModel):
        x: int
        fingerprint: str

    class Secrets(BaseModel):
        api_token: str

    async def execute(self) -> Outputs:
        digest = hashlib.sha256(self.secrets.api_token.encode()).hexdigest()
        logging.getLogger("test.callapi").info("called the API for %d", self.inputs.x)
        return self.Outputs(x=self.inputs.x, fingerprint=digest)


class Reject(BaseNode):
    """Has the secret too, and always fails: a retry, a dead letter and history result."""

    class Inputs(BaseModel):
        x: int
        fingerprint: str

    class Outputs(BaseModel):
        x: int

    class Secrets(BaseModel):
        api_token: str

    async def execute(self) -> Outputs:
        assert self.secrets.api_token  # it was injected
        raise RuntimeError("the remote API rejected the request")


NODES = [Start, CallApi, Reject]
FAST_RETRY = RetryPolicyModel(max_retries=1, strategy=RetryStrategyEnum.FIXED, backoff_factor=50)


def graph(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Start", namespace=ns, identifier="start", inputs={}, next_nodes=["call"]
        ),
        GraphNodeModel(
            node_name="CallApi",
            namespace=ns,
            identifier="call",
            inputs={"x": "${{ start.outputs.x }}"},
            next_nodes=["reject"],
        ),
        GraphNodeModel(
            node_name="Reject",
            namespace=ns,
            identifier="reject",
            inputs={"x": "${{ call.outputs.x }}", "fingerprint": "${{ call.outputs.fingerprint }}"},
        ),
    ]


def runtime(url: str, ns: str) -> Runtime:
    return Runtime(namespace=ns, name="secrets", nodes=NODES, redis_url=url)


@pytest.fixture
async def sm(redis_url: str, namespace: str) -> AsyncIterator[StateManager]:
    manager = StateManager(namespace, redis_url=redis_url)
    yield manager
    await manager.close()


@pytest.fixture
def fernet_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(ENV_SECRETS_KEY, key)
    return key


async def dump_namespace(redis: Redis, namespace: str) -> dict[bytes, bytes]:
    """Every key of the namespace with every value it holds, as one blob per key."""
    out: dict[bytes, bytes] = {}
    async for key in redis.scan_iter(match=f"exo:{{{namespace}}}:*", count=1000):
        kind = (await redis.type(key)).decode()
        parts: list[bytes] = []
        if kind == "string":
            parts.append(await redis.get(key))
        elif kind == "hash":
            for k, v in (await redis.hgetall(key)).items():
                parts += (k, v)
        elif kind == "list":
            parts += await redis.lrange(key, 0, -1)
        elif kind == "set":
            parts += await redis.smembers(key)
        elif kind == "zset":
            parts += [m for m, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in await redis.xrange(key):
                parts.append(entry_id)
                for k, v in fields.items():
                    parts += (k, v)
        else:
            raise AssertionError(f"unexpected type {kind} of {key!r}")
        out[key] = b"\x00".join(parts)
    return out


async def test_secrets_never_appear_in_plaintext_anywhere(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    redis: Redis,
    fernet_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    plaintext = f"s3cr3t-{uuid4().hex}"
    async with running(runtime(redis_url, namespace)):
        stored = await sm.upsert_graph(
            "g", graph(namespace), secrets={"api_token": plaintext}, retry_policy=FAST_RETRY
        )
        run = await sm.trigger("g")
        status = await sm.wait(run, timeout=10)
    assert plaintext not in repr(stored)
    assert status.status == "FAILED"
    assert status.nodes["call"].succeeded == 1 and status.nodes["reject"].failed == 1
    history = await sm.run_history(run)
    assert [(h.identifier, h.status) for h in history] == [
        ("start", "SUCCEEDED"),
        ("call", "SUCCEEDED"),
        ("reject", "RETRYING"),
        ("reject", "FAILED"),
    ]
    (dead,) = await sm.dead_letters()
    assert "rejected the request" in dead.error and dead.attempts == 2

    secret = plaintext.encode()
    dump = await dump_namespace(redis, namespace)
    kinds = {k.decode().split(":")[2] for k in dump}
    assert {"q", "dead", "run", "events", "secrets", "graph", "nodes"} <= kinds, kinds
    leaks = [k for k, blob in dump.items() if secret in blob]
    assert leaks == [], f"plaintext secret found in {leaks}"
    for record in [repr(h) for h in history] + [repr(dead), caplog.text]:
        assert plaintext not in record
    # The encrypted form is what the secrets hash holds.
    version = (await sm.get_graph("g"))["version"]
    token = await redis.hget(f"exo:{{{namespace}}}:secrets:g:{version}", "api_token")
    assert token is not None and token != secret and token.startswith(b"gAAAAA")
    assert Fernet(fernet_key.encode()).decrypt(token) == secret
    # CallApi really had the plaintext: Reject's inputs (in the dead letter) hold its digest.
    original = unpack(dead.original[b"_exo"])
    assert original["in"]["fingerprint"] == hashlib.sha256(secret).hexdigest()


async def test_upsert_with_secrets_needs_a_key(
    namespace: str, sm: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_SECRETS_KEY, raising=False)
    with pytest.raises(ConfigError) as info:
        await sm.upsert_graph("g", graph(namespace), secrets={"api_token": "x"})
    message = str(info.value)
    assert ENV_SECRETS_KEY in message and "Fernet.generate_key()" in message
    monkeypatch.setenv(ENV_SECRETS_KEY, "not-a-key-value")
    with pytest.raises(ConfigError, match="not a valid Fernet key") as info:
        await sm.upsert_graph("g", graph(namespace), secrets={"api_token": "x"})
    assert "not-a-key-value" not in str(info.value)  # the key is not echoed


async def test_runtime_refuses_to_start_without_the_key(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    fernet_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph("g", graph(namespace), secrets={"api_token": "x"})
    monkeypatch.delenv(ENV_SECRETS_KEY)
    with pytest.raises(ConfigError, match=rf"graphs \['g'\].*{ENV_SECRETS_KEY} is not set"):
        async with running(runtime(redis_url, namespace)):
            pass


async def test_a_wrong_key_fails_the_states_needing_secrets_for_good(
    redis_url: str,
    namespace: str,
    sm: StateManager,
    fernet_key: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plaintext = f"s3cr3t-{uuid4().hex}"
    async with running(runtime(redis_url, namespace)):
        await sm.upsert_graph(
            "g", graph(namespace), secrets={"api_token": plaintext}, retry_policy=FAST_RETRY
        )
    monkeypatch.setenv(ENV_SECRETS_KEY, Fernet.generate_key().decode())
    async with running(runtime(redis_url, namespace)):
        run = await sm.trigger("g")
        status = await sm.wait(run, timeout=10)
    assert "cannot decrypt secret 'api_token' of graph 'g'" in caplog.text  # warned at start
    assert status.status == "FAILED"
    assert status.nodes["start"].succeeded == 1  # declares no secrets: unaffected
    (dead,) = await sm.dead_letters()
    assert dead.identifier == "call" and dead.attempts == 1  # permanent: no retry
    assert "cannot decrypt secret 'api_token' of graph 'g'" in dead.error
    assert ENV_SECRETS_KEY in dead.error
    assert plaintext not in dead.error + dead.traceback


def test_key_rotation_decrypts_with_any_listed_key() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stored = SecretsCipher(old).encrypt({"a": "1"})
    rotated = SecretsCipher(f"{new}, {old}")
    assert rotated.decrypt("g", {b"a": stored["a"]}) == {"a": "1"}
    assert Fernet(new.encode()).decrypt(rotated.encrypt({"a": "2"})["a"]) == b"2"
