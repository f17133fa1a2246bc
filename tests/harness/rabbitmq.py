"""Throwaway RabbitMQ nodes and clusters on loopback, for real-broker tests.

Every node runs in the foreground under the harness, straight from the scripts in
``/usr/lib/rabbitmq/bin`` (override with ``FOXWORK_RABBITMQ_BIN_DIR``), with its own
temporary data directory, Erlang cookie, AMQP port and distribution port. Each node, or
each cluster, also gets a private ``epmd`` on its own port, so that node names never
clash with other RabbitMQ nodes on the machine and nothing is left running afterwards.
Everything listens on 127.0.0.1 only.

Example:
    >>> with RabbitMQNode() as node:  # doctest: +SKIP
    ...     connect(node.url)

Developers can keep a node up in a terminal with::

    python -m tests.harness.rabbitmq start
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self

__all__ = [
    "LOOPBACK",
    "RabbitMQCluster",
    "RabbitMQCtlError",
    "RabbitMQHarnessError",
    "RabbitMQNode",
    "RabbitMQNotInstalledError",
    "RabbitMQStartError",
    "find_free_port",
    "rabbitmq_bin_dir",
    "rabbitmq_installed",
]

LOOPBACK = "127.0.0.1"
"""The only address the harness binds to or connects to."""

INSTALL_HINT = (
    "install it with `sudo bash scripts/install-rabbitmq.sh` (Debian/Ubuntu: "
    "`apt-get install rabbitmq-server`), or point the tests at a running loopback broker "
    "with FOXWORK_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/"
)

_POLL_INTERVAL = 0.05
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_LOG_TAIL_LINES = 40


class RabbitMQHarnessError(RuntimeError):
    """Base class of the errors raised by the harness."""


class RabbitMQNotInstalledError(RabbitMQHarnessError):
    """The RabbitMQ server (or Erlang's epmd) is not installed on this machine."""


class RabbitMQStartError(RabbitMQHarnessError):
    """A node or cluster did not come up; the message includes the node log tail."""


class RabbitMQCtlError(RabbitMQHarnessError):
    """A ``rabbitmqctl`` command failed.

    Attributes:
        command: The rabbitmqctl arguments (without the ``-n NODE`` prefix).
        returncode: Exit status of rabbitmqctl.
        output: Combined stdout and stderr.
    """

    def __init__(self, args: Sequence[str], returncode: int, output: str) -> None:
        self.command = tuple(args)
        self.returncode = returncode
        self.output = output
        super().__init__(
            f"rabbitmqctl {' '.join(args)} failed with exit status {returncode}:\n{output}"
        )


# --------------------------------------------------------------------------- helpers


def rabbitmq_bin_dir() -> Path:
    """Return the directory holding the RabbitMQ scripts (not the /usr/sbin wrappers).

    Returns:
        ``$FOXWORK_RABBITMQ_BIN_DIR`` if set, else ``/usr/lib/rabbitmq/bin``.
    """
    return Path(os.environ.get("FOXWORK_RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))


def rabbitmq_installed() -> bool:
    """Return whether ``rabbitmq-server`` and ``rabbitmqctl`` are available."""
    bin_dir = rabbitmq_bin_dir()
    return all(os.access(bin_dir / tool, os.X_OK) for tool in ("rabbitmq-server", "rabbitmqctl"))


def _require_installed() -> None:
    if not rabbitmq_installed():
        raise RabbitMQNotInstalledError(
            f"RabbitMQ is not installed ({rabbitmq_bin_dir()}/rabbitmq-server not found); "
            + INSTALL_HINT
        )


def _epmd_executable() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise RabbitMQNotInstalledError("Erlang's epmd was not found; " + INSTALL_HINT)


_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently free.

    The port is found by binding port 0. Ports already returned by this function in
    this process are never returned again, so that several nodes started by one test
    run cannot be given the same port.

    Returns:
        A free port number.
    """
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port: int = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


def _port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def amqp_handshake(port: int, timeout: float = 2.0) -> bool:
    """Check that an AMQP 0-9-1 broker answers on ``127.0.0.1:port``.

    Sends the protocol header and expects a Connection.Start method frame back
    (frame type 1, channel 0, class 10, method 10).

    Args:
        port: AMQP port on 127.0.0.1.
        timeout: Socket timeout in seconds.

    Returns:
        True if the broker answered with Connection.Start.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            data = b""
            while len(data) < 11:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    frame_type, channel = data[0], int.from_bytes(data[1:3], "big")
    class_id, method_id = int.from_bytes(data[7:9], "big"), int.from_bytes(data[9:11], "big")
    return (frame_type, channel, class_id, method_id) == (1, 0, 10, 10)


def _group_alive(pgid: int) -> bool:
    """Return whether any non-zombie process is still in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - non-Linux fallback
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces or parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


def _clean_env() -> dict[str, str]:
    """Return the parent environment without RabbitMQ/Erlang settings that could leak in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RABBITMQ_", "ERL_")) and key not in ("HOME", "ERL_LIBS")
    }
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[_Stoppable] = set()
_live_lock = threading.Lock()


def _register(obj: _Stoppable) -> None:
    with _live_lock:
        _live.add(obj)


def _unregister(obj: _Stoppable) -> None:
    with _live_lock:
        _live.discard(obj)


@atexit.register
def _stop_leftovers() -> None:
    """Stop nodes a crashed test run forgot, so that no beam outlives the interpreter."""
    with _live_lock:
        leftovers = list(_live)
    for obj in leftovers:
        with contextlib.suppress(Exception):
            obj.stop()


# --------------------------------------------------------------------------- epmd


class _Epmd:
    """A private Erlang port mapper daemon on a loopback port, run in the foreground."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        executable = _epmd_executable()
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [executable, "-port", str(self.port), "-address", LOOPBACK],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env(),
            )
        proc = self._proc
        if not _wait_until(lambda: proc.poll() is not None or _port_accepts(self.port), timeout):
            self.stop()
            raise RabbitMQStartError(f"epmd did not listen on {LOOPBACK}:{self.port}")
        if proc.poll() is not None:
            self._proc = None
            raise RabbitMQStartError(
                f"epmd exited with status {proc.returncode}:\n{_tail(self._log_path)}"
            )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data[-64_000:].decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- node


class RabbitMQNode:
    """One throwaway RabbitMQ node listening on 127.0.0.1.

    The node is not started by the constructor; call :meth:`start` or use the node as a
    context manager. :meth:`stop` stops it and deletes its temporary directory.

    Attributes:
        name: Full Erlang node name, e.g. ``fw1@localhost``.
        amqp_port: AMQP port on 127.0.0.1.
        dist_port: Erlang distribution port on 127.0.0.1.
        base_dir: Directory holding the cookie, config, data (``mnesia/``) and ``node.log``.
        epmd_port: Port of the epmd the node registers with.
    """

    def __init__(
        self,
        name: str = "fw1",
        *,
        amqp_port: int | None = None,
        dist_port: int | None = None,
        base_dir: Path | str | None = None,
        cookie: str | None = None,
        epmd_port: int | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        """Prepare (but do not start) a node.

        Args:
            name: Node name; ``@localhost`` is appended when there is no host part.
            amqp_port: AMQP port; a free one is picked when None.
            dist_port: Erlang distribution port; a free one is picked when None.
            base_dir: Directory for all node files. When None a temporary directory is
                created and deleted by :meth:`stop`; a given directory is left in place.
            cookie: Erlang cookie; random when None. Cluster members share one.
            epmd_port: Port of an epmd managed by the caller (a cluster). When None the
                node runs its own private epmd on a free port.
            extra_config: Extra lines for ``rabbitmq.conf`` (new-style ``key = value``).
        """
        self.name = name if "@" in name else f"{name}@localhost"
        self.amqp_port = amqp_port if amqp_port is not None else find_free_port()
        self.dist_port = dist_port if dist_port is not None else find_free_port()
        self._owns_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="foxwork-rabbitmq-"))
            if base_dir is None
            else Path(base_dir)
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._cookie = cookie if cookie is not None else secrets.token_hex(16).upper()
        self._epmd: _Epmd | None = None
        if epmd_port is None:
            epmd_port = find_free_port()
            self._epmd = _Epmd(epmd_port, self.base_dir / "epmd.log")
        self.epmd_port = epmd_port
        self._extra_config = list(extra_config)
        self._proc: subprocess.Popen[bytes] | None = None
        self._beam_pid: int | None = None
        self._closed = False
        self._prepared = False

    # ----------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """AMQP URL of the node: ``amqp://guest:guest@127.0.0.1:PORT/``."""
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/"

    @property
    def log_path(self) -> Path:
        """File receiving the node's stdout/stderr (its whole log), appended across starts."""
        return self.base_dir / "node.log"

    @property
    def pid_file(self) -> Path:
        """File in which RabbitMQ writes the OS pid of its Erlang VM (beam)."""
        return self.base_dir / "mnesia" / f"{self.name}.pid"

    @property
    def beam_pid(self) -> int | None:
        """OS pid of the running Erlang VM, or None when the node is not running."""
        return self._beam_pid if self.is_running else None

    @property
    def is_running(self) -> bool:
        """Whether the node's processes are alive (not whether it accepts connections)."""
        if self._proc is None or self._proc.poll() is not None:
            return False
        return self._beam_pid is None or _pid_alive(self._beam_pid)

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> Self:
        """Start the node and wait until it is ready.

        Ready means: the AMQP port answers the protocol header with Connection.Start
        and ``rabbitmqctl wait PIDFILE`` reports the rabbit application as running.

        Args:
            timeout: Seconds to wait for the node to be ready.

        Returns:
            The node itself.

        Raises:
            RabbitMQNotInstalledError: RabbitMQ or epmd is not installed.
            RabbitMQStartError: The node did not come up in time or exited; the message
                includes the tail of the node log. The node's processes are stopped.
        """
        if self._closed:
            raise RabbitMQHarnessError(f"{self.name}: stopped and cleaned up; create a new node")
        if self.is_running:
            raise RabbitMQHarnessError(f"{self.name}: already running")
        _require_installed()
        self._reap(signal.SIGKILL)  # leftovers of a killed node, if any
        self._prepare()
        _register(self)
        if self._epmd is not None:
            self._epmd.start()
        deadline = time.monotonic() + timeout
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()  # a stale pid file would fool `rabbitmqctl wait`
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== harness: starting {self.name} at {time.ctime()} ====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(rabbitmq_bin_dir() / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env(),
                cwd=self.base_dir,
            )
        try:
            self._await_ready(deadline, timeout)
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        return self

    def _await_ready(self, deadline: float, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        while not amqp_handshake(self.amqp_port, timeout=1.0):
            if proc.poll() is not None:
                raise self._start_error(f"rabbitmq-server exited with status {proc.returncode}")
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"AMQP port {LOOPBACK}:{self.amqp_port} not ready after {timeout:.0f} s"
                )
            time.sleep(_POLL_INTERVAL * 2)
        remaining = max(deadline - time.monotonic(), 5.0)
        try:
            self.ctl(
                "wait", str(self.pid_file), "--timeout", str(int(remaining)), timeout=remaining + 10
            )
        except (RabbitMQCtlError, subprocess.TimeoutExpired) as exc:
            raise self._start_error(f"`rabbitmqctl wait` failed: {exc}") from exc
        try:
            self._beam_pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise self._start_error(f"cannot read pid file {self.pid_file}: {exc}") from exc

    def _start_error(self, what: str) -> RabbitMQStartError:
        return RabbitMQStartError(
            f"RabbitMQ node {self.name} (AMQP port {self.amqp_port}, dist port "
            f"{self.dist_port}) failed to start: {what}\n"
            f"---- last lines of {self.log_path} ----\n{_tail(self.log_path)}"
        )

    def stop(self, *, cleanup: bool = True, timeout: float = 30.0) -> None:
        """Stop the node gracefully (SIGTERM), escalating to SIGKILL after ``timeout``.

        Args:
            cleanup: Also stop the node's private epmd and delete the temporary
                directory. After that the node cannot be started again; pass False to
                keep the data for a later :meth:`start`.
            timeout: Seconds to wait for a graceful shutdown.
        """
        self._reap(signal.SIGTERM, timeout)
        if cleanup:
            self.close()

    def close(self) -> None:
        """Kill the node if needed, stop its private epmd and delete its temporary dir."""
        self._reap(signal.SIGKILL)
        if self._epmd is not None:
            self._epmd.stop()
        if self._owns_dir and not self._closed:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self._closed = True
        _unregister(self)

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the Erlang VM, then anything left in its process group.

        The data directory, ports and epmd are kept, so :meth:`restart` (or :meth:`start`)
        brings the node back with its durable queues.
        """
        beam_pid = self._beam_pid
        if beam_pid is None:
            with contextlib.suppress(OSError, ValueError):
                beam_pid = int(self.pid_file.read_text().strip())
        if beam_pid is not None and self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(beam_pid, signal.SIGKILL)
        self._reap(signal.SIGKILL)

    def restart(self, timeout: float = 60.0) -> Self:
        """Restart on the same data directory and ports (after :meth:`kill` or not).

        Args:
            timeout: Seconds to wait for the node to be ready again.

        Returns:
            The node itself.
        """
        if self.is_running:
            self.stop(cleanup=False)
        return self.start(timeout=timeout)

    def _reap(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        """Send ``sig`` to the node's process group and wait until the group is gone."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None or _group_alive(pgid):
            _signal_group(pgid, sig)
            gone = _wait_until(lambda: proc.poll() is not None and not _group_alive(pgid), timeout)
            if not gone:
                _signal_group(pgid, signal.SIGKILL)
                _wait_until(lambda: proc.poll() is not None and not _group_alive(pgid), 10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        self._proc = None
        self._beam_pid = None

    # ----------------------------------------------------------------- rabbitmqctl

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS...`` against this node.

        Args:
            *args: rabbitmqctl arguments, e.g. ``"list_queues", "name", "messages"``.
            timeout: Seconds before the command is killed.

        Returns:
            The command's standard output.

        Raises:
            RabbitMQCtlError: rabbitmqctl exited with a non-zero status.
            subprocess.TimeoutExpired: rabbitmqctl took longer than ``timeout``.
        """
        _require_installed()
        result = subprocess.run(
            [str(rabbitmq_bin_dir() / "rabbitmqctl"), "-n", self.name, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self._env(),
            cwd=self.base_dir,
            timeout=timeout,
            check=False,
        )
        stdout = result.stdout.decode("utf-8", errors="replace")
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", errors="replace")
            raise RabbitMQCtlError(args, result.returncode, (stdout + stderr).strip())
        return stdout

    # ----------------------------------------------------------------- files/env

    def _prepare(self) -> None:
        if self._prepared:
            return
        cookie = self.base_dir / ".erlang.cookie"
        cookie.unlink(missing_ok=True)
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._cookie)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")
        config = [
            f"listeners.tcp.default = {LOOPBACK}:{self.amqp_port}",
            "disk_free_limit.absolute = 50MB",
            *self._extra_config,
        ]
        (self.base_dir / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        (self.base_dir / "log").mkdir(exist_ok=True)
        (self.base_dir / "mnesia").mkdir(exist_ok=True)
        self._prepared = True

    def _env(self) -> dict[str, str]:
        b = self.base_dir
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        env = _clean_env()
        env.update(
            HOME=str(b),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_CRASH_DUMP=str(b / "erl_crash.dump"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback_dist,
            # rabbitmqctl: loopback only, OS-chosen distribution port (the default is a
            # shared range of 11 ports starting at 35672).
            RABBITMQ_CTL_ERL_ARGS=loopback_dist,
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
        )
        return env

    # ----------------------------------------------------------------- context manager

    def __enter__(self) -> Self:
        if not self.is_running:
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
        state = "running" if self.is_running else "stopped"
        return f"<RabbitMQNode {self.name} {self.url} {state}>"


# --------------------------------------------------------------------------- cluster


class RabbitMQCluster:
    """N throwaway RabbitMQ nodes on 127.0.0.1 joined into one cluster.

    The nodes share one Erlang cookie and one private epmd; nodes 2..N are joined to the
    first with ``stop_app``, ``reset``, ``join_cluster``, ``start_app``.

    Attributes:
        nodes: The member nodes, first one is the node the others joined.
        base_dir: Temporary directory holding one sub-directory per node.
    """

    def __init__(
        self, size: int = 3, *, name_prefix: str = "rmqc", extra_config: Sequence[str] = ()
    ) -> None:
        """Prepare (but do not start) a cluster.

        Args:
            size: Number of nodes (at least 1).
            name_prefix: Node names are ``{name_prefix}1@localhost`` ... ``{name_prefix}N``.
            extra_config: Extra ``rabbitmq.conf`` lines for every node.
        """
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(tempfile.mkdtemp(prefix="foxwork-rabbitmq-cluster-"))
        self._epmd = _Epmd(find_free_port(), self.base_dir / "epmd.log")
        cookie = secrets.token_hex(16).upper()
        self.nodes: list[RabbitMQNode] = [
            RabbitMQNode(
                f"{name_prefix}{i}",
                base_dir=self.base_dir / f"{name_prefix}{i}",
                cookie=cookie,
                epmd_port=self._epmd.port,
                extra_config=extra_config,
            )
            for i in range(1, size + 1)
        ]
        self._closed = False

    @property
    def urls(self) -> list[str]:
        """AMQP URLs of all nodes, in node order."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 120.0) -> Self:
        """Start all nodes in parallel, then join nodes 2..N to the first.

        Args:
            timeout: Seconds allowed for starting the nodes (each join step has its own
                rabbitmqctl timeout).

        Returns:
            The cluster itself.

        Raises:
            RabbitMQNotInstalledError: RabbitMQ is not installed.
            RabbitMQStartError: A node did not come up or could not join; everything
                already started is stopped.
        """
        if self._closed:
            raise RabbitMQHarnessError("cluster already stopped; create a new one")
        _require_installed()
        _register(self)
        try:
            self._epmd.start()
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                futures = [pool.submit(node.start, timeout) for node in self.nodes]
                for future in futures:
                    future.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                try:
                    node.ctl("stop_app")
                    node.ctl("reset")
                    node.ctl("join_cluster", first.name)
                    node.ctl("start_app")
                except RabbitMQCtlError as exc:
                    raise RabbitMQStartError(
                        f"{node.name} could not join {first.name}: {exc}\n"
                        f"---- last lines of {node.log_path} ----\n{_tail(node.log_path)}"
                    ) from exc
            if len(self.nodes) > 1:
                first.ctl("await_online_nodes", str(len(self.nodes)), "--timeout", "60")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop all nodes (in parallel), the shared epmd, and delete the temporary dir."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))
        self._epmd.stop()
        if not self._closed:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self._closed = True
        _unregister(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __iter__(self) -> Iterator[RabbitMQNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


# --------------------------------------------------------------------------- CLI


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_forever(out: IO[str]) -> None:
    # Also stop cleanly on SIGTERM, and on SIGINT even if it was ignored at startup
    # (background jobs of non-interactive shells).
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    print("Press Ctrl-C to stop.", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...", file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m tests.harness.rabbitmq start [--nodes N] [--port P]``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.rabbitmq",
        description="Run a throwaway RabbitMQ node (or cluster) on 127.0.0.1 until Ctrl-C.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a node and keep it up until Ctrl-C")
    start.add_argument("--nodes", type=int, default=1, help="cluster size (default 1)")
    start.add_argument("--port", type=int, default=None, help="AMQP port (single node only)")
    args = parser.parse_args(argv)

    try:
        if args.nodes > 1:
            with RabbitMQCluster(args.nodes) as cluster:
                for node in cluster:
                    print(f"{node.name}\t{node.url}", flush=True)
                _wait_forever(sys.stderr)
        else:
            began = time.monotonic()
            with RabbitMQNode(amqp_port=args.port) as node:
                print(node.url, flush=True)
                print(
                    f"{node.name} up in {time.monotonic() - began:.1f} s; data in "
                    f"{node.base_dir}; rabbitmqctl: HOME={node.base_dir} "
                    f"ERL_EPMD_PORT={node.epmd_port} rabbitmqctl -n {node.name} ...",
                    file=sys.stderr,
                )
                _wait_forever(sys.stderr)
    except RabbitMQHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
