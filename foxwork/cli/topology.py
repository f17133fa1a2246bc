"""`foxwork topology plan | apply`: what foxwork declares for its queues, checked against the
broker before anything runs, and declared on demand.

`plan` declares nothing. It asks the broker about each object with a passive declare (does
it exist?) and, for one that exists, with foxwork's own declaration on a throwaway channel:
an equivalent declaration is a no-op, a conflicting one is refused with PRECONDITION_FAILED,
which closes only that channel. AMQP cannot read a queue's arguments, so this is all it can
know: `rabbitmqctl list_queues name arguments policy` shows the rest. For a queue that
exists with other arguments it prints the `rabbitmqctl set_policy` that gives it
dead-lettering to `Q-dlq` without deleting it, and the advice to attach to it passively.

`apply` declares what `plan` lists, in the order `foxwork run` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from typing import Literal, TextIO

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel

from .._redact import redact, redact_url
from ..backends.rabbitmq._io import TRANSPORT_ERRORS
from ..backends.rabbitmq.config import QueueType, RabbitMQConsumerConfig, TopologyMode
from ..backends.rabbitmq.connection import connect_first
from ..backends.rabbitmq.topology import Declaration, Topology, policy_command, vhost_of
from ..errors import BackendError, ConfigurationError, TopologyConflict
from .common import ENV_URL, EXIT_OK, CommandLineError, Subparsers, add_log_level

__all__ = ["add_topology_command"]

#: `plan`'s exit code when applying would be refused (a conflict, a missing passive queue).
EXIT_REFUSED = 1

#: What went wrong with one object: it exists with other arguments, a passive queue is
#: missing, or the broker refused for another reason (permissions, an exclusive queue).
_Problem = Literal["conflict", "missing", "error"] | None


def add_topology_command(subparsers: Subparsers) -> None:
    """Add `foxwork topology plan` and `foxwork topology apply`."""
    parser = subparsers.add_parser(
        "topology",
        help="show (plan) or declare (apply) the queues and exchanges foxwork needs",
        description=(
            "Show the queues, exchanges and bindings foxwork declares for its queues and "
            "check them against the broker (plan), or declare them (apply)."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    plan = actions.add_parser(
        "plan",
        help="show what foxwork would declare, and what the broker would refuse",
        description=(
            "Declares nothing. Exit status 0 when apply would succeed, 1 when the broker "
            "would refuse something (a queue that exists with other arguments: the "
            "rabbitmqctl set_policy that gives it dead-lettering is printed; a passive "
            "queue that does not exist)."
        ),
    )
    apply = actions.add_parser(
        "apply",
        help="declare it all (as foxwork run does at start-up)",
        description="Declare what plan shows. Exit status 2 when the broker refuses something.",
    )
    for sub, handler in ((plan, _plan), (apply, _apply)):
        sub.add_argument(
            "--queue",
            action="append",
            required=True,
            metavar="NAME",
            help="a queue foxwork consumes (repeatable)",
        )
        sub.add_argument("--url", help=f"AMQP URL of the broker (default: ${ENV_URL})")
        sub.add_argument(
            "--topology",
            choices=[m.value for m in TopologyMode],
            default=TopologyMode.DECLARE.value,
            help="declare the queues, or attach to existing ones passively (default: declare)",
        )
        sub.add_argument(
            "--queue-type",
            choices=[t.value for t in QueueType],
            default=QueueType.CLASSIC.value,
            help="the type of the queues foxwork declares (default: classic)",
        )
        sub.add_argument("--exchange", metavar="NAME", help="an exchange to bind the queues to")
        sub.add_argument(
            "--exchange-type",
            default="topic",
            metavar="TYPE",
            help="direct, topic, fanout or headers (default: topic)",
        )
        sub.add_argument(
            "--binding-key",
            action="append",
            dest="binding_keys",
            metavar="KEY",
            help="a routing key binding the queues to --exchange (repeatable; default: the "
            "queue name)",
        )
        sub.add_argument(
            "--delivery-limit",
            type=int,
            metavar="N",
            help="quorum queues: deliveries before the broker dead-letters a message",
        )
        add_log_level(sub, "WARNING")
        sub.set_defaults(handler=handler)


def _config(args: argparse.Namespace) -> RabbitMQConsumerConfig:
    url = args.url or os.environ.get(ENV_URL)
    if not url:
        raise CommandLineError(f"no broker URL: pass --url amqp://... or set ${ENV_URL}")
    fields: dict[str, object] = {
        "url": url,
        "queue": args.queue,
        "topology": args.topology,
        "queue_type": args.queue_type,
        "exchange": args.exchange,
        "exchange_type": args.exchange_type,
        "binding_keys": args.binding_keys or [],
        "connection_name": "foxwork topology",
    }
    if args.delivery_limit is not None:
        fields["delivery_limit"] = args.delivery_limit
    try:
        return RabbitMQConsumerConfig(**fields)
    except ConfigurationError as exc:
        raise CommandLineError(str(exc)) from None


def _plan(args: argparse.Namespace) -> int:
    refused = _run(_config(args), apply=False, out=sys.stdout)
    return EXIT_REFUSED if refused else EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    refused = _run(_config(args), apply=True, out=sys.stdout)
    if refused:
        raise CommandLineError(
            f"the broker refused the topology of {', '.join(map(repr, refused))} (see above)"
        )
    return EXIT_OK


def _run(config: RabbitMQConsumerConfig, *, apply: bool, out: TextIO) -> list[str]:
    async def main() -> list[str]:
        try:
            connection, url = await connect_first(
                config.urls,
                config,
                connection_name="foxwork topology",
                failure="cannot connect to RabbitMQ: ",
            )
        except BackendError as exc:
            raise CommandLineError(redact(str(exc))) from None
        try:
            return await _Report(config, connection, url, out).run(apply=apply)
        finally:
            with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                await connection.close()

    return asyncio.run(main())


@dataclasses.dataclass
class _Report:
    config: RabbitMQConsumerConfig
    connection: AbstractConnection
    url: str
    out: TextIO

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextlib.asynccontextmanager
    async def _channel(self) -> AsyncIterator[AbstractChannel]:
        """A channel for one declaration: a refusal closes it, and only it."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            yield await channel.get_underlay_channel()
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*TRANSPORT_ERRORS, TimeoutError):
                    await channel.close()

    async def run(self, *, apply: bool) -> list[str]:
        vhost = vhost_of(self.url)
        self.line(f"{'applying' if apply else 'plan'}: vhost {vhost!r} on {redact_url(self.url)}")
        if not apply:
            self.line(
                "(AMQP cannot read a queue's arguments: 'exists' means the broker accepted "
                "foxwork's declaration as equivalent; `rabbitmqctl list_queues name "
                "arguments policy` shows them)"
            )
        topology = Topology(self.config)
        refused = []
        for queue in self.config.queues:
            settings = self.config.settings_for(queue)
            self.line()
            self.line(f"queue {queue!r} (topology {settings.topology}, {settings.queue_type})")
            problems: list[tuple[Declaration, _Problem]] = []
            for step in topology.plan(queue):
                status, problem = await (
                    self._apply(topology, step, vhost) if apply else self._check(topology, step)
                )
                self.line(f"  {step.describe()}: {status}")
                if problem is not None:
                    problems.append((step, problem))
                    if apply:
                        break  # as foxwork run: nothing more is declared for this queue
            if self.config.enable_delayed_retry:
                names = self.config.names(queue)
                self.line(
                    f"  queues   '{names.retry_queue_prefix}-<delay>ms': one per retry delay, "
                    f"declared when a retry needs it (dead-lettered back to {queue!r})"
                )
            if problems:
                refused.append(queue)
            for step, problem in problems:
                if problem != "error":
                    self._advise(topology, step, vhost)
        return refused

    async def _check(self, topology: Topology, step: Declaration) -> tuple[str, _Problem]:
        """What the broker says about `step`, declaring nothing new."""
        if step.kind == "binding":
            return "would be bound (bindings cannot be read over AMQP)", None
        try:
            async with self._channel() as channel:
                if step.kind == "exchange":
                    await channel.exchange_declare(step.name, passive=True)
                else:
                    await channel.queue_declare(step.name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            if step.passive:
                return "MISSING: foxwork run refuses to start (it never creates it)", "missing"
            return "would be declared", None
        except aiormq.exceptions.ChannelClosed as exc:  # access refused, exclusive, ...
            return f"CANNOT CHECK: {redact(str(exc))}", "error"
        if step.passive:
            return "exists", None
        try:
            async with self._channel() as channel:
                # Equivalent: a no-op; conflicting: PRECONDITION_FAILED closes this channel.
                await topology.apply(channel, step)
        except TopologyConflict as exc:
            return f"CONFLICT: {_first_clause(str(exc))}", "conflict"
        except aiormq.exceptions.ChannelClosed as exc:
            return f"CANNOT CHECK: {redact(str(exc))}", "error"
        return "exists", None

    async def _apply(
        self, topology: Topology, step: Declaration, vhost: str
    ) -> tuple[str, _Problem]:
        try:
            async with self._channel() as channel:
                await topology.apply(channel, step, vhost=vhost)
        except TopologyConflict as exc:
            return f"REFUSED: {_first_clause(str(exc))}", (
                "missing" if step.passive else "conflict"
            )
        except aiormq.exceptions.ChannelClosed as exc:  # access refused, exclusive, ...
            return f"REFUSED: {redact(str(exc))}", "error"
        if step.kind == "binding":
            return "bound", None
        return "exists" if step.passive else "declared", None

    def _advise(self, topology: Topology, step: Declaration, vhost: str) -> None:
        queue = step.name
        if step.passive:
            self.line(
                f"  -> create {queue!r} first (or start the application that declares it), "
                "check the name, or use --topology declare"
            )
            return
        if not step.main:
            self.line(
                f"  -> {queue!r} exists with other arguments: delete it (after moving its "
                "messages), or change the setting that declares it"
            )
            return
        names = self.config.names(queue)
        self.line(
            f"  -> {queue!r} exists with other arguments, and foxwork cannot redeclare it "
            "without deleting it. Attach to it as it is: --topology passive (or "
            "topology='passive' in RabbitMQConsumerConfig / QueueSettings); foxwork then "
            f"dead-letters to {names.dead_letter_queue!r} by confirmed copies. To have the "
            f"broker dead-letter to {names.dead_letter_queue!r} too (rejections, a "
            "quorum queue's delivery limit), without deleting the queue:"
        )
        self.line(f"     {policy_command(queue, topology.main_queue_arguments(names), vhost)}")
        self.line(
            "     (one policy applies to a queue at a time: if it has one, add these keys to "
            "it instead; arguments the queue was declared with take precedence)"
        )


def _first_clause(text: str) -> str:
    # The conflict's own advice (delete it, ...) is replaced by `_advise`.
    return text.split(": ", 1)[0] if text.startswith(("queue '", "exchange '")) else text
