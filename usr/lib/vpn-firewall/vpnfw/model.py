"""The ruleset as data: what the compiler and the policy produce and the renderer prints."""

from collections import namedtuple

# Built-in chains of each table we may put rules in; ours are named PREFIX + built-in.
CHAIN_PREFIX = "VPNFW-"
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
# A chain of the user's own (ferm's 'chain NAME', '@subchain') is ours too: VPNFW-U-NAME.
USER_CHAIN = "U-"
MAX_CHAIN_NAME = 28  # what iptables allows
LOCKDOWN_COMMENT = "vpn-firewall lockdown"
# The fence: a table no other tool writes to, evaluated after filter at the same hooks. An
# ACCEPT in one table does not end the evaluation of the next, a DROP does: so whatever
# other programs accept in filter ahead of our chains, the fence still drops it unless our
# filter chain judged the packet (JUDGED_MARK) or it stays inside (loopback, the tunnel,
# a trusted internal interface).
FENCE_TABLE = "security"
JUDGED_BIT = 0x10000000
JUDGED_MARK = f"0x{JUDGED_BIT:x}/0x{JUDGED_BIT:x}"
# A packet's mark bit for what an exclusion (exclusion.py) lets out: routed around the tunnel.
EXCLUDED_BIT = 0x08000000
# Where the fence sends a judged packet: the bit is cleared before the packet goes on, so
# that rules of other tools that match a mark exactly (wg-quick's 'meta mark 0xca6c', policy
# routing) see the packet as it was before it met us.
JUDGED_CHAIN = "JUDGED"
UNJUDGE = "0x0/0x10000000"
# A bit of the conntrack mark: the connection went out (or came in) through the tunnel, so
# none of its packets may arrive by another interface (a LAN attacker's spoofed "replies").
TUNNEL_FLOW_BIT = 0x20000000
TUNNEL_FLOW_MARK = f"0x{TUNNEL_FLOW_BIT:x}/0x{TUNNEL_FLOW_BIT:x}"
TUNNEL_FLOW_CHAIN = "TUNNEL-FLOWS"  # where INPUT sends them: RETURN from the tunnel, else DROP
# Every table we keep chains in: the users' tables and the fence.
OUR_TABLES = {**BUILTIN_CHAINS, FENCE_TABLE: ("INPUT", "FORWARD", "OUTPUT")}


class Rule(namedtuple("Rule", "family table chain header matches target target_options goto",
                      defaults=((), False))):
    """One iptables rule, in the order iptables-save prints its parts.

    chain:   a built-in name or USER_CHAIN + a user's name; rendered into our own chain
    header:  ((negated, flag, value), ...) for -s -d -i -o -p
    matches: ((module, ((negated, option, value_or_None), ...)), ...)
    target:  a target, one of our chains (jumped to; with goto, gone to), or None (ferm's NOP)
    target_options: ((option, value_or_None), ...)
    """

    __slots__ = ()


class Printed(namedtuple("Printed", "table chain line")):
    """A rule as loading and verifying need it: where it goes and its line as iptables-save
    prints it. What the guard keeps and the cache holds: far cheaper to read back than Rule."""

    __slots__ = ()


def our_chain(builtin: str) -> str:
    return CHAIN_PREFIX + builtin
