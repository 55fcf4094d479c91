"""Meaning of ferm-style rule statements: parsed statements in, Rule data out.

A statement is read left to right; each keyword narrows a scope (family, table,
chain, matches) and a list of values multiplies the rule, as in ferm: the first list
is the outermost loop. A block applies its statements inside the scope built so far.

Beyond ferm: a rule with no 'domain' goes to both families, and an address, an ICMP
type or protocol sends it to its own family only, so one list may mix IPv4 and IPv6.
"""

from collections import namedtuple

from . import values as V
from .errors import ConfigError
from .model import BUILTIN_CHAINS, Rule
from .parser import Atom, Bang, ListNode

HEADER_ORDER = {"-s": 0, "-d": 1, "-i": 2, "-o": 3, "-p": 4}
CTSTATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4,
              "warn": 4, "notice": 5, "info": 6, "debug": 7}
REJECT_TYPES = {
    V.IP: ("icmp-net-unreachable", "icmp-host-unreachable", "icmp-port-unreachable",
           "icmp-proto-unreachable", "icmp-net-prohibited", "icmp-host-prohibited",
           "icmp-admin-prohibited"),
    V.IP6: ("icmp6-no-route", "icmp6-adm-prohibited", "icmp6-addr-unreachable",
            "icmp6-port-unreachable"),
}
DEFAULT_REJECT = {V.IP: "icmp-port-unreachable", V.IP6: "icmp6-port-unreachable"}
TABLE_TARGETS = {
    "filter": ("ACCEPT", "DROP", "REJECT", "LOG", "RETURN"),
    "nat": ("ACCEPT", "RETURN", "LOG", "MASQUERADE"),
}
ALL_TARGETS = ("ACCEPT", "DROP", "REJECT", "LOG", "RETURN", "MASQUERADE")
MODULES = ("conntrack", "owner", "comment")
NO_INPUT_INTERFACE = ("OUTPUT", "POSTROUTING")
NO_OUTPUT_INTERFACE = ("INPUT", "PREROUTING")


class Scope(namedtuple("Scope", [
    "families",  # frozenset
    "domain",  # the one family a 'domain' keyword named, if only one; else None
    "table",
    "chain",  # or None
    "header",  # (negated, flag, value, pos)
    "matches",  # (module, options, pos)
    "module",  # or None
    "proto",  # or None
    "proto_negated",
])):
    __slots__ = ()


ROOT = Scope(frozenset(V.FAMILIES), None, "filter", None, (), (), None, None, False)


class Variables:
    """Values of @def variables (an Atom, or a list of Atoms) and which were used."""

    def __init__(self):
        self.values = {}
        self.defined_at = {}
        self.used = set()

    def define(self, name: str, value, pos) -> None:
        self.values[name] = value
        self.defined_at[name] = pos

    def expand(self, atom: Atom) -> list:
        """The atoms a value stands for, with variables replaced."""
        if atom.kind != "var":
            return [atom]
        if atom.text not in self.values:
            raise ConfigError(atom.pos, f"undefined variable '${atom.text}'")
        self.used.add(atom.text)
        value = self.values[atom.text]
        return list(value) if isinstance(value, list) else [value]

    def evaluate(self, node) -> object:
        """The value of a @def right-hand side, evaluated where it stands."""
        if isinstance(node, ListNode):
            out = []
            for item in node.items:
                out.extend(self.expand(item))
            return out
        expanded = self.expand(node)
        if node.kind == "var" and isinstance(self.values[node.text], list):
            return expanded
        return expanded[0]


