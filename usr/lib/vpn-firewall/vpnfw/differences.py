"""How the kernel's rules differ from a ruleset of ours, and what each difference means.

Shared by load (verifying what it loaded), the guard (what to repair) and status (what to
say). Pure: an iptables-save dump (kernel.parse_save) and the rules in, texts out.
"""

from . import kernel
from .model import FENCE_TABLE, our_chain
from .render import chains_declared, chains_of, expected_lines, with_lines, tables_used


# What a difference between the kernel and our ruleset means. A HOLE can let something
# out that the ruleset would not: the guard repairs it at once. Another tool's rules above
# our jump in filter or nat (REORDERED), or a filter policy it opened (POLICY), cannot: our
# chains end in a refusal and the fence drops what another tool accepted before them.
HOLE, REORDERED, POLICY = "hole", "reordered", "policy"


def classified_differences(dump, rules, printed=None) -> list:
    """[(kind, text)]: how an iptables-save dump differs from `rules`: policies, jumps, our chains."""
    return [(kind, text) for kind, table, text in differences_by_table(dump, rules, printed)]


def differences_by_table(dump, rules, printed=None) -> list:
    """[(kind, table, text)]: classified_differences with the table each is in."""
    state = kernel.table_states(dump)
    printed = printed if printed is not None else with_lines(rules)
    found = []
    for table in tables_used(rules, state):
        policies, lines = dump.tables.get(table, ({}, {}))
        ts = state[table]
        expected = expected_lines(printed, table)
        for builtin in chains_of(table, rules, state):
            mine = our_chain(builtin)
            if table == "filter" and policies.get(builtin) != "DROP":
                found.append((POLICY, table, f"{table} {builtin} policy is {policies.get(builtin)}, not DROP"))
            count = ts.jumps.get(builtin, 0)
            if count == 0:
                found.append((HOLE, table, f"{table} {builtin} does not jump to {mine}"))
            elif count > 1:
                found.append((HOLE, table, f"{table} {builtin} jumps to {mine} more than once"))
            elif builtin not in ts.first:
                kind = HOLE if table == FENCE_TABLE else REORDERED
                found.append((kind, table, f"{table} {builtin} has other rules before its jump to {mine}"))
        declared = chains_declared(table, rules, state)
        for mine in declared:
            got, want = lines.get(mine), expected.get(mine, [])
            if got is None:
                found.append((HOLE, table, f"{table} chain {mine} is missing"))
            elif got != want:
                first = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                found.append((HOLE, table,
                    f"{table} chain {mine} differs at rule {first + 1}: kernel has "
                    f"{got[first] if first < len(got) else 'nothing'!r}, expected "
                    f"{want[first] if first < len(want) else 'nothing'!r}"
                ))
        found += [(HOLE, table, f"{table} chain {c} should not be there") for c in sorted(ts.chains - set(declared))]
    return found


def differences(dump, rules, printed=None) -> list:
    """The differences that matter right after our own load: all but where our jump stands
    in filter and nat (a load leaves a jump that is there where it is)."""
    return [text for kind, text in classified_differences(dump, rules, printed) if kind != REORDERED]


def holes(dump, rules, printed=None) -> list:
    """The differences that can let something out: what the guard repairs."""
    return [text for kind, text in classified_differences(dump, rules, printed) if kind == HOLE]
