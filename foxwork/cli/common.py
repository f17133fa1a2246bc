"""What every `foxwork` subcommand shares: the URL variable, the usage error, exit codes and
argument types."""

from __future__ import annotations

import argparse
from typing import TypeAlias

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
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: {default})",
    )
