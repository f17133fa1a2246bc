"""What every `foxwork` subcommand shares: the URL variable, the usage error, exit codes and
argument types."""

from __future__ import annotations

import argparse
import os
from typing import TypeAlias

from ..logs import ENV_LOG_FORMAT, LOG_FORMATS

__all__ = [
    "ENV_URL",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG_LEVELS",
    "CommandLineError",
    "Subparsers",
    "add_log_level",
    "non_negative_float",
    "positive_int",
]

#: Environment variable read for the broker URL when `--url` is not given.
ENV_URL = "FOXWORK_URL"


class CommandLineError(Exception):
    """A usage or configuration problem: printed as one line, exit code 2."""


EXIT_OK = 0
EXIT_USAGE = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more seconds")
    return value


def add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    """`--log-level` and `--log-format` (default: $FOXWORK_LOG_FORMAT, else text)."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: {default})",
    )
    env_format = os.environ.get(ENV_LOG_FORMAT, "").strip().lower()
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=env_format if env_format in LOG_FORMATS else "text",
        help=(
            "text lines, or json: one JSON object per line with the pool, queue, message id, "
            f"attempt and worker of each line (default: ${ENV_LOG_FORMAT}, else text)"
        ),
    )
