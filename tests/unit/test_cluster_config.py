"""Issue 14 without a server: the cluster-mode option, the one client factory, what
counts as a misconfigured connection (never retried), and how a lane finds a command's
key."""

from __future__ import annotations

import ssl

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from exospherehost.broker.connection import (
    ClusterAwareRedis,
    acl_rule,
    key_namespace,
    refusal,
    setup_failure,
)
from exospherehost.broker.lane import first_key
from exospherehost.config import ENV_CLUSTER, resolve
from exospherehost.errors import ConfigError, ConnectionSetupError, PermissionRefused
from exospherehost.runtime.resilience import is_outage

URL = "redis://127.0.0.1:1/0"


def test_the_cluster_mode_defaults_to_asking_and_can_be_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_CLUSTER, raising=False)
    assert resolve(URL).cluster == "auto"
    monkeypatch.setenv(ENV_CLUSTER, "YES")
    assert resolve(URL).cluster == "yes"
    assert resolve(URL, cluster="no").cluster == "no"  # the argument wins
    monkeypatch.setenv(ENV_CLUSTER, "maybe")
    with pytest.raises(ConfigError, match=f"{ENV_CLUSTER}='maybe'.*auto.*yes or no"):
        resolve(URL)
    with pytest.raises(ConfigError, match="unix socket"):
        resolve("unix:///tmp/r.sock", cluster="yes")


async def test_every_client_comes_from_one_factory_and_asks_nothing_when_built() -> None:
    for mode in ("auto", "yes", "no"):
        client = resolve(URL, cluster=mode).client()
        assert isinstance(client, ClusterAwareRedis)
        assert client.cluster_mode == mode and client.cluster_client is None
        assert client.decided == (mode == "no")
        await client.aclose()
    plain = resolve("unix:///tmp/r.sock").client()  # a cluster has no unix sockets
    assert type(plain) is aioredis.Redis
    await plain.aclose()


def _wrapped(inner: BaseException) -> RedisConnectionError:
    # As redis-py raises a failed connect: a ConnectionError raised while handling it.
    try:
        raise inner
    except BaseException:
        try:
            raise RedisConnectionError(f"Error connecting: {inner}")
        except RedisConnectionError as exc:
            return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (AuthenticationError("invalid username-password pair"), "refused the credentials"),
        (_wrapped(ssl.SSLCertVerificationError(1, "certificate verify failed")), "not trusted"),
        (_wrapped(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA]")), "TLS handshake"),
        (_wrapped(FileNotFoundError(2, "No such file", "/ca.crt")), "cannot be read"),
    ],
)
def test_refused_credentials_and_tls_are_no_outage(exc: BaseException, says: str) -> None:
    problem = setup_failure(exc)
    assert problem is not None and says in problem
    assert not is_outage(exc)  # fails fast: before issue 14 a wrong password retried forever
    assert not is_outage(ConnectionSetupError(problem))


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("Connection refused"),
        _wrapped(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
        _wrapped(ConnectionResetError(104, "reset")),
    ],
)
def test_an_unreachable_server_stays_an_outage(exc: BaseException) -> None:
    assert setup_failure(exc) is None
    assert is_outage(exc)


def test_a_refusal_names_the_user_the_namespace_and_the_grant() -> None:
    raw = NoPermissionError("this user has no permissions to access one of the keys")
    args = ("HGETALL", "exo:{billing}:graphs")
    assert key_namespace(args) == "billing"
    assert key_namespace(("XADD", "exo:{billing/3}:q:N")) == "billing"  # a lane's tag
    error = refusal(raw, "worker-a", args)
    assert isinstance(error, PermissionRefused) and isinstance(error, NoPermissionError)
    text = str(error)
    assert "'worker-a'" in text and "'billing'" in text and "HGETALL" in text
    assert f"ACL SETUSER worker-a {acl_rule('billing')}" in text
    assert acl_rule("billing").startswith("~exo:{billing}:* ~exo:{billing/* -@all ")


def test_a_lane_routes_by_the_first_key_of_what_it_sends() -> None:
    read = (b"XREADGROUP", "GROUP", "exo", "c", "COUNT", 10, "BLOCK", 5,
            "STREAMS", "exo:{a}:q:N", "exo:{a}:q:M", ">", ">")  # fmt: skip
    assert first_key(read) == "exo:{a}:q:N"
    assert first_key(("EVALSHA", "abc", 2, "exo:{a}:run:1", "exo:{a}:x", "arg")) == "exo:{a}:run:1"
    assert first_key(("EVALSHA", "abc", 0, "arg")) is None
    assert first_key(("SCRIPT", "LOAD", "return 1")) is None
    assert first_key(("SET", "k", "v")) == "k"
