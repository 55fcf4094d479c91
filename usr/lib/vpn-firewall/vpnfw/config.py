"""Reading the config directory: trusted files only, in lexical order, merged into one.

Definitions are evaluated in file order, so a later '@def' overrides an earlier one
and may extend it ('@def $LAN_NETS = ($LAN_NETS 10.9.0.0/16);'). Rules are compiled
afterwards, so they see each variable's final value wherever they stand.
"""

import os
import stat
from collections import namedtuple

from .compiler import Variables
from .errors import ConfigError, Pos
from .parser import Def, parse


# files: paths read, in order; variables: Variables; statements: of every file, in order
Config = namedtuple("Config", "files variables statements")


def config_files(directory: str) -> list:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        raise ConfigError(Pos(directory, 1, 1), "the config directory does not exist") from None
    except OSError as e:
        raise ConfigError(Pos(directory, 1, 1), f"cannot read the config directory: {e.strerror}") from None
    _check_trusted(directory, os.stat(directory), "directory")
    paths = []
    for name in sorted(names):
        if not name.endswith(".conf") or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(Pos(path, 1, 1), f"cannot read: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            continue
        _check_trusted(path, st, "file")
        paths.append(path)
    return paths


def _check_trusted(path: str, st: os.stat_result, what: str) -> None:
    """A firewall config that someone else may edit is no firewall: refuse it."""
    if st.st_uid != 0:
        raise ConfigError(Pos(path, 1, 1), f"the config {what} is owned by uid {st.st_uid}, not root: refusing to use it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            Pos(path, 1, 1),
            f"the config {what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"refusing to use it; run 'chmod go-w {path}'",
        )


def read_config(directory: str) -> Config:
    variables = Variables()
    statements = []
    paths = config_files(directory)
    for path in paths:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(Pos(path, 1, 1), f"not valid UTF-8 (byte {e.start})") from None
        except OSError as e:
            raise ConfigError(Pos(path, 1, 1), f"cannot read: {e.strerror}") from None
        for node in parse(text, path):
            if isinstance(node, Def):
                variables.define(node.name, variables.evaluate(node.value), node.pos)
            else:
                statements.append(node)
    return Config(tuple(paths), variables, tuple(statements))
