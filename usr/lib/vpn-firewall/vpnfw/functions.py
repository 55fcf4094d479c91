"""ferm's built-in functions over values: @eq, @ne, @not, @defined, @cat, @join, @substr,
@length, @basename, @dirname, @glob, @ipfilter, @resolve.

Each takes the Variables (to read its arguments) and the Call, and gives a list of Atoms.
Truth is ferm's (Perl's): an empty list, '' and '0' are false, anything else is true.
"""

import os

from . import inputs, values as V
from .errors import ConfigError
from .parser import Atom

TRUE, FALSE = "1", ""


def truth(atoms) -> bool:
    if not atoms:
        return False
    return not (len(atoms) == 1 and atoms[0].text in ("", "0"))


def _word(text: str, pos) -> list:
    return [Atom("string", text, pos)]


def _args(call, count=None, least=None) -> tuple:
    if count is not None and len(call.args) != count:
        raise ConfigError(call.pos, f"{call.name} takes {count} argument{'s' if count != 1 else ''}, "
                                    f"not {len(call.args)}")
    if least is not None and len(call.args) < least:
        raise ConfigError(call.pos, f"{call.name} takes at least {least} argument{'s' if least != 1 else ''}")
    return call.args


def _text(variables, node, call) -> str:
    atoms = variables.expand(node)
    if len(atoms) != 1:
        raise ConfigError(getattr(node, "pos", call.pos), f"{call.name}: expected one value, not a list of {len(atoms)}")
    return atoms[0].text


def _same(variables, call) -> bool:
    a, b = _args(call, 2)
    return [x.text for x in variables.expand(a)] == [x.text for x in variables.expand(b)]


def _defined(variables, call):
    (arg,) = _args(call, 1)
    if isinstance(arg, Atom) and arg.kind == "var":
        return truth_word(variables.is_defined(arg.text), call)
    if isinstance(arg, Atom) and arg.kind == "word" and arg.text.startswith("&"):
        known = arg.text in variables.functions or any(arg.text in s for s in variables.scopes)
        return truth_word(known, call)
    raise ConfigError(call.pos, "@defined takes a variable ('$name') or a function ('&name')")


def truth_word(value: bool, call) -> list:
    return _word(TRUE if value else FALSE, call.pos)


def _substr(variables, call):
    expr, offset, length = _args(call, 3)
    text = _text(variables, expr, call)
    try:
        start, size = int(_text(variables, offset, call)), int(_text(variables, length, call))
    except ValueError:
        raise ConfigError(call.pos, "@substr: the offset and the length are numbers") from None
    start = start if start >= 0 else max(0, len(text) + start)
    return _word(text[start:start + size] if size >= 0 else text[start:size], call.pos)


def _glob(variables, call):
    base = os.path.dirname(call.pos.file)
    found = []
    for node in _args(call, least=1):
        for atom in variables.expand(node):
            pattern = atom.text if os.path.isabs(atom.text) else os.path.join(base, atom.text)
            paths = inputs.glob(pattern)
            found += [Atom("string", p, atom.pos) for p in paths]
    return found


def _ipfilter(variables, call):
    """Addresses of the current domain only (where there is one; else all: each rule goes to
    its address's family anyway)."""
    (arg,) = _args(call, 1)
    domain = variables.auto.get("DOMAIN")
    out = []
    for atom in variables.expand(arg):
        try:
            family, _ = V.address(atom)
        except ConfigError:
            out.append(atom)  # not an address: left for the keyword to judge
            continue
        if domain is None or family == domain:
            out.append(atom)
    return out


def _resolve(variables, call):
    from .pinned import resolved

    args = _args(call, least=1)
    if len(args) > 2:
        raise ConfigError(call.pos, "@resolve takes the names and at most a record type")
    kind = _text(variables, args[1], call).upper() if len(args) == 2 else None
    if kind not in (None, "A", "AAAA"):
        raise ConfigError(call.pos, f"@resolve: record type {kind} is not supported (A and AAAA are)")
    out = []
    for atom in variables.expand(args[0]):
        out += resolved(atom, kind, variables)
    return out


BUILTINS = {
    "@eq": lambda v, c: truth_word(_same(v, c), c),
    "@ne": lambda v, c: truth_word(not _same(v, c), c),
    "@not": lambda v, c: truth_word(not truth(v.expand(_args(c, 1)[0])), c),
    "@defined": _defined,
    "@cat": lambda v, c: _word("".join(a.text for n in c.args for a in v.expand(n)), c.pos),
    "@join": lambda v, c: _word(_text(v, _args(c, least=1)[0], c).join(
        a.text for n in c.args[1:] for a in v.expand(n)), c.pos),
    "@substr": _substr,
    "@length": lambda v, c: _word(str(len(_text(v, _args(c, 1)[0], c))), c.pos),
    "@basename": lambda v, c: _word(os.path.basename(_text(v, _args(c, 1)[0], c)), c.pos),
    "@dirname": lambda v, c: _word(os.path.dirname(_text(v, _args(c, 1)[0], c)), c.pos),
    "@glob": _glob,
    "@ipfilter": _ipfilter,
    "@resolve": _resolve,
}


def call_builtin(variables, call) -> list:
    fn = BUILTINS.get(call.name)
    if fn is None:
        raise ConfigError(call.pos, f"unknown function {call.name}: the built-in ones are {', '.join(BUILTINS)}")
    return fn(variables, call)

