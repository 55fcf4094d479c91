"""Errors that point at a place in the configuration."""

from typing import NamedTuple


class Pos(NamedTuple):
    """A place in a config file: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class ConfigError(Exception):
    """The configuration is wrong; the message names file:line:col."""

    def __init__(self, pos: Pos, message: str):
        super().__init__(f"{pos}: {message}")
        self.pos = pos
        self.message = message


class LoadError(Exception):
    """The kernel refused a ruleset, or what it holds is not what we compiled."""


class VerifyError(LoadError):
    """A restore went through, but the kernel holds something other than what we sent."""