class Compiler:
    def __init__(self, variables: Variables, services: V.Services):
        self.vars = variables
        self.services = services
        self.rules = []
        self.emitted = set()  # statements (by id of their elements) that produced a rule
        self.skipped = {}  # statement -> why one of its combinations fit no family

    def compile(self, statements) -> list:
        for stmt in statements:
            self._walk(ROOT, stmt, 0, (id(stmt.elements),))
        for end, error in self.skipped.items():
            if end not in self.emitted:
                raise error
        return self.rules

    # -- the walk over a statement's elements -------------------------------------------
    def _walk(self, scope: Scope, stmt, i: int, path: tuple) -> None:
        elements = stmt.elements
        if i == len(elements):
            if stmt.body is None:
                raise ConfigError(stmt.end, "expected a target (ACCEPT, DROP, REJECT, LOG, RETURN) before ';'")
            for child in stmt.body:
                self._walk(scope, child, 0, path + (id(child.elements),))
            return
        el = elements[i]
        if isinstance(el, Bang):
            raise ConfigError(el.pos, "'!' must follow a keyword, as in 'daddr ! 192.0.2.1'")
        if isinstance(el, ListNode) or el.kind != "word":
            raise ConfigError(el.pos, "expected a keyword such as 'chain', 'proto', 'daddr' or a target")
        keyword = el.text
        if keyword in ALL_TARGETS:
            self._target(scope, stmt, i, path)
            return
        handler = KEYWORDS.get(keyword)
        if handler is None:
            raise ConfigError(el.pos, _unknown_keyword(keyword))
        for inner, j in handler(self, scope, elements, i + 1, el):
            self._walk(inner, stmt, j, path)

    def values(self, elements, i: int, keyword: Atom, negatable: bool = True, whole: bool = False):
        """The (negated, atoms, next index) that follow a keyword; `whole`: the list is one
        value, so '!' may negate it."""
        negated = False
        if i < len(elements) and isinstance(elements[i], Bang):
            if not negatable:
                raise ConfigError(elements[i].pos, f"'{keyword.text}' cannot be negated")
            negated = True
            i += 1
        if i >= len(elements):
            raise ConfigError(keyword.pos, f"expected a value after '{keyword.text}'")
        el = elements[i]
        if isinstance(el, Bang):
            raise ConfigError(el.pos, "'!' given twice")
        if isinstance(el, ListNode):
            atoms = []
            for item in el.items:
                atoms.extend(self.vars.expand(item))
        else:
            atoms = self.vars.expand(el)
        if not atoms:
            raise ConfigError(el.pos, f"'{keyword.text}' needs at least one value; the list is empty")
        if negated and len(atoms) > 1 and not whole:
            raise ConfigError(el.pos, f"a negated list after '{keyword.text}' would match everything; negate one value")
        return negated, atoms, i + 1

    # -- targets --------------------------------------------------------------------------
    def _target(self, scope: Scope, stmt, i: int, path: tuple) -> None:
        elements = stmt.elements
        atom = elements[i]
        name = atom.text
        if scope.chain is None:
            raise ConfigError(atom.pos, "no chain for this rule: start it with 'chain INPUT', 'chain OUTPUT' or 'chain FORWARD'")
        if name not in TABLE_TARGETS[scope.table]:
            raise ConfigError(atom.pos, f"target {name} is not allowed in table {scope.table}")
        if name == "MASQUERADE" and scope.chain != "POSTROUTING":
            raise ConfigError(atom.pos, "MASQUERADE belongs in chain POSTROUTING")
        options, reject_with = {}, None
        j = i + 1
        while j < len(elements):
            opt = elements[j]
            if isinstance(opt, Bang) or isinstance(opt, ListNode) or opt.kind != "word":
                raise ConfigError(opt.pos, f"expected an option of {name} or ';'")
            allowed = TARGET_OPTIONS.get(name, ())
            if opt.text not in allowed:
                hint = f" ({', '.join(allowed)})" if allowed else ""
                raise ConfigError(opt.pos, f"unexpected {opt.text!r} after target {name}: expected ';'{hint}")
            if opt.text in options:
                raise ConfigError(opt.pos, f"'{opt.text}' given twice")
            _, atoms, j = self.values(elements, j + 1, opt, negatable=False)
            if len(atoms) != 1:
                raise ConfigError(opt.pos, f"'{opt.text}' takes one value, not a list")
            options[opt.text] = atoms[0]
        if stmt.body is not None:
            raise ConfigError(stmt.end, f"a target ({name}) ends a rule: expected ';', got '{{'")
        families = scope.families
        if name == "REJECT" and "reject-with" in options:
            reject_with = options["reject-with"]
            text = reject_with.text
            if text == "tcp-reset":
                if scope.proto != "tcp" or scope.proto_negated:
                    raise ConfigError(reject_with.pos, "reject-with tcp-reset needs 'proto tcp' in the same rule")
            else:
                fits = frozenset(f for f in V.FAMILIES if text in REJECT_TYPES[f])
                if not fits:
                    raise ConfigError(reject_with.pos, f"unknown reject-with type {text!r}")
                families = self._narrow(scope, families, fits, reject_with.pos, f"reject-with {text}", elements)
                if families is None:
                    return
        self._check_matches(scope, atom)
        header = tuple(sorted(((n, f, v) for n, f, v, _ in scope.header), key=lambda h: HEADER_ORDER[h[1]]))
        matches = tuple((m, opts) for m, opts, _ in scope.matches)
        for family in sorted(families):
            self.rules.append(Rule(family, scope.table, scope.chain, header, matches, name,
                                   _target_options(name, family, options, reject_with)))
        self.emitted.update(path)

    def _check_matches(self, scope: Scope, target: Atom) -> None:
        for module, opts, pos in scope.matches:
            if not opts:
                raise ConfigError(pos, f"'mod {module}' needs an option, e.g. {MODULE_EXAMPLE[module]}")
        for _, flag, _, pos in scope.header:
            if flag == "-i" and scope.chain in NO_INPUT_INTERFACE:
                raise ConfigError(pos, f"'interface' cannot match in chain {scope.chain} (packets there have no input interface)")
            if flag == "-o" and scope.chain in NO_OUTPUT_INTERFACE:
                raise ConfigError(pos, f"'outerface' cannot match in chain {scope.chain} (packets there have no output interface yet)")
        if scope.chain not in ("OUTPUT", "POSTROUTING") and any(m == "owner" for m, _, _ in scope.matches):
            raise ConfigError(target.pos, "'mod owner' works only in chain OUTPUT")

    def _narrow(self, scope: Scope, families, fits, pos, what: str, elements):
        """Families left after a value that belongs to some only; None: skip this combination."""
        left = families & fits
        if left:
            return left
        error = ConfigError(pos, f"{what} does not fit a rule for {_family_words(families)}")
        if scope.domain is not None:
            raise error
        self.skipped.setdefault(id(elements), error)
        return None


