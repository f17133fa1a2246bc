"""A throwaway RabbitMQ node for an application's own tests (the `foxwork_rabbitmq_url`
fixture starts one per test session).

The node runs from the RabbitMQ scripts in ``/usr/lib/rabbitmq/bin`` (another directory
with ``$FOXWORK_RABBITMQ_BIN_DIR``), listens on 127.0.0.1 only, on a free port, with its data
in a temporary directory and a private ``epmd``, so that it clashes with no other node on
the machine and leaves nothing behind once stopped.

Example:
    with ThrowawayRabbitMQ() as node:
        print(node.url)  # amqp://guest:guest@127.0.0.1:PORT/
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RabbitMQNotInstalled", "RabbitMQStartFailed", "ThrowawayRabbitMQ", "installed"]

#: Seconds a node may take to accept AMQP connections.
START_TIMEOUT = 60.0
_LOOPBACK = "127.0.0.1"
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class RabbitMQNotInstalled(RuntimeError):
    """RabbitMQ (or Erlang's epmd) is not installed here."""


class RabbitMQStartFailed(RuntimeError):
    """The node did not come up; the message ends with its log."""


def _bin_dir() -> Path:
    return Path(os.environ.get("FOXWORK_RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))


def installed() -> bool:
    """Whether ``rabbitmq-server`` can be run from the RabbitMQ scripts directory."""
    return os.access(_bin_dir() / "rabbitmq-server", os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_amqp(port: int) -> bool:
    """Whether a broker on the port answers the AMQP header with Connection.Start."""
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(_AMQP_HEADER)
            frame = sock.recv(11)
    except OSError:
        return False
    return frame[:1] == b"\x01" and frame[7:11] == b"\x00\x0a\x00\x0a"


def _epmd() -> str:
    found = shutil.which("epmd") or next(
        (str(p) for p in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None
    )
    if found is None:
        raise RabbitMQNotInstalled("Erlang's epmd was not found")
    return found


class ThrowawayRabbitMQ:
    """One RabbitMQ node on 127.0.0.1, started by `start()` (or `with`), deleted by
    `stop()`.

    Raises (from `start()`):
        RabbitMQNotInstalled: no ``rabbitmq-server`` (install the ``rabbitmq-server``
            package) or no Erlang ``epmd``.
        RabbitMQStartFailed: it did not accept connections within `timeout` seconds.
    """

    def __init__(self, *, timeout: float = START_TIMEOUT) -> None:
        self.timeout = timeout
        self.port = _free_port()
        self.directory: Path | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{_LOOPBACK}:{self.port}/"

    def __enter__(self) -> ThrowawayRabbitMQ:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ThrowawayRabbitMQ:
        if not installed():
            raise RabbitMQNotInstalled(
                f"RabbitMQ is not installed ({_bin_dir()}/rabbitmq-server not found)"
            )
        epmd = _epmd()
        home = self.directory = Path(tempfile.mkdtemp(prefix="foxwork-rabbitmq-"))
        (home / ".erlang.cookie").write_text(secrets.token_hex(16).upper())
        (home / ".erlang.cookie").chmod(0o400)
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {_LOOPBACK}:{self.port}\ndisk_free_limit.absolute = 50MB\n"
        )
        (home / "enabled_plugins").write_text("[].\n")
        epmd_port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            ERL_EPMD_PORT=str(epmd_port),
            ERL_EPMD_ADDRESS=_LOOPBACK,
            RABBITMQ_NODENAME=f"foxwork-{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS=_LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(_free_port()),
            RABBITMQ_MNESIA_BASE=str(home / "data"),
            RABBITMQ_LOG_BASE=str(home / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_CONFIG_FILE=str(home / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(home / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(home / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        log = home / "node.log"
        try:
            for command in (
                [epmd, "-port", str(epmd_port), "-address", _LOOPBACK],
                [str(_bin_dir() / "rabbitmq-server")],
            ):
                with log.open("ab") as out:
                    self._processes.append(
                        subprocess.Popen(
                            command,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env=env,
                            cwd=home,
                            start_new_session=True,  # its own process group, stopped whole
                        )
                    )
            self._await_ready(log)
        except BaseException:
            self.stop()
            raise
        return self

    def _await_ready(self, log: Path) -> None:
        deadline = time.monotonic() + self.timeout
        server = self._processes[-1]
        while not _answers_amqp(self.port):
            if server.poll() is not None or time.monotonic() > deadline:
                what = (
                    f"exited with status {server.returncode}"
                    if server.poll() is not None
                    else f"did not accept connections within {self.timeout:g} s"
                )
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise RabbitMQStartFailed(f"RabbitMQ on port {self.port} {what}:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node and its epmd (SIGTERM, then SIGKILL), and delete its data."""
        for process in reversed(self._processes):
            for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what the group left behind
        self._processes.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
