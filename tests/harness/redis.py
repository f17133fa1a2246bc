"""Throwaway Redis servers, and a small Redis Cluster, on loopback for the Redis tests.

Each server is a ``redis-server`` child of the test process, run in the foreground
(``--daemonize no``) in a session of its own, so that it can be stopped, SIGKILLed and
restarted on the same port and directory. It listens on 127.0.0.1 only with protected mode
on, keeps its files (and its log, ``redis.log``) in its own temporary directory and never
writes RDB snapshots (``--save ""``). With ``appendonly=True`` it keeps an append-only file
(``--appendfsync everysec``), for durability tests. Readiness is a raw RESP ``PING``, and
:func:`execute` speaks enough RESP for the harness and its self-tests, so no Redis client
library is needed. The executables come from ``$FOXWORK_REDIS_BIN_DIR`` when set, else from
``PATH`` (``scripts/install-redis.sh`` installs them).

Servers and clusters still running when the interpreter exits are stopped by the atexit
hook shared with the RabbitMQ harness.

Example:
    >>> with RedisServer(appendonly=True) as server:  # doctest: +SKIP
    ...     execute(server.port, "SET", "key", "value")
    'OK'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, TypeAlias

from tests.harness.rabbitmq import LOOPBACK, _register, _tail, _unregister, find_free_port

__all__ = [
    "INSTALL_HINT",
    "RedisCluster",
    "RedisHarnessError",
    "RedisNotInstalledError",
    "RedisReplyError",
    "RedisServer",
    "RedisStartError",
    "Reply",
    "RespConnection",
    "encode_command",
    "execute",
    "redis_installed",
]

INSTALL_HINT = (
    "install it with `sudo bash scripts/install-redis.sh` (Debian/Ubuntu: "
    "`apt-get install redis-server`), or point the tests at a running loopback Redis with "
    "FOXWORK_TEST_REDIS_URL=redis://127.0.0.1:6379/0"
)

_POLL_INTERVAL = 0.02
_FALLBACK_BIN_DIRS = "/usr/bin:/usr/local/bin"

Reply: TypeAlias = "str | bytes | int | list[Reply] | None"
"""A decoded RESP2 reply: simple string, bulk string, integer, nil or array."""


class RedisHarnessError(RuntimeError):
    """Base class of the errors raised by the harness."""


class RedisNotInstalledError(RedisHarnessError):
    """``redis-server`` or ``redis-cli`` is not installed on this machine."""


class RedisStartError(RedisHarnessError):
    """A server or cluster did not come up; the message names the log and shows its tail."""


class RedisReplyError(RedisHarnessError):
    """The server answered a command with an error reply (``-ERR ...``)."""


# --------------------------------------------------------------------------- executables


def _executable(name: str) -> str | None:
    bin_dir = os.environ.get("FOXWORK_REDIS_BIN_DIR")
    if bin_dir:
        return shutil.which(name, path=bin_dir)
    return shutil.which(name) or shutil.which(name, path=_FALLBACK_BIN_DIRS)


def redis_installed() -> bool:
    """Return whether ``redis-server`` and ``redis-cli`` are available."""
    return all(_executable(tool) for tool in ("redis-server", "redis-cli"))


def _require(name: str) -> str:
    found = _executable(name)
    if found is None:
        raise RedisNotInstalledError(f"Redis is not installed ({name} not found); {INSTALL_HINT}")
    return found


# --------------------------------------------------------------------------- RESP


def encode_command(*args: str | bytes | int) -> bytes:
    """Encode a command as a RESP array of bulk strings.

    Args:
        *args: The command name and its arguments, e.g. ``"SET", "key", b"value"``.

    Returns:
        The bytes to send.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ConnectionError("the server closed the connection in the middle of a reply")
    return data


