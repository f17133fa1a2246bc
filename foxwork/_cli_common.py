"""What every `foxwork` subcommand shares: the URL variable and the usage error."""

from __future__ import annotations

__all__ = ["ENV_URL", "CommandLineError"]

#: Environment variable read for the broker URL when `--url` is not given.
ENV_URL = "FOXWORK_URL"


class CommandLineError(Exception):
    """A usage or configuration problem: printed as one line, exit code 2."""
