"""The ruleset as data: what the compiler and the policy produce and the renderer prints."""

from typing import NamedTuple

# Built-in chains of each table we may put rules in; ours are named PREFIX + built-in.
CHAIN_PREFIX = "VPNFW-"
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
LOCKDOWN_COMMENT = "vpn-firewall lockdown"


class Rule(NamedTuple):
    """One iptables rule, in the order iptables-save prints its parts.

    header:  ((negated, flag, value), ...) for -s -d -i -o -p
    matches: ((module, ((negated, option, value_or_None), ...)), ...)
    target_options: ((option, value), ...)
    """

    family: str
    table: str
    chain: str  # a built-in name; rendered into our own chain
    header: tuple
    matches: tuple
    target: str
    target_options: tuple = ()


def our_chain(builtin: str) -> str:
    return CHAIN_PREFIX + builtin