def _family_words(families) -> str:
    return " and ".join("IPv4 (domain ip)" if f == V.IP else "IPv6 (domain ip6)" for f in sorted(families))


def _target_options(name: str, family: str, options: dict, reject_with) -> tuple:
    if name == "REJECT":
        return (("--reject-with", reject_with.text if reject_with else DEFAULT_REJECT[family]),)
    if name == "LOG":
        out = []
        if "log-prefix" in options:
            out.append(("--log-prefix", V.safe_text(options["log-prefix"], "a log-prefix", 29)))
        if "log-level" in options:
            level = _log_level(options["log-level"])
            if level != 4:  # iptables-save leaves out the default
                out.append(("--log-level", str(level)))
        return tuple(out)
    return ()


def _log_level(atom) -> int:
    text = atom.text.lower()
    if text in LOG_LEVELS:
        return LOG_LEVELS[text]
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise ConfigError(atom.pos, f"expected a log-level (0-7 or a name such as warning, info), got {atom.text!r}")


def _unknown_keyword(word: str) -> str:
    if word == "policy":
        return "'policy' is not supported: vpn-firewall sets every built-in chain's policy to DROP itself"
    if word in ("jump", "goto", "@include", "@if"):
        return f"{word!r} is not supported by vpn-firewall's subset of ferm"
    return f"unknown keyword {word!r}"


TARGET_OPTIONS = {"REJECT": ("reject-with",), "LOG": ("log-prefix", "log-level")}
MODULE_EXAMPLE = {"conntrack": "'ctstate ESTABLISHED'", "owner": "'uid-owner 0'", "comment": "'comment \"text\"'"}


