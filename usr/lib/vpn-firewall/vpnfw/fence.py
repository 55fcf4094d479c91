"""The fence (model.FENCE_TABLE): a second look, in another table, at what our filter
chains did not judge, so that another tool accepting ahead of them does not open the machine.
"""

from .model import FENCE_TABLE, JUDGED_CHAIN, JUDGED_MARK, UNJUDGE, Rule, our_chain


def _iface(flag, name):
    return (False, flag, name)


def fence(family, tunnels, inside, fast_in=None, fast_out=None, excluded=()):
    """The fence's chains (see model.FENCE_TABLE): a packet that our filter chain did not
    judge, because another tool accepted it first, passes only when it stays on loopback, in
    the tunnel or on a trusted internal interface; anything else is dropped, there being no
    REJECT outside the filter table. It never accepts: the packet just goes on; a judged one
    with the judging bit cleared (goto JUDGED, which ends where the built-in chain goes on).
    fast_in, fast_out: None when the user's rules come first in the filter chain; else our
    chain accepts some packets before it marks them (the tunnel's, and the approved server
    flows' that these rules of server_flows name), and the fence lets the same ones by first.
    excluded: the fence's rules of exclusion sessions (exclusion.py), first in OUTPUT.
    Outgoing, the order is policy.output_chain's: the first tunnel interface, the approved
    flows, then the other interfaces (a packet to a server compares one interface name)."""
    judged = (("mark", ((False, "--mark", JUDGED_MARK),)),)

    def chain(name, flag, headers, fast, before=(), tunnels_before=len(tunnels)):
        first = [] if fast is None else [(_iface(flag, i),) for i in tunnels]
        tunnel = [Rule(family, FENCE_TABLE, name, header, (), "RETURN") for header in first]
        # a flow's first packet is judged and approved at once: its judging bit is cleared first
        judging = [Rule(family, FENCE_TABLE, name, (), judged, our_chain(JUDGED_CHAIN), goto=True)]
        out = list(before) + tunnel[:tunnels_before] + judging + list(fast or ()) + tunnel[tunnels_before:]
        out += [Rule(family, FENCE_TABLE, name, header, (), "RETURN") for header in headers if header not in first]
        return out + [Rule(family, FENCE_TABLE, name, (), (), "DROP")]

    return (
        [Rule(family, FENCE_TABLE, JUDGED_CHAIN, (), (), "MARK", (("--set-xmark", UNJUDGE),))]
        + chain("INPUT", "-i", [(_iface("-i", i),) for i in ("lo", *tunnels, *inside)], fast_in)
        + chain("FORWARD", None, [(_iface("-i", g), _iface("-o", t)) for g in inside for t in tunnels]
                + [(_iface("-o", g),) for g in inside], None)
        + chain("OUTPUT", "-o", [(_iface("-o", i),) for i in ("lo", *tunnels, *inside)], fast_out, excluded,
                tunnels_before=1)
    )
