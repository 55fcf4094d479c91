"""Reading the config directory: trusted files only, in lexical order, merged into one.

Definitions are evaluated in file order, so a later '@def' overrides an earlier one
and may extend it ('@def $LAN_NETS = ($LAN_NETS 10.9.0.0/16);'). Rules are compiled
afterwards, so they see each variable's final value wherever they stand.

'@include' is resolved here, relative to the including file, a directory ('dir/') meaning
its files in lexical order; what it includes must be as trusted as the config itself, and
nothing is ever run (ferm's 'command|' is refused).
"""

import os
import stat
from collections import namedtuple

from . import inputs
from .variables import Variables
from .errors import ConfigError, Pos
from .parser import Def, FuncDef, Include, parse

MAX_INCLUDE_DEPTH = 16


# files: paths read, in order; variables: Variables; statements: of every file, in order
Config = namedtuple("Config", "files variables statements")


def config_files(directory: str) -> list:
    try:
        names = inputs.listing(directory)
    except FileNotFoundError:
        raise ConfigError(Pos(directory, 1, 1), "the config directory does not exist") from None
    except OSError as e:
        raise ConfigError(Pos(directory, 1, 1), f"cannot read the config directory: {e.strerror}") from None
    _check_trusted(directory, "directory")
    paths = []
    for name in names:
        if not name.endswith(".conf") or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(Pos(path, 1, 1), f"cannot read: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            continue
        _check_trusted(path, "file")
        paths.append(path)
    return paths


def _check_trusted(path: str, what: str) -> None:
    """A firewall config that someone else may edit is no firewall: refuse it."""
    try:
        why = inputs.untrusted(inputs.owner(path))
    except OSError as e:
        raise ConfigError(Pos(path, 1, 1), f"cannot read: {e.strerror}") from None
    if why:
        fix = "chown root" if "owned" in why else "chmod go-w"
        raise ConfigError(Pos(path, 1, 1), f"the config {what} {why}: refusing to use it; run '{fix} {path}'")


def read_config(directory: str) -> Config:
    variables = Variables()
    statements = []
    paths = config_files(directory)
    for path in paths:
        statements += _top_level(_parse_file(path), path, variables, (os.path.realpath(path),))
    return Config(tuple(paths), variables, tuple(statements))


def _parse_file(path: str) -> tuple:
    try:
        data = inputs.read(path)
        # a byte-order mark, as Notepad and some editors write: not part of the text
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ConfigError(Pos(path, 1, 1), f"not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(Pos(path, 1, 1), f"cannot read: {e.strerror}") from None
    return parse(text, path)


def _top_level(nodes, path: str, variables, chain: tuple) -> list:
    """A file's statements; its top-level definitions (and an included file's) made global."""
    statements = []
    for node in nodes:
        if isinstance(node, Def):
            variables.define(node.name, variables.evaluate(node.value), node.pos)
        elif isinstance(node, FuncDef):
            variables.functions[node.name] = node
        elif isinstance(node, Include):
            for included in _included(node, variables, chain):
                statements += _top_level(_parse_file(included), included, variables,
                                         chain + (os.path.realpath(included),))
        else:
            statements.append(_nested(node, variables, chain))
    return statements


def _nested(node, variables, chain):
    """A statement or function with the @includes inside its blocks replaced by what they include."""
    body = getattr(node, "body", None)
    if body is None:
        return node
    out = []
    for child in body:
        if isinstance(child, Include):
            for included in _included(child, variables, chain):
                inner = chain + (os.path.realpath(included),)
                out += [_nested(n, variables, inner) for n in _parse_file(included)]
        else:
            out.append(_nested(child, variables, chain))
    return node._replace(body=tuple(out))


def _included(node: Include, variables, chain: tuple) -> list:
    """The files an '@include' names, checked like the config's own."""
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(node.pos, f"@include nests deeper than {MAX_INCLUDE_DEPTH} files")
    base = os.path.dirname(node.pos.file)
    found = []
    for atom in variables.expand(node.value):
        name = atom.text
        if name.rstrip().endswith("|"):
            raise ConfigError(atom.pos, "'@include \"command|\"' runs a program, which vpn-firewall never does "
                                        "(nothing runs a program at boot): include a file")
        path = name if os.path.isabs(name) else os.path.join(base, name)
        if name.endswith("/"):
            found += _directory(path, atom.pos)
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            raise ConfigError(atom.pos, f"cannot include {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(atom.pos, f"cannot include {path}: not a file (a directory is written with a "
                                        "trailing '/')")
        _check_trusted(path, "file")
        found.append(path)
    for path in found:
        if os.path.realpath(path) in chain:
            raise ConfigError(node.pos, f"{path} includes itself (by way of {' -> '.join(chain)})")
    return found


def _directory(path: str, pos) -> list:
    try:
        names = inputs.listing(path)
    except OSError as e:
        raise ConfigError(pos, f"cannot include {path}: {e.strerror}") from None
    _check_trusted(path, "directory")
    files = []
    for name in names:
        if name.startswith(".") or name.endswith("~") or ".dpkg-" in name:
            continue
        full = os.path.join(path, name)
        st = os.stat(full)
        if stat.S_ISREG(st.st_mode):
            _check_trusted(full, "file")
            files.append(full)
    return files