# -- keyword handlers: each yields (scope, next index) once per alternative ---------------
def _domain(c: Compiler, scope: Scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    names = []
    for atom in atoms:
        if atom.text not in V.FAMILIES:
            raise ConfigError(atom.pos, f"expected domain ip or ip6, got {atom.text!r}")
        names.append(atom.text)
    families = frozenset(names) & scope.families
    if not families:
        raise ConfigError(kw.pos, f"domain {' '.join(names)} inside a block for another domain")
    yield scope._replace(families=families, domain=names[0] if len(families) == 1 else None), j


def _table(c: Compiler, scope: Scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    for atom in atoms:
        if atom.text not in BUILTIN_CHAINS:
            raise ConfigError(atom.pos, f"expected table filter or nat, got {atom.text!r}")
        yield scope._replace(table=atom.text, chain=None), j


def _chain(c: Compiler, scope: Scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    for atom in atoms:
        allowed = BUILTIN_CHAINS[scope.table]
        if atom.text not in allowed:
            raise ConfigError(atom.pos, f"expected a chain of table {scope.table} ({', '.join(allowed)}), got {atom.text!r}")
        yield scope._replace(chain=atom.text), j


def _header(flag: str, parse):
    def handler(c: Compiler, scope: Scope, els, i, kw):
        if any(h[1] == flag for h in scope.header):
            raise ConfigError(kw.pos, f"'{kw.text}' given twice in one rule")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value, fits = parse(atom)
            families = scope.families
            if fits is not None:
                families = c._narrow(scope, families, fits, atom.pos, f"address {atom.text}", els)
                if families is None:
                    continue
            yield scope._replace(families=families, header=scope.header + ((negated, flag, value, kw.pos),)), j
    return handler


def _address(atom):
    family, net = V.address(atom)
    return net, frozenset((family,))


def _interface(atom):
    return V.interface(atom), None


def _proto(c: Compiler, scope: Scope, els, i, kw):
    if scope.proto is not None:
        raise ConfigError(kw.pos, "'proto' given twice in one rule")
    negated, atoms, j = c.values(els, i, kw)
    for atom in atoms:
        proto = V.protocol(atom)
        families = scope.families
        if proto in V.PROTOCOL_FAMILY and not negated:
            families = c._narrow(scope, families, frozenset((V.PROTOCOL_FAMILY[proto],)), atom.pos,
                                 f"proto {atom.text}", els)
            if families is None:
                continue
        header = scope.header if proto == "all" else scope.header + ((negated, "-p", proto, kw.pos),)
        yield scope._replace(families=families, header=header, proto=proto, proto_negated=negated), j


def _add_option(scope: Scope, module: str, option: tuple, pos) -> tuple:
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
    def handler(c: Compiler, scope: Scope, els, i, kw):
        if scope.proto not in V.PORT_PROTOCOLS or scope.proto_negated:
            raise ConfigError(kw.pos, f"'{kw.text}' needs 'proto tcp', 'proto udp', 'proto sctp' or 'proto udplite' before it")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value = V.port(atom, scope.proto, c.services)
            yield scope._replace(matches=_add_option(scope, scope.proto, (negated, option, value), kw.pos)), j
    return handler


def _icmp_type(family: str):
    proto, module, option = ("icmp", "icmp", "--icmp-type") if family == V.IP else ("ipv6-icmp", "icmp6", "--icmpv6-type")

    def handler(c: Compiler, scope: Scope, els, i, kw):
        if scope.proto != proto or scope.proto_negated:
            raise ConfigError(kw.pos, f"'{kw.text}' needs 'proto {'icmp' if family == V.IP else 'icmpv6'}' before it")
        negated, atoms, j = c.values(els, i, kw)
        for atom in atoms:
            value = V.icmp_type(atom, family)
            yield scope._replace(matches=_add_option(scope, module, (negated, option, value), kw.pos)), j
    return handler


def _mod(c: Compiler, scope: Scope, els, i, kw):
    _, atoms, j = c.values(els, i, kw, negatable=False)
    if len(atoms) != 1:
        raise ConfigError(kw.pos, "'mod' takes one module name")
    name = atoms[0].text
    if name not in MODULES:
        raise ConfigError(atoms[0].pos, f"unknown module {name!r}: supported are {', '.join(MODULES)}")
    matches = scope.matches
    if not any(m == name for m, _, _ in matches):
        matches = matches + ((name, (), kw.pos),)
    yield scope._replace(module=name, matches=matches), j


def _module_option(module: str, option: str, parse, joined: bool = False):
    """A module's option; `joined`: a list is one comma-joined value (ctstate), not a loop."""
    def handler(c: Compiler, scope: Scope, els, i, kw):
        if scope.module != module:
            raise ConfigError(kw.pos, f"'{kw.text}' needs 'mod {module}' before it")
        negated, atoms, j = c.values(els, i, kw, whole=joined)
        for value in ([parse(atoms)] if joined else [parse(a) for a in atoms]):
            yield scope._replace(matches=_add_option(scope, module, (negated, option, value), kw.pos)), j
    return handler


def _ctstates(atoms) -> str:
    states = set()
    for atom in atoms:
        for part in atom.text.upper().split(","):
            if part not in CTSTATES:
                raise ConfigError(atom.pos, f"expected a ctstate ({', '.join(CTSTATES)}), got {atom.text!r}")
            states.add(part)
    return ",".join(s for s in CTSTATES if s in states)


def _comment(atom) -> str:
    return V.safe_text(atom, "a comment", 255)


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
    "icmp-type": _icmp_type(V.IP),
    "icmpv6-type": _icmp_type(V.IP6),
    "mod": _mod,
    "ctstate": _module_option("conntrack", "--ctstate", _ctstates, joined=True),
    "uid-owner": _module_option("owner", "--uid-owner", lambda a: V.account(a, "user")),
    "gid-owner": _module_option("owner", "--gid-owner", lambda a: V.account(a, "group")),
    "comment": _module_option("comment", "--comment", _comment),
}