def _read_reply(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else _read_exactly(stream, size + 2)[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise RedisHarnessError(f"not a RESP2 reply: {line!r}")


class RespConnection:
    """A blocking RESP2 connection to a server on 127.0.0.1, one command at a time.

    After a :class:`RedisReplyError` inside an array reply the connection is out of step;
    close it.

    Args:
        port: The server's port on 127.0.0.1.
        timeout: Socket timeout in seconds, for the connect and each reply.
    """

    def __init__(self, port: int, *, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self._stream = self._sock.makefile("rb")

    def execute(self, *args: str | bytes | int) -> Reply:
        """Send one command and return its reply.

        Raises:
            RedisReplyError: The server answered with an error.
            OSError: The connection failed, closed or timed out.
        """
        self._sock.sendall(encode_command(*args))
        return _read_reply(self._stream)

    def close(self) -> None:
        """Close the connection."""
        self._stream.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def execute(port: int, *args: str | bytes | int, timeout: float = 5.0) -> Reply:
    """Run one command on a fresh connection to ``127.0.0.1:port`` and return its reply.

    Raises:
        RedisReplyError: The server answered with an error.
        OSError: The connection failed, closed or timed out.
    """
    with RespConnection(port, timeout=timeout) as conn:
        return conn.execute(*args)


# --------------------------------------------------------------------------- server


class _StartStop:
    """``with`` starts the object and stops it on the way out."""

    def start(self, timeout: float = 10.0) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_StartStop):
    """One throwaway ``redis-server`` listening on 127.0.0.1.

    The server is not started by the constructor; call :meth:`start` or use it as a context
    manager. :meth:`stop` stops it and deletes its temporary directory.

    Args:
        port: TCP port; a free one is picked when None.
        data_dir: Directory for the server's files (``--dir``) and ``redis.log``. When None a
            temporary directory is created and deleted by :meth:`stop`; a given directory is
            left in place.
        appendonly: Keep an append-only file (``--appendonly yes --appendfsync everysec``),
            so that data survives :meth:`kill` and :meth:`restart`.
        extra_args: More ``redis-server`` options, e.g. ``("--maxmemory", "64mb")``.

    Example:
        >>> server = RedisServer(appendonly=True).start()  # doctest: +SKIP
        >>> server.kill(); server.restart()  # same port, same data  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port if port is not None else find_free_port()
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="foxwork-redis-")) if data_dir is None else Path(data_dir)
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self._extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """URL of database 0: ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """File receiving the server's output (its whole log), appended across starts."""
        return self.data_dir / "redis.log"

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive (not whether it answers yet)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """OS pid of the running server, or None when it is not running."""
        return self._proc.pid if self._proc is not None and self.is_running else None

    def command_line(self, executable: str = "redis-server") -> list[str]:
        """Return the ``redis-server`` command line the server is started with."""
        args = [
            executable,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            args += ["--appendfsync", "everysec"]
        return [*args, *self._extra_args]

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers ``PING`` (its data loaded).

        Args:
            timeout: Seconds to wait for the server to be ready.

        Returns:
            The server itself.

        Raises:
            RedisNotInstalledError: ``redis-server`` is not installed.
            RedisStartError: The server exited, did not answer in time, or another server
                answered on its port; the message names the log and shows its last lines.
                The server process is stopped.
        """
        if self._closed:
            raise RedisHarnessError(f"{self!r}: stopped and cleaned up; create a new server")
        if self.is_running:
            raise RedisHarnessError(f"{self!r}: already running")
        executable = _require("redis-server")
        _register(self)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== harness: starting at {time.ctime()} ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command_line(executable),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        try:
            self._await_ready(self._proc, timeout)
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        return self

    def _await_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if proc.poll() is not None:
                raise self._start_error(f"redis-server exited with status {proc.returncode}")
            if time.monotonic() >= deadline:
                raise self._start_error(f"no PONG from {LOOPBACK}:{self.port} in {timeout:g} s")
            time.sleep(_POLL_INTERVAL)
        # Make sure the PONG came from this server, not from another one that got the port.
        info = execute(self.port, "INFO", "server")
        if not isinstance(info, bytes) or f"process_id:{proc.pid}\r\n".encode() not in info:
            raise self._start_error(f"another server answers on {LOOPBACK}:{self.port}")

    def _answers_ping(self) -> bool:
        try:
            return execute(self.port, "PING", timeout=1.0) == "PONG"
        except (OSError, RedisHarnessError):  # refused, or -LOADING while reading the AOF
            return False

    def _start_error(self, what: str) -> RedisStartError:
        return RedisStartError(
            f"redis-server on {LOOPBACK}:{self.port} failed to start: {what}\n"
            f"---- last lines of {self.log_path} ----\n{_tail(self.log_path)}"
        )

    def stop(self, *, cleanup: bool = True, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), escalating to SIGKILL after ``timeout``.

        Args:
            cleanup: Also delete the temporary directory; the server cannot be started
                again after that. Pass False to keep the data for a later :meth:`start`.
            timeout: Seconds to wait for a graceful shutdown.
        """
        self._reap(signal.SIGTERM, timeout)
        if cleanup:
            self.close()

    def close(self) -> None:
        """Kill the server if needed and delete its temporary directory."""
        self._reap(signal.SIGKILL)
        if self._owns_dir and not self._closed:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._closed = True
        _unregister(self)

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the server and any child it forked (an AOF rewrite).

        The directory and port are kept, so :meth:`restart` brings the server back with
        what its append-only file holds.
        """
        self._reap(signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> Self:
        """Restart on the same port and directory (after :meth:`kill` or not).

        Args:
            timeout: Seconds to wait for the server to be ready again.

        Returns:
            The server itself.
        """
        if self.is_running:
            self.stop(cleanup=False)
        return self.start(timeout=timeout)

    def _reap(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        """Send ``sig`` to the server's process group and wait for the server to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # The group is the server and its forked children; signalling it while the server
        # is still unreaped keeps the group id from naming anyone else's processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> Self:
        return self if self.is_running else self.start()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<RedisServer {self.url} {state}>"


# --------------------------------------------------------------------------- cluster


class RedisCluster(_StartStop):
    """Throwaway Redis masters on 127.0.0.1 joined into one Redis Cluster, no replicas.

    Each node has its own port, cluster bus port and directory under :attr:`base_dir`;
    ``redis-cli --cluster create`` spreads the 16384 slots over them.

    Args:
        size: Number of masters (Redis Cluster needs at least 3).

    Example:
        >>> with RedisCluster() as cluster:  # doctest: +SKIP
        ...     urls = cluster.urls
    """

    def __init__(self, size: int = 3) -> None:
        if size < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, not {size}")
        self.base_dir = Path(tempfile.mkdtemp(prefix="foxwork-redis-cluster-"))
        self.nodes = [
            RedisServer(
                data_dir=self.base_dir / f"node{i}",
                extra_args=(
                    "--cluster-enabled yes --cluster-config-file nodes.conf "
                    f"--cluster-port {find_free_port()} --cluster-node-timeout 5000"
                ).split(),
            )
            for i in range(1, size + 1)
        ]
        self._closed = False

    @property
    def urls(self) -> list[str]:
        """URLs of all nodes, in node order."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 60.0) -> Self:
        """Start the nodes, assign the slots and wait until every node reports the cluster ok.

        Args:
            timeout: Seconds allowed for the whole start.

        Returns:
            The cluster itself.

        Raises:
            RedisNotInstalledError: ``redis-server`` or ``redis-cli`` is not installed.
            RedisStartError: A node did not come up, the cluster could not be created, or
                it did not reach ``cluster_state:ok`` in time; everything is stopped.
        """
        if self._closed:
            raise RedisHarnessError("cluster already stopped; create a new one")
        cli = _require("redis-cli")
        deadline = time.monotonic() + timeout
        _register(self)
        try:
            for node in self.nodes:
                node.start(timeout=max(deadline - time.monotonic(), 1.0))
            create = subprocess.run(
                [cli, "--cluster", "create"]
                + [f"{LOOPBACK}:{node.port}" for node in self.nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
            if create.returncode != 0:
                output = (create.stdout + create.stderr).decode(errors="replace")
                raise RedisStartError(f"redis-cli --cluster create failed:\n{output}")
            for node in self.nodes:
                while b"cluster_state:ok" not in _cluster_info(node.port):
                    if time.monotonic() >= deadline:
                        raise RedisStartError(
                            f"{node.url} did not report cluster_state:ok in {timeout:g} s; "
                            f"see {node.log_path}"
                        )
                    time.sleep(_POLL_INTERVAL * 5)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all nodes and delete the temporary directory."""
        for node in self.nodes:
            node.stop()
        if not self._closed:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self._closed = True
        _unregister(self)

    def __len__(self) -> int:
        return len(self.nodes)


def _cluster_info(port: int) -> bytes:
    info = execute(port, "CLUSTER", "INFO")
    return info if isinstance(info, bytes) else b""
