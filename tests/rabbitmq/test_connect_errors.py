"""What `foxwork run` and `foxwork dlq list` say when the broker answers but refuses the
connection: a wrong password, a vhost that does not exist, a user without permission on the
vhost. One line naming the cause and what to change, the password redacted, and no "start
the broker" hint (the broker is running); with `--wait-for-broker`, a WARNING naming the
cause for every failed attempt."""

from __future__ import annotations

import re
import signal
from urllib.parse import quote, urlsplit, urlunsplit

from tests.apps.process import FoxworkProcess, run_foxwork
from tests.harness.rabbitmq import RabbitMQNode

from .conftest import UserFactory

WRONG_PASSWORD = "not-the-password-42"
LOGIN_REFUSED = "the broker refused the login of user 'guest'"
NO_VHOST = "vhost 'no-such-vhost' does not exist or is not permitted for user 'guest'"


def with_login(url: str, user: str, password: str, vhost: str = "/") -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user)}:{quote(password)}@{parts.hostname}:{parts.port}"
    path = "/" + quote(vhost, safe="") if vhost != "/" else "/"
    return urlunsplit(parts._replace(netloc=netloc, path=path))


def guest_with_wrong_password(rabbitmq_url: str) -> str:
    return with_login(rabbitmq_url, "guest", WRONG_PASSWORD)


def guest_on_missing_vhost(rabbitmq_url: str) -> str:
    return with_login(rabbitmq_url, "guest", "guest", "no-such-vhost")


async def run_once(url: str) -> tuple[int, str]:
    done = await run_foxwork("run", "tests.apps.slow:pool", "--url", url, "--queue", "orders")
    return done.code, done.output


def assert_one_clear_line(output: str, cause: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert cause in lines[0], output
    assert WRONG_PASSWORD not in output
    assert "start the broker" not in output
    assert "Connection.Close" not in output  # the client's frame dump is no explanation


async def test_run_with_a_wrong_password_says_the_login_was_refused(rabbitmq_url: str) -> None:
    code, output = await run_once(guest_with_wrong_password(rabbitmq_url))

    assert code == 2, output
    assert_one_clear_line(output, LOGIN_REFUSED)
    assert "check the user name and password" in output
    assert "amqp://guest:***@" in output


async def test_run_on_a_missing_vhost_names_the_vhost(rabbitmq_url: str) -> None:
    code, output = await run_once(guest_on_missing_vhost(rabbitmq_url))

    assert code == 2, output
    assert_one_clear_line(output, NO_VHOST)


async def test_run_as_a_user_without_permission_on_the_vhost_names_the_vhost(
    rabbitmq_node: RabbitMQNode, make_user: UserFactory
) -> None:
    # Given a user whose permissions on "/" were taken away
    user, url = make_user()
    rabbitmq_node.ctl("clear_permissions", "-p", "/", user)

    code, output = await run_once(url)

    assert code == 2, output
    assert_one_clear_line(output, f"vhost '/' does not exist or is not permitted for user {user!r}")
    assert f"{user}-password" not in output


async def test_dlq_list_with_a_wrong_password_says_the_login_was_refused(
    rabbitmq_url: str,
) -> None:
    done = await run_foxwork("dlq", "list", "--url", guest_with_wrong_password(rabbitmq_url), "q")

    assert done.code != 0, done.output
    assert_one_clear_line(done.output, LOGIN_REFUSED)


async def test_dlq_list_on_a_missing_vhost_names_the_vhost(rabbitmq_url: str) -> None:
    done = await run_foxwork("dlq", "list", "--url", guest_on_missing_vhost(rabbitmq_url), "q")

    assert done.code != 0, done.output
    assert_one_clear_line(done.output, NO_VHOST)


async def test_wait_for_broker_warns_of_the_refusal_at_every_attempt(rabbitmq_url: str) -> None:
    for url, cause in (
        (guest_with_wrong_password(rabbitmq_url), LOGIN_REFUSED),
        (guest_on_missing_vhost(rabbitmq_url), NO_VHOST),
    ):
        async with FoxworkProcess(
            "run", "tests.apps.slow:pool", "--url", url, "--queue", "orders", "--wait-for-broker"
        ) as foxwork:
            # Then every failed attempt is a WARNING that names the cause
            for attempt in (1, 2):
                await foxwork.wait_for(
                    rf"WARNING .*reconnect attempt {attempt} failed .*{re.escape(cause)}"
                )
            foxwork.send_signal(signal.SIGTERM)
            assert await foxwork.wait() == 0, foxwork.output
        assert WRONG_PASSWORD not in foxwork.output
        assert "Connection.Close" not in foxwork.output
