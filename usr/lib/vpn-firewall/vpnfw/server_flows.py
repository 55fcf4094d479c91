"""Flows to a VPN server judged once: the verdict of the server list, kept in the conntrack mark.

A provider's list can hold thousands of servers; walking it for every packet the VPN client
sends costs in proportion to its length. The first packet of a flow walks it; when a server
rule accepts it, the flow's conntrack mark gets APPROVED with the list's fingerprint, and its
later packets are accepted by one rule where the list begins, whatever the list's length.

What keeps this as strict as the walk (with the one exception the first point names):
- the fingerprint covers everything the server rules match on (addresses, protocols, ports,
  $VPN_USER, $VPN_GROUP, $VPN_FWMARK): a load with another list stops honoring approvals it
  did not give, unless two lists share a fingerprint (one chance in 65,536 for a given pair:
  then a flow the old list approved, to a server the new one dropped, keeps going until it
  ends; a list that comes back honors its own approvals again, rightly);
- the fast rule repeats the owner and mark matches of the server rules, since another socket
  could share a flow's addresses and ports;
- only the flow's own packets in its own direction (not RELATED: the kernel's ICMP errors
  about a flow whose client died must not leave);
- only root can set a conntrack mark; the fast rule stands where the server list begins,
  after the user's rules and the tunnel's, so nothing ahead of it changes meaning.
"""

import zlib

from .model import Rule, our_chain

APPROVED_BIT = 0x40000000
LIST_SHIFT, LIST_BITS = 12, 0xFFFF  # the fingerprint in bits 12-27 of the conntrack mark
MASK = APPROVED_BIT | (LIST_BITS << LIST_SHIFT)
CHAIN = "SERVER-FLOW"  # a server rule jumps here: mark the flow, accept


def fingerprint(family, server_rules) -> int:
    """A number for the list: the same rules, the same number, on every machine and run."""
    text = "\n".join(repr((r.header, r.matches)) for r in server_rules if r.family == family)
    return zlib.crc32(text.encode()) & LIST_BITS


def approval(family, server_rules) -> str:
    """The conntrack mark value/mask that this list gives an approved flow."""
    return f"0x{APPROVED_BIT | fingerprint(family, server_rules) << LIST_SHIFT:x}/0x{MASK:x}"


def judged(server_rules):
    """The server rules jumping to CHAIN instead of accepting."""
    return [r._replace(target=our_chain(CHAIN)) for r in server_rules]


def fast_rules(family, server_rules, owners) -> list:
    """Where the server list begins: an approved flow's packet accepted, as its owner and
    mark would be by the list (owners: the match tuples of $VPN_USER, $VPN_GROUP and
    $VPN_FWMARK, or [()] when the servers are open to every program)."""
    if not server_rules:
        return []
    flow = ("connmark", ((False, "--mark", approval(family, server_rules)),))
    # the flow's own packets, as the server rule saw them: not the kernel's ICMP errors about
    # it (RELATED), which must not leave when the VPN client is gone
    own = ("conntrack", ((True, "--ctstate", "RELATED"), (False, "--ctdir", "ORIGINAL")))
    return [Rule(family, "filter", "OUTPUT", (), (flow, own) + owner, "ACCEPT") for owner in owners]


def chain(family, server_rules) -> list:
    if not server_rules:
        return []
    return [Rule(family, "filter", CHAIN, (), (), "CONNMARK", (("--set-xmark", approval(family, server_rules)),)),
            Rule(family, "filter", CHAIN, (), (), "ACCEPT")]
