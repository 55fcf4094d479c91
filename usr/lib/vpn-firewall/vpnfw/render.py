"""Rules as iptables-restore text, in exactly the form iptables-save prints them back.

Printing the canonical form lets the loader verify the kernel's ruleset line by line.
The text is loaded with --noflush: only our chains are replaced, other tools' rules in
the same tables stay, and all of it happens in one transaction per family.
"""

from collections import namedtuple

from .model import FENCE_TABLE, OUR_TABLES, Printed, our_chain

# what iptables-save prints without quotes (a set, not a regex: re costs milliseconds to import at boot)
_NO_QUOTES = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# the options iptables-save prints in quotes when they hold more than a word
QUOTED_TARGET_OPTIONS = ("--log-prefix", "--nflog-prefix")
QUOTED_MATCH_OPTIONS = ("--comment", "--string", "--path")


class TableState(namedtuple("TableState", "jumps chains first dropping", defaults=(frozenset(), frozenset()))):
    """What the kernel holds of ours in one table, as far as rendering cares.

    jumps:    built-in chain -> how many jumps to our chain it has
    chains:   frozenset of our chains that exist
    first:    frozenset of the built-in chains whose first rule is our jump
    dropping: frozenset of the built-in chains whose policy is DROP already
    """

    __slots__ = ()


NOTHING = TableState({}, frozenset())


def quote(text: str) -> str:
    # The rule of xtables_save_string; our values never hold quotes or backslashes.
    return text if text and _NO_QUOTES.issuperset(text) else f'"{text}"'


def rule_line(rule) -> str:
    parts = ["-A", our_chain(rule.chain)]
    for negated, flag, value in rule.header:
        if negated:
            parts.append("!")
        parts += (flag, value) if value is not None else (flag,)
    for module, options in rule.matches:
        parts += ("-m", module)
        for negated, option, value in options:
            if negated:
                parts.append("!")
            parts.append(option)
            if value is not None:
                parts.append(quote(value) if option in QUOTED_MATCH_OPTIONS else value)
    if rule.target is None:
        return " ".join(parts)
    parts += ("-g" if rule.goto else "-j", rule.target)
    for option, value in rule.target_options:
        parts.append(option)
        if value is not None:
            parts.append(quote(value) if option in QUOTED_TARGET_OPTIONS else value)
    return " ".join(parts)


def tables_used(rules, state: dict) -> list:
    """filter and the fence always; another table when rules use it (one that only an earlier
    load used is emptied of ours: see _table_left)."""
    tables = ["filter", FENCE_TABLE]
    used = {r.table for r in rules}
    return tables + [t for t in OUR_TABLES if t not in tables and t in used]


def _table_left(table: str, ts) -> list:
    """The restore lines that take our jumps and chains out of a table no rule uses any more
    (an exclusion's mangle and nat once it ended): nothing of ours is left behind in it."""
    lines = [f"*{table}"]
    for c in OUR_TABLES[table]:
        lines += [f"-D {c} -j {our_chain(c)}"] * ts.jumps.get(c, 0)
    ours = sorted(ts.chains)
    lines += [f":{c} - [0:0]" for c in ours]  # all emptied first: ours jump to each other
    return lines + [f"-X {c}" for c in ours] + ["COMMIT"]


def chains_of(table: str, rules, state: dict) -> list:
    """The built-ins of a table that get a chain of ours: all in filter and the fence, used ones in nat."""
    if table in ("filter", FENCE_TABLE):
        return list(OUR_TABLES[table])
    existing = state.get(table, NOTHING).chains
    return [c for c in OUR_TABLES[table]
            if our_chain(c) in existing or any(r.table == table and r.chain == c for r in rules)]


def _jump_lines(table: str, builtin: str, ts: TableState) -> list:
    """What puts our one jump in place. The fence's comes first, always. In filter and nat a
    jump that is there once stays where it is: another tool may have put rules above it since
    (Docker does), and the fence makes that harmless; moving ours back on every reload would
    only undo what that tool needs."""
    count = ts.jumps.get(builtin, 0)
    if count == 1 and (table != FENCE_TABLE or builtin in ts.first):
        return []
    return [f"-D {builtin} -j {our_chain(builtin)}"] * count + [f"-I {builtin} 1 -j {our_chain(builtin)}"]


def with_lines(rules) -> list:
    """(rule, its line) for every rule, printed once for both loading and verifying; a
    Printed rule (recorded or cached) brings its line along."""
    return [(r, r.line) if type(r) is Printed else (r, rule_line(r)) for r in rules]


def to_printed(rules, pairs=None) -> list:
    """The rules as Printed rules, (table, chain, line) each, for recording; pairs: their
    with_lines(), when it was taken already."""
    pairs = pairs if pairs is not None else with_lines(rules)
    return [r if type(r) is Printed else Printed(r.table, r.chain, line) for r, line in pairs]


def expected_lines(lines, table: str) -> dict:
    """our chain -> its rule lines, as iptables-save should print them; `lines` from with_lines()."""
    out = {}
    for r, line in lines:
        if r.table == table:
            out.setdefault(our_chain(r.chain), []).append(line)
    return out


def chains_declared(table: str, rules, state: dict) -> list:
    """Our chains in a table: one per built-in that gets one, then the server chains."""
    ours = [our_chain(c) for c in chains_of(table, rules, state)]
    for r in rules:
        if r.table == table and r.chain not in OUR_TABLES[table] and our_chain(r.chain) not in ours:
            ours.append(our_chain(r.chain))
    return ours


def restore_input(rules, state: dict, lines=None, only=None) -> str:
    """The restore input that makes the kernel hold exactly `rules` in our chains (only: in
    these tables; each table is a commit of its own, and nf_tables' commit that replaces
    rules waits ~15 ms: the guard restores only what is broken)."""
    printed = lines if lines is not None else with_lines(rules)
    lines = []
    for table in tables_used(rules, state):
        if only is not None and table not in only:
            continue
        ts = state.get(table, NOTHING)
        builtins = chains_of(table, rules, state)
        declared = chains_declared(table, rules, state)
        stale = sorted(ts.chains - set(declared))  # server chains a longer list needed before
        lines.append(f"*{table}")
        if table == "filter":  # a policy set again costs nf_tables a wait of ~18 ms per commit
            lines += [f":{c} DROP [0:0]" for c in builtins if c not in ts.dropping]
        lines += [f":{c} - [0:0]" for c in declared + stale]  # declaring flushes it
        for c in builtins:
            lines += _jump_lines(table, c, ts)
        lines += [line for r, line in printed if r.table == table]
        lines += [f"-X {c}" for c in stale]  # no longer jumped to: our chains were flushed above
        lines.append("COMMIT")
    used = tables_used(rules, state)
    for table, ts in state.items():
        if table in OUR_TABLES and table not in used and ts.chains and (only is None or table in only):
            lines += _table_left(table, ts)
    return "\n".join(lines) + "\n"


def unload_input(state: dict) -> str:
    """The restore input that removes every chain of ours and opens the filter policies."""
    lines = []
    for table, ts in state.items():
        if table not in OUR_TABLES or (table != "filter" and not ts.chains):
            continue
        lines.append(f"*{table}")
        if table == "filter":
            lines += [f":{c} ACCEPT [0:0]" for c in OUR_TABLES["filter"]]
        for c in OUR_TABLES[table]:
            lines += [f"-D {c} -j {our_chain(c)}"] * ts.jumps.get(c, 0)
        ours = sorted(ts.chains)
        lines += [f":{c} - [0:0]" for c in ours]  # all emptied first: ours jump to each other
        lines += [f"-X {c}" for c in ours]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"
