"""Meaning of ferm-style rule statements: parsed statements in, Rule data out.

A statement is read left to right; each keyword narrows a scope (family, table,
chain, matches) and a list of values multiplies the rule, as in ferm: the first list
is the outermost loop. A block applies its statements inside the scope built so far.

Beyond ferm: a rule with no 'domain' goes to both families, and an address, an ICMP
type or protocol sends it to its own family only, so one list may mix IPv4 and IPv6.
"""

from collections import namedtuple

import re

from . import matches as M, targets as T, values as V
from .errors import ConfigError
from .keywords import (DIRECTIVES, FLAG_KEYWORDS, KEYWORDS, ferm_chain, is_user_chain, module_option, only,
                       option_module)
from .model import Rule
from .parser import REFUSED, Atom, Bang, Call, Def, FuncDef, ListNode

HEADER_ORDER = {"-s": 0, "-d": 1, "-i": 2, "-o": 3, "-p": 4, "-f": 5}
ALL_TARGETS = T.BASIC + tuple(T.TARGETS)
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
    "auto_proto",  # a '@subchain' inherits its rule's protocol for ports and ICMP types
], defaults=(None,))):
    __slots__ = ()


ROOT = Scope(frozenset(V.FAMILIES), None, "filter", None, (), (), None, None, False)


MAX_CALL_DEPTH = 32
MAX_CALLS = 20000  # a config that would compile for ever is refused, not waited for at boot


