"""`foxwork publish` as a user runs it: JSON lines piped into a subprocess, published to the
session broker with confirms."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from foxwork.backends.rabbitmq import RabbitMQBackend
from tests.apps.process import ROOT, Completed, foxwork_command, foxwork_env, run_foxwork

from .support import RabbitProbe

#: Seconds the command gets to finish.
TIMEOUT = 30.0


async def publish(*args: str, stdin: str, url: str | None = None) -> Completed:
    """`foxwork publish ARGS` with `stdin` piped in (and $FOXWORK_URL set to `url`)."""
    env = foxwork_env() if url is None else foxwork_env(FOXWORK_URL=url)
    process = await asyncio.create_subprocess_exec(
        *foxwork_command(),
        "publish",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            stdout, stderr = await process.communicate(stdin.encode())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


async def test_json_lines_from_stdin_are_published_to_a_queue_and_confirmed(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given a declared queue
    await backend.declare(queue_name)
    lines = [json.dumps({"order": i}) for i in range(50)]

    # When 50 JSON lines (and a blank one) are piped in, with a header
    result = await publish(
        "--queue", queue_name, "--header", "source=import", stdin="\n".join(lines) + "\n\n",
        url=rabbitmq_url,
    )  # fmt: skip

    # Then every one was confirmed, exit code 0, and they are in the queue in order
    assert result.code == 0, result.output
    assert "published 50 of 50 message(s); 0 failed" in result.stdout
    received = await probe.take(queue_name)
    assert [json.loads(r.body) for r in received] == [{"order": i} for i in range(50)]
    assert all(r.headers["source"] == "import" for r in received)
    assert all(r.properties.content_type == "application/json" for r in received)


async def test_a_bad_line_is_reported_with_its_number_and_fails_the_command(
    rabbitmq_url: str, backend: RabbitMQBackend, probe: RabbitProbe, queue_name: str
) -> None:
    # Given three lines, the second not JSON
    await backend.declare(queue_name)

    # When they are published
    result = await publish(
        "--queue", queue_name, "--url", rabbitmq_url, stdin='{"a": 1}\n{oops\n[2]\n'
    )

    # Then the bad line is reported and counted, the others are published, exit code 1
    assert result.code == 1, result.output
    assert "line 2: not JSON" in result.stderr
    assert "published 2 of 3 message(s); 1 failed" in result.stdout
    assert [r.body for r in await probe.take(queue_name)] == [b'{"a":1}', b"[2]"]


async def test_messages_the_broker_does_not_confirm_fail_the_command(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    # Given a file of lines for an exchange that does not exist
    source = tmp_path / "lines.jsonl"
    source.write_text('{"a": 1}\n{"a": 2}\n')

    # When they are published
    result = await run_foxwork(
        "publish", "--exchange", "no-such-exchange", "--routing-key", "k",
        "--file", str(source), "--url", rabbitmq_url,
        timeout=TIMEOUT,
    )  # fmt: skip

    # Then each failure names the line and the exchange, and the exit code is 1
    assert result.code == 1, result.output
    assert "line 1: not published" in result.stderr and "no-such-exchange" in result.stderr
    assert "published 0 of 2 message(s); 2 failed" in result.stdout
