"""What each keyword of a rule does: handlers that narrow the scope a rule is built in
(each yields (scope, next index) once per alternative of a list), the options of match
modules, and the directives that steer the walk itself (@if, @subchain, policy, jump).

The compiler (compiler.py) walks a statement's elements and calls these; they call back
only the compiler's public interface: values() (a keyword's values), narrow() (a rule to
fewer families), emit() (a rule out), body() and walk() (a block's statements, the rest of
a statement), set_auto() (@subchain's protocol), warn(), and the state the directives share
with it: vars, services, jumps, subchains, deferred, auto_chains, auto_names, emitted,
generation, if_false.
"""

import re

from . import matches as M, values as V
from .errors import ConfigError
from .functions import truth
from .model import BUILTIN_CHAINS, CHAIN_PREFIX, MAX_CHAIN_NAME, USER_CHAIN, our_chain
from .parser import Atom, Bang

USER_CHAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Keywords that stand for a module's option without 'mod' before them, as ferm allows.
IMPLICIT = {"comment": "comment", "sports": "multiport", "dports": "multiport"}


def only(scope, families):
    return scope._replace(families=frozenset(families) & scope.families)


def is_user_chain(chain) -> bool:
    return chain is not None and chain.startswith(USER_CHAIN)


def ferm_chain(chain):
    """A chain as the user named it ($CHAIN)."""
    return chain[len(USER_CHAIN):] if is_user_chain(chain) else chain


def user_chain(atom) -> str:
    """A user's chain name, in our namespace: U-NAME, printed VPNFW-U-NAME."""
    name = atom.text
    if not USER_CHAIN_NAME.match(name):
        raise ConfigError(atom.pos, f"expected a chain name (letters, digits, '_', '.', '-'), got {name!r}")
    if len(CHAIN_PREFIX + USER_CHAIN + name) > MAX_CHAIN_NAME:
        longest = MAX_CHAIN_NAME - len(CHAIN_PREFIX + USER_CHAIN)
        raise ConfigError(atom.pos, f"chain name {name!r} is too long: vpn-firewall keeps your chains as "
                                    f"{CHAIN_PREFIX}{USER_CHAIN}NAME, so NAME may have {longest} characters")
    return USER_CHAIN + name