class Compiler:
    def __init__(self, variables, services: V.Services):
        self.vars = variables
        self.services = services
        self.rules = []
        self.emitted = set()  # statements (by id of their elements) that produced a rule
        self.skipped = {}  # statement -> why one of its combinations fit no family
        self.warnings = variables.warnings
        self.if_false = None  # families for which the last '@if' was false, for an '@else'
        self.depth = 0
        self.calls = 0
        self.jumps = []  # (family, table, chain jumped to, pos): checked once every chain is known
        self.auto_chains = 0  # ferm_auto_N names of '@subchain's without one
        self.auto_names = {}
        self.collectors = {}  # id(statement) -> the scopes that reached its block
        self.deferred = []  # what waits until every alternative of a statement is walked
        self.generation = 0  # counts statements walked, to tell one '@subchain' from its repetition
        self.subchains = {}  # (statement, generation, name) -> [inner scope, families]

    def compile(self, statements) -> list:
        self.body(ROOT, statements, ())
        for end, error in self.skipped.items():
            if end not in self.emitted:
                raise error
        self._check_jumps()
        return self.rules

    def _check_jumps(self) -> None:
        """Every chain jumped to has rules in that family and table: an empty one would not load."""
        have = {(r.family, r.table, r.chain) for r in self.rules}
        for family, table, chain, pos in self.jumps:
            if (family, table, chain) not in have:
                where = f"table {table}" + (f", domain {family}" if len(V.FAMILIES) > 1 else "")
                raise ConfigError(pos, f"chain {ferm_chain(chain)!r} is jumped to but has no rules ({where}): "
                                       "give it at least one rule (an empty chain only returns)")

    def warn(self, pos, message: str) -> None:
        self.warnings.append(f"{pos}: warning: {message}")

    # -- blocks: their own variables, '@if' ... '@else' -----------------------------------
    def body(self, scope: Scope, statements, path: tuple) -> None:
        self._blocks([scope], statements, path)

    def _blocks(self, scopes: list, statements, path: tuple) -> None:
        """A block's statements, entered with one scope per alternative of the rule before it.
        As in ferm, each statement is made for all the alternatives before the next one:
        'interface (eth0 eth1) { A; B; }' gives A for eth0 and eth1, then B for both."""
        self.vars.scopes.append({})
        try:
            last_if = None  # per scope: the families an '@if' statement was false for
            for child in statements:
                if isinstance(child, Def):
                    self.set_auto(scopes[0])
                    self.vars.define_local(child.name, self.vars.evaluate(child.value))
                    continue
                if isinstance(child, FuncDef):
                    self.vars.scopes[-1][child.name] = child
                    continue
                first = child.elements[0] if child.elements else None
                is_else = isinstance(first, Atom) and first.kind == "word" and first.text == "@else"
                if is_else and last_if is None:
                    raise ConfigError(first.pos, "'@else' without an '@if' in the statement before it")
                self.generation += 1
                inner, self.collectors[id(child)] = [], []
                deferred, self.deferred = self.deferred, []
                results = []
                try:
                    for k, scope in enumerate(scopes):
                        if is_else:
                            if last_if[k] & scope.families:
                                self.walk(only(scope, last_if[k]), child, 1, path + (id(child.elements),))
                            continue
                        self.if_false = None
                        self.walk(scope, child, 0, path + (id(child.elements),))
                        results.append(self.if_false)
                    inner = self.collectors.pop(id(child))
                    later, self.deferred = self.deferred, deferred
                finally:
                    self.collectors.pop(id(child), None)
                for action in later:  # each '@subchain' block once, for all alternatives
                    action()
                if inner:
                    self._blocks(inner, child.body, path + (id(child.elements),))
                last_if = None if is_else or all(r is None for r in results) else \
                    [r if r is not None else frozenset() for r in results]
        finally:
            self.vars.scopes.pop()

    def set_auto(self, scope: Scope) -> None:
        """$DOMAIN, $TABLE and $CHAIN as ferm sets them, where a value is read."""
        domain = next(iter(scope.families)) if len(scope.families) == 1 else None
        self.vars.auto = {"DOMAIN": domain, "TABLE": scope.table, "CHAIN": ferm_chain(scope.chain)}

    # -- the walk over a statement's elements -------------------------------------------
    def walk(self, scope: Scope, stmt, i: int, path: tuple) -> None:
        elements = stmt.elements
        if i == len(elements):
            if stmt.body is None:
                raise ConfigError(stmt.end, "expected a target (ACCEPT, DROP, REJECT, LOG, RETURN, NOP, jump) "
                                            "before ';'")
            if id(stmt) in self.collectors:  # its block is made once all alternatives are known
                self.collectors[id(stmt)].append(scope)
            else:
                self.body(scope, stmt.body, path)
            return
        el = elements[i]
        self.set_auto(scope)
        if isinstance(el, Bang):
            flag = elements[i + 1] if i + 1 < len(elements) else None
            if isinstance(flag, Atom) and flag.kind == "word":
                if flag.text in FLAG_KEYWORDS:
                    for inner, j in FLAG_KEYWORDS[flag.text](self, scope, elements, i + 2, flag, negated=True):
                        self.walk(inner, stmt, j, path)
                    return
                module = option_module(scope, flag.text)
                if module and M.MODULES[module][flag.text].kind == "flag":
                    for inner, j in module_option(self, scope, elements, i + 2, flag, module, negated_flag=True):
                        self.walk(inner, stmt, j, path)
                    return
            raise ConfigError(el.pos, "'!' must follow a keyword, as in 'daddr ! 192.0.2.1', or stand before "
                                      "a keyword without a value, as in '! syn'")
        if isinstance(el, Call):
            self._call(scope, stmt, i, path)
            return
        if isinstance(el, ListNode) or el.kind != "word":
            raise ConfigError(el.pos, "expected a keyword such as 'chain', 'proto', 'daddr' or a target")
        keyword = el.text
        if keyword in ALL_TARGETS:
            self._target(scope, stmt, i, path)
            return
        if keyword in REFUSED:
            raise ConfigError(el.pos, REFUSED[keyword])
        if keyword in DIRECTIVES:
            DIRECTIVES[keyword](self, scope, stmt, i, path)
            return
        handler = KEYWORDS.get(keyword)
        if scope.module and keyword in M.MODULES[scope.module]:  # 'mod policy proto esp' is policy's
            handler = None
        if handler is None:
            module = option_module(scope, keyword)
            if module is None:
                raise ConfigError(el.pos, _unknown_keyword(keyword))
            alternatives = module_option(self, scope, elements, i + 1, el, module)
        else:
            alternatives = handler(self, scope, elements, i + 1, el)
        for inner, j in alternatives:
            self.walk(inner, stmt, j, path)

    # -- functions of the user's ----------------------------------------------------------
    def _call(self, scope: Scope, stmt, i: int, path: tuple) -> None:
        call = stmt.elements[i]
        if call.name.startswith("@"):
            raise ConfigError(call.pos, f"{call.name} gives a value: put it after a keyword, as in "
                                        f"'daddr {call.name}(...)'")
        fn = self.vars.function(call)
        if len(call.args) != len(fn.params):
            raise ConfigError(call.pos, f"{call.name} takes {len(fn.params)} argument(s), not {len(call.args)}")
        if self.depth >= MAX_CALL_DEPTH:
            raise ConfigError(call.pos, f"{call.name}: functions call each other more than {MAX_CALL_DEPTH} deep")
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise ConfigError(call.pos, f"{call.name}: more than {MAX_CALLS} function calls in all: a function "
                                        "that calls itself more than once?")
        args = {name: self.vars.evaluate(arg) for name, arg in zip(fn.params, call.args)}
        self.depth += 1
        try:
            if fn.fragment is not None:  # its keywords stand in the calling rule
                spliced = _substitute(fn.fragment, args)
                self.walk(scope, stmt._replace(elements=stmt.elements[:i] + spliced + stmt.elements[i + 1:]),
                           i, path)
                return
            if i != len(stmt.elements) - 1 or stmt.body is not None:
                raise ConfigError(call.pos, f"{call.name} holds a block: it must end its rule, followed by ';'")
            self.vars.scopes.append({"$" + name: value for name, value in args.items()})
            try:
                self.body(scope, fn.body, path)
            finally:
                self.vars.scopes.pop()
        finally:
            self.depth -= 1

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
        if not atoms and not (isinstance(el, Call) and el.name == "@resolve"):  # not yet pinned: no rule
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
        spec = T.TARGETS.get(name)
        tables = spec.tables if spec else T.BASIC_TABLES[name]
        if tables is not None and scope.table not in tables:
            raise ConfigError(atom.pos, f"target {name} is not allowed in table {scope.table} "
                                        f"(it belongs in {' or '.join(tables)})")
        if spec and spec.chains and not is_user_chain(scope.chain) and scope.chain not in spec.chains:
            raise ConfigError(atom.pos, f"{name} belongs in chain {' or '.join(spec.chains)}")
        allowed = spec.options if spec else {}
        options, j = {}, i + 1
        while j < len(elements):
            opt = elements[j]
            if isinstance(opt, Bang) or isinstance(opt, (ListNode, Call)) or opt.kind != "word":
                raise ConfigError(opt.pos, f"expected an option of {name} or ';'")
            if opt.text not in allowed:
                hint = f" ({', '.join(allowed)})" if allowed else ""
                raise ConfigError(opt.pos, f"unexpected {opt.text!r} after target {name}: expected ';'{hint}")
            if opt.text in options:
                raise ConfigError(opt.pos, f"'{opt.text}' given twice")
            if allowed[opt.text] is None:  # a flag
                options[opt.text], j = opt, j + 1
                continue
            _, atoms, j = self.values(elements, j + 1, opt, negatable=False)
            if len(atoms) != 1:
                raise ConfigError(opt.pos, f"'{opt.text}' takes one value, not a list")
            options[opt.text] = atoms[0]
        if stmt.body is not None:
            raise ConfigError(stmt.end, f"a target ({name}) ends a rule: expected ';', got '{{'")
        families = scope.families
        reject_with = None
        if name == "REJECT" and "reject-with" in options:
            reject_with = options["reject-with"]
            text = reject_with.text
            if text == "tcp-reset":
                if scope.proto != "tcp" or scope.proto_negated:
                    raise ConfigError(reject_with.pos, "reject-with tcp-reset needs 'proto tcp' in the same rule")
            else:
                fits = frozenset(f for f in V.FAMILIES if text in T.REJECT_TYPES[f])
                if not fits:
                    raise ConfigError(reject_with.pos, f"unknown reject-with type {text!r}")
                families = self.narrow(scope, families, fits, reject_with.pos, f"reject-with {text}", elements)
                if families is None:
                    return
        if name in ("DNAT", "SNAT", "NETMAP") and "to" in options:
            fits = frozenset((T.nat_address_family(options["to"]),))
            families = self.narrow(scope, families, fits, options["to"].pos, f"to {options['to'].text}", elements)
            if families is None:
                return
        if spec:
            fixed = spec.finish(options, atom.pos)  # the same for each family, or family -> options
            target_options = (lambda family: fixed[family]) if isinstance(fixed, dict) else (lambda family: fixed)
            if name in ("MARK", "CONNMARK"):
                self._warn_mark_bits(name, fixed, atom.pos)
        else:
            target_options = lambda family: ()  # noqa: E731
        self.emit(scope._replace(families=families), None if name == "NOP" else name, target_options,
                   atom, path)

    def emit(self, scope: Scope, target, target_options, at: Atom, path: tuple, goto: bool = False) -> None:
        """The rule the scope has built, once per family, with this target."""
        self._check_matches(scope, at)
        header = tuple(sorted(((n, f, v) for n, f, v, _ in scope.header), key=lambda h: HEADER_ORDER[h[1]]))
        for family in sorted(scope.families):
            matches = tuple((m, M.finish(m, opts, family, pos)) for m, opts, pos in scope.matches)
            self.rules.append(Rule(family, scope.table, scope.chain, header, matches, target,
                                   target_options(family), goto))
        self.emitted.update(path)

    def _warn_mark_bits(self, name: str, options, pos) -> None:
        bits = T.weakening_bits(name, options)
        if bits:
            use = ("clears bit 0x20000000 of the connection mark, which tells the tunnel's connections "
                   "(their spoofed packets from the LAN would no longer be dropped)" if name == "CONNMARK" else
                   "sets bit 0x10000000 of the packet mark, which tells the fence a packet was judged")
            self.warn(pos, f"{name} here {use}; give a mask without that bit, such as 0xcfffffff")

    def _check_matches(self, scope: Scope, target: Atom) -> None:
        for module, opts, pos in scope.matches:
            if not opts and module in M.MODULES:
                first = ", ".join(list(M.MODULES[module])[:3])
                raise ConfigError(pos, f"'mod {module}' needs an option ({first}...)")
        for _, flag, _, pos in scope.header:
            if flag == "-i" and scope.chain in NO_INPUT_INTERFACE:
                raise ConfigError(pos, f"'interface' cannot match in chain {scope.chain} (packets there have no input interface)")
            if flag == "-o" and scope.chain in NO_OUTPUT_INTERFACE:
                raise ConfigError(pos, f"'outerface' cannot match in chain {scope.chain} (packets there have no output interface yet)")
        if (scope.chain not in ("OUTPUT", "POSTROUTING") and not is_user_chain(scope.chain)
                and any(m == "owner" for m, _, _ in scope.matches)):
            raise ConfigError(target.pos, "'mod owner' works only in chain OUTPUT")

    def narrow(self, scope: Scope, families, fits, pos, what: str, elements):
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


def _substitute(elements, args: dict) -> tuple:
    """A function's rule fragment with its parameters replaced by the call's values."""
    def value(v, pos):
        return ListNode(tuple(v), pos) if isinstance(v, list) else v

    def sub(el):
        if isinstance(el, Atom) and el.kind == "var" and el.text in args:
            return value(args[el.text], el.pos)
        if isinstance(el, Atom) and el.kind == "qstring":
            def text(m):
                v = args.get(m.group(1))
                if v is None:
                    return m.group(0)
                return " ".join(a.text for a in (v if isinstance(v, list) else [v]))
            return el._replace(text=re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", text, el.text))
        if isinstance(el, ListNode):
            return el._replace(items=tuple(sub(x) for x in el.items))
        if isinstance(el, Call):
            return el._replace(args=tuple(sub(x) for x in el.args))
        return el
    return tuple(sub(el) for el in elements)


def _unknown_keyword(word: str) -> str:
    owners = [m for m, options in M.MODULES.items() if word in options]
    if owners:
        return f"'{word}' needs 'mod {owners[0]}' before it"
    if word.startswith("@"):
        return f"unknown directive {word!r}"
    return f"unknown keyword {word!r}"

