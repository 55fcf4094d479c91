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
- only the flow's own packets (not RELATED: the kernel's ICMP errors about a flow whose
  client died must not leave), told by the protocol where the list names one;
- only root can set a conntrack mark; the fast rule stands where the server list begins,
  after the user's rules and the tunnel's, so nothing ahead of it changes meaning; without
  user OUTPUT rules nothing ahead of it but accepts, so it goes first (before the judging
  mark).

The fence (model.FENCE_TABLE) then sees those packets unmarked, and lets them by when their
flow carries APPROVED, with the same protocol and owner matches (fence_rules): flows our
chain approved, never another tool's. It asks for the bit, not for the current list's
fingerprint: the filter and fence tables are committed one after the other, and a fence
that knew only the new list would drop the VPN's packets between the two commits of a
reload. What that allows: when another tool accepts ahead of our filter chain (until the
guard repairs it) a flow that the previous list approved, to a server the new list dropped,
passes the fence too; our own chain refuses it from the reload on.
"""

import zlib

from .model import FENCE_TABLE, TUNNEL_FLOW_BIT, Rule, our_chain

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


def _protocol(rule):
    return next((value for negated, flag, value in rule.header if flag == "-p" and not negated), None)


def _approved(family, server_rules, mark) -> list:
    """(header, matches) pairs, each one way an approved flow's own packets look (MARK: the
    conntrack mark's value/mask that tells an approved flow). The flow's own, not the
    kernel's ICMP errors about it (RELATED), which must not leave when the VPN client is
    gone: when every server rule names its protocol, the protocol tells them apart (an ICMP
    error is ICMP), which nf_tables matches natively; else conntrack's state does."""
    flow = ("connmark", ((False, "--mark", mark),))
    protocols = {_protocol(r) for r in server_rules}
    if None in protocols:
        own = ("conntrack", ((True, "--ctstate", "RELATED"), (False, "--ctdir", "ORIGINAL")))
        return [((), (flow, own))]
    # any packet of the flow in OUTPUT and in the reply direction goes to our own address
    # (a local socket bound to the server's address): it stays on this machine
    return [(((False, "-p", proto),), (flow,)) for proto in sorted(protocols)]


def fast_rules(family, server_rules, owners) -> list:
    """Where the server list begins: an approved flow's packet accepted, as its owner and
    mark would be by the list (owners: the match tuples of $VPN_USER, $VPN_GROUP and
    $VPN_FWMARK, or [()] when the servers are open to every program)."""
    if not server_rules:
        return []
    return [Rule(family, "filter", "OUTPUT", header, matches + owner, "ACCEPT")
            for header, matches in _approved(family, server_rules, approval(family, server_rules))
            for owner in owners]


def reply_rules(family, server_rules, target="ACCEPT") -> list:
    """The servers' replies to approved flows (ESTABLISHED by definition: the flow began
    here, and a packet without a connection, INVALID, has no mark), accepted before anything
    else in INPUT when nothing of the user's comes first; never a flow that also has the
    tunnel's bit (its packets must come by the tunnel). The fence's side: target RETURN."""
    if not server_rules:
        return []
    flow = ("connmark", ((False, "--mark", f"0x{APPROVED_BIT:x}/0x{APPROVED_BIT | TUNNEL_FLOW_BIT:x}"),))
    table = "filter" if target == "ACCEPT" else FENCE_TABLE
    return [Rule(family, table, "INPUT", (), (flow,), target)]


def fence_rules(family, server_rules, owners) -> list:
    """The fence's side of fast rules that stand before the judging mark: the packets of
    approved flows go on unmarked (RETURN: the fence never accepts)."""
    if not server_rules:
        return []
    return [Rule(family, FENCE_TABLE, "OUTPUT", header, matches + owner, "RETURN")
            for header, matches in _approved(family, server_rules, f"0x{APPROVED_BIT:x}/0x{APPROVED_BIT:x}")
            for owner in owners]


def chain(family, server_rules) -> list:
    if not server_rules:
        return []
    return [Rule(family, "filter", CHAIN, (), (), "CONNMARK", (("--set-xmark", approval(family, server_rules)),)),
            Rule(family, "filter", CHAIN, (), (), "ACCEPT")]