# -- keyword handlers: each yields (scope, next index) once per alternative ---------------
def _domain(c, scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    names = []
    for atom in atoms:
        if atom.text in ("arp", "eb"):
            raise ConfigError(atom.pos, f"domain {atom.text} is out of scope: vpn-firewall is an IPv4 and IPv6 "
                                        "kill switch (iptables and ip6tables); ARP and bridge filtering are not "
                                        "part of it")
        if atom.text not in V.FAMILIES:
            raise ConfigError(atom.pos, f"expected domain ip or ip6, got {atom.text!r}")
        names.append(atom.text)
    families = frozenset(names) & scope.families
    if not families:
        raise ConfigError(kw.pos, f"domain {' '.join(names)} inside a block for another domain")
    yield scope._replace(families=families, domain=names[0] if len(families) == 1 else None), j


def _table(c, scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    for atom in atoms:
        if atom.text not in BUILTIN_CHAINS:
            raise ConfigError(atom.pos, f"expected table {', '.join(BUILTIN_CHAINS)}, got {atom.text!r}")
        yield scope._replace(table=atom.text, chain=None), j


def _chain(c, scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    for atom in atoms:
        if atom.text in BUILTIN_CHAINS[scope.table]:
            yield scope._replace(chain=atom.text), j
        elif atom.text.upper() == atom.text and atom.text in {ch for t in BUILTIN_CHAINS.values() for ch in t}:
            allowed = BUILTIN_CHAINS[scope.table]
            raise ConfigError(atom.pos, f"table {scope.table} has no chain {atom.text} ({', '.join(allowed)})")
        else:
            yield scope._replace(chain=user_chain(atom)), j


def _policy(c, scope, stmt, i: int, path: tuple) -> None:
    """policy DROP is what the kill switch does anyway; policy ACCEPT is not applied (a warning)."""
    els, kw = stmt.elements, stmt.elements[i]
    _, atoms, j = c.values(els, i + 1, kw, negatable=False)
    if len(atoms) != 1:
        raise ConfigError(kw.pos, "'policy' takes one target")
    value = atoms[0]
    if scope.chain is None or is_user_chain(scope.chain):
        raise ConfigError(kw.pos, "'policy' belongs to a built-in chain (chain INPUT policy DROP;)")
    if value.text not in ("ACCEPT", "DROP"):
        raise ConfigError(value.pos, f"expected policy ACCEPT or DROP, got {value.text!r}")
    if j != len(els) or stmt.body is not None:
        raise ConfigError(els[j].pos if j < len(els) else stmt.end, "'policy' ends its statement: expected ';'")
    if value.text == "ACCEPT" and scope.table == "filter":
        c.warn(kw.pos, f"policy ACCEPT for chain {scope.chain} is not applied: the kill switch keeps the "
                       "policies DROP, and what your rules do not accept is refused after them")
    elif value.text == "DROP" and scope.table != "filter":
        raise ConfigError(value.pos, f"policy DROP is not possible in table {scope.table} (iptables allows it in "
                                     "filter only)")
    c.emitted.update(path)


def _jump(c, scope, stmt, i: int, path: tuple) -> None:
    """jump CHAIN / goto CHAIN: to a chain of the user's, in the same table; it ends the rule."""
    els, kw = stmt.elements, stmt.elements[i]
    if scope.chain is None:
        raise ConfigError(kw.pos, "no chain for this rule: start it with 'chain INPUT' or another chain")
    _, atoms, j = c.values(els, i + 1, kw, negatable=False)
    if j != len(els) or stmt.body is not None:
        raise ConfigError(els[j].pos if j < len(els) else stmt.end, f"'{kw.text} CHAIN' ends its rule: expected ';'")
    for atom in atoms:
        if atom.text in {ch for t in BUILTIN_CHAINS.values() for ch in t}:
            raise ConfigError(atom.pos, f"cannot {kw.text} to the built-in chain {atom.text}")
        chain = user_chain(atom)
        c.jumps += [(family, scope.table, chain, atom.pos) for family in scope.families]
        c.emit(scope, our_chain(chain), lambda family: (), kw, path, goto=kw.text == "goto")


def _header(flag: str, parse):
    def handler(c, scope, els, i, kw):
        if any(h[1] == flag for h in scope.header):
            raise ConfigError(kw.pos, f"'{kw.text}' given twice in one rule")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value, fits = parse(atom)
            families = scope.families
            if fits is not None:
                families = c.narrow(scope, families, fits, atom.pos, f"address {atom.text}", els)
                if families is None:
                    continue
            yield scope._replace(families=families, header=scope.header + ((negated, flag, value, kw.pos),)), j
    return handler


def _address(atom):
    family, net = V.address(atom)
    return net, frozenset((family,))


def _interface(atom):
    return V.interface(atom), None


def _fragment(c, scope, els, i, kw, negated=False):
    families = c.narrow(scope, scope.families, frozenset((V.IP,)), kw.pos, "fragment (IPv4's -f)", els)
    if families is not None:
        yield scope._replace(families=families, header=scope.header + ((negated, "-f", None, kw.pos),)), i


def _proto(c, scope, els, i, kw):
    if scope.proto is not None:
        raise ConfigError(kw.pos, "'proto' given twice in one rule")
    negated, atoms, j = c.values(els, i, kw)
    for atom in atoms:
        proto = V.protocol(atom)
        families = scope.families
        if proto in V.PROTOCOL_FAMILY and not negated:
            families = c.narrow(scope, families, frozenset((V.PROTOCOL_FAMILY[proto],)), atom.pos,
                                 f"proto {atom.text}", els)
            if families is None:
                continue
        header = scope.header if proto == "all" else scope.header + ((negated, "-p", proto, kw.pos),)
        yield scope._replace(families=families, header=header, proto=proto, proto_negated=negated,
                             auto_proto=None), j


def _realized(scope, kw):
    """A '@subchain' rule's inherited protocol, written out where a keyword needs it."""
    if scope.proto is None and scope.auto_proto is not None:
        return scope._replace(proto=scope.auto_proto, auto_proto=None,
                              header=scope.header + ((False, "-p", scope.auto_proto, kw.pos),))
    return scope


def _add_option(scope, module: str, option: tuple, pos) -> tuple:
    """Matches with an option added to the module's entry (created at its first option)."""
    matches = list(scope.matches)
    for k, (m, opts, p) in enumerate(matches):
        if m == module:
            if any(o[1] == option[1] for o in opts):
                raise ConfigError(pos, f"'{option[1][2:]}' given twice in one rule")
            matches[k] = (m, opts + (option,), p)
            return tuple(matches)
    return tuple(matches) + ((module, (option,), pos),)


def _port(option: str):
    def handler(c, scope, els, i, kw):
        scope = _realized(scope, kw)
        if scope.proto not in V.PORT_PROTOCOLS or scope.proto_negated:
            raise ConfigError(kw.pos, f"'{kw.text}' needs 'proto tcp', 'proto udp', 'proto sctp' or 'proto udplite' before it")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value = V.port(atom, scope.proto, c.services)
            yield scope._replace(matches=_add_option(scope, scope.proto, (negated, option, value), kw.pos)), j
    return handler


def _tcponly(c, scope, kw):
    scope = _realized(scope, kw)
    if scope.proto != "tcp" or scope.proto_negated:
        raise ConfigError(kw.pos, f"'{kw.text}' needs 'proto tcp' before it")
    return scope


def _syn(c, scope, els, i, kw, negated=False):
    scope = _tcponly(c, scope, kw)
    yield scope._replace(matches=_add_option(scope, "tcp", (negated, "--tcp-flags", "FIN,SYN,RST,ACK SYN"),
                                             kw.pos)), i


def _tcp_flags(c, scope, els, i, kw):
    """tcp-flags MASK COMP: two lists of flags (or words joined by commas)."""
    scope = _tcponly(c, scope, kw)
    negated, mask, j = c.values(els, i, kw, whole=True)
    _, comp, j = c.values(els, j, kw, negatable=False, whole=True)

    def flags(atoms):
        names = set()
        for atom in atoms:
            for part in atom.text.upper().split(","):
                if part == "ALL":
                    names.update(M.TCP_FLAGS)
                elif part in M.TCP_FLAGS:
                    names.add(part)
                elif part != "NONE":
                    raise ConfigError(atom.pos, f"expected TCP flags ({', '.join(M.TCP_FLAGS)}, ALL, NONE), got {part!r}")
        return ",".join(f for f in M.TCP_FLAGS if f in names) or "NONE"
    value = f"{flags(mask)} {flags(comp)}"
    yield scope._replace(matches=_add_option(scope, "tcp", (negated, "--tcp-flags", value), kw.pos)), j


def _tcp_option(c, scope, els, i, kw):
    scope = _tcponly(c, scope, kw)
    negated, atoms, j = c.values(els, i, kw)
    for atom in atoms:
        value, _ = M._number(0, 255, "a TCP option number")([atom], None)
        yield scope._replace(matches=_add_option(scope, "tcp", (negated, "--tcp-option", value), kw.pos)), j


def _icmp_type(family: str):
    proto, module, option = ("icmp", "icmp", "--icmp-type") if family == V.IP else ("ipv6-icmp", "icmp6", "--icmpv6-type")

    def handler(c, scope, els, i, kw):
        scope = _realized(scope, kw)
        if scope.proto != proto or scope.proto_negated:
            raise ConfigError(kw.pos, f"'{kw.text}' needs 'proto {'icmp' if family == V.IP else 'icmpv6'}' before it")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value = V.icmp_type(atom, family)
            yield scope._replace(matches=_add_option(scope, module, (negated, option, value), kw.pos)), j
    return handler


def _mod(c, scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    for atom in atoms:  # 'mod (state comment)' loads both
        name = atom.text
        if name in M.LEFT_OUT:
            raise ConfigError(atom.pos, f"module {name!r} is not supported: {M.LEFT_OUT[name]}")
        if name not in M.MODULES:
            import difflib  # only on this error's path

            close = difflib.get_close_matches(name, M.MODULES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(atom.pos, f"unknown module {name!r}: {hint}supported are {', '.join(sorted(M.MODULES))}")
        if not any(m == name for m, _, _ in scope.matches):
            scope = scope._replace(matches=scope.matches + ((name, (), kw.pos),))
        scope = scope._replace(module=name)
    yield scope, j


def module_option(c, scope, els, i, kw, module: str, negated_flag: bool = False):
    """An option of a module this rule loaded (or one ferm loads by itself, as 'comment')."""
    option = M.MODULES[module][kw.text]
    if not any(m == module for m, _, _ in scope.matches):
        scope = scope._replace(matches=scope.matches + ((module, (), kw.pos),))
    if option.kind == "flag":
        yield scope._replace(matches=_add_option(scope, module, (negated_flag, option.flag, None), kw.pos)), i
        return
    if negated_flag:
        raise ConfigError(kw.pos, f"put the '!' after '{kw.text}', before its value")
    negated, atoms, j = c.values(els, i, kw, whole=option.kind == "list")
    context = OptionContext(scope.proto, c.services, kw.pos)
    for group in ([atoms] if option.kind == "list" else [[a] for a in atoms]):
        value, fits = option.parse(group, context)
        families = scope.families
        if fits is not None:
            families = c.narrow(scope, families, fits, group[0].pos, f"{kw.text} {group[0].text}", els)
            if families is None:
                continue
        yield scope._replace(families=families,
                             matches=_add_option(scope, module, (negated, option.flag, value), kw.pos)), j


class OptionContext(tuple):
    """What an option's parser may need: the rule's protocol, the services, where it stands."""

    __slots__ = ()

    def __new__(cls, proto, services, pos):
        return super().__new__(cls, (proto, services, pos))

    proto = property(lambda self: self[0])
    services = property(lambda self: self[1])
    pos = property(lambda self: self[2])


def option_module(scope, keyword: str):
    """The module whose option a keyword is: the rule's modules, latest first, then ferm's implicit ones."""
    for module, _, _ in reversed(scope.matches):
        if keyword in M.MODULES.get(module, ()):
            return module
    return IMPLICIT.get(keyword)


KEYWORDS = {
    "domain": _domain,
    "table": _table,
    "chain": _chain,
    "interface": _header("-i", _interface),
    "outerface": _header("-o", _interface),
    "saddr": _header("-s", _address),
    "daddr": _header("-d", _address),
    "proto": _proto,
    "protocol": _proto,
    "sport": _port("--sport"),
    "dport": _port("--dport"),
    "syn": _syn,
    "tcp-flags": _tcp_flags,
    "tcp-option": _tcp_option,
    "fragment": _fragment,
    "icmp-type": _icmp_type(V.IP),
    "icmpv6-type": _icmp_type(V.IP6),
    "mod": _mod,
    "module": _mod,
}
# Keywords without a value, which a '!' in front of them negates (ferm's '! syn').
FLAG_KEYWORDS = {"syn": _syn, "fragment": _fragment}


# -- directives that steer the walk itself ------------------------------------------------
def _if(c, scope, stmt, i: int, path: tuple) -> None:
    """@if CONDITION rest-of-rule: the rest for the families where the condition holds (it is
    read once per family, as $DOMAIN may differ); '@else' in the next statement for the others."""
    els = stmt.elements
    if i + 1 >= len(els) or isinstance(els[i + 1], Bang):
        raise ConfigError(els[i].pos, "expected a condition after '@if'")
    holds, fails = set(), set()
    for family in sorted(scope.families):
        c.set_auto(only(scope, (family,)))
        (holds if truth(c.vars.expand(els[i + 1])) else fails).add(family)
    if holds:
        c.walk(only(scope, holds), stmt, i + 2, path)
    c.if_false = frozenset(fails)


def _else_misplaced(c, scope, stmt, i: int, path: tuple) -> None:
    raise ConfigError(stmt.elements[i].pos, "'@else' must begin the statement after an '@if'")


def _subchain(c, scope, stmt, i: int, path: tuple) -> None:
    """The rule so far jumps (or, with @gotosubchain, goes) to a new chain of the user's that
    holds the block: the block's matches are tested only once the rule's own matched."""
    els, kw = stmt.elements, stmt.elements[i]
    if scope.chain is None:
        raise ConfigError(kw.pos, f"no chain for '{kw.text}': start the rule with 'chain INPUT' or another chain")
    j = i + 1
    if j < len(els):
        _, atoms, j = c.values(els, j, kw, negatable=False)
        if len(atoms) != 1:
            raise ConfigError(kw.pos, f"'{kw.text}' takes one chain name")
        name = atoms[0]
    else:  # one name for all the alternatives of this rule
        key = (id(stmt.elements), c.generation)
        if key not in c.auto_names:
            c.auto_chains += 1
            c.auto_names[key] = f"ferm_auto_{c.auto_chains}"
        name = Atom("word", c.auto_names[key], kw.pos)
    if j != len(els) or stmt.body is None:
        raise ConfigError(kw.pos, f"'{kw.text}' is followed by a block: {kw.text} [\"NAME\"] {{ ... }}")
    chain = user_chain(name)
    c.emit(scope, our_chain(chain), lambda family: (), kw, path, goto=kw.text == "@gotosubchain")
    key = (id(stmt.elements), c.generation, chain)
    if key in c.subchains:  # another alternative of the same rule: one chain for all of them
        c.subchains[key][1] |= scope.families
        return
    inner = scope._replace(chain=chain, header=(), matches=(), module=None, proto=None, proto_negated=False,
                           auto_proto=None if scope.proto_negated else (scope.proto or scope.auto_proto))
    c.subchains[key] = entry = [inner, set(scope.families)]
    c.deferred.append(lambda: c.body(entry[0]._replace(families=frozenset(entry[1])), stmt.body, path))


DIRECTIVES = {"@if": _if, "@else": _else_misplaced, "@subchain": _subchain, "@gotosubchain": _subchain,
              "policy": _policy, "jump": _jump, "goto": _jump}
