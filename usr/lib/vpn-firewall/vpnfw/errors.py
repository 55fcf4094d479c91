"""Errors that point at a place in the configuration."""

from collections import namedtuple


class Pos(namedtuple("Pos", "file line col")):
    """A place in a config file: 1-based line and column."""

    __slots__ = ()

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
