"""The kill-switch policy: settings and the user's rules in, the whole ruleset out, as data.

Order in each chain: loopback, then the user's rules (their exceptions are theirs to
own), then what the settings allow, then a rate-limited log and the final refusal.
OUTPUT never accepts ESTABLISHED,RELATED outside the tunnel: when the VPN client dies,
the kernel's ICMP errors and the packets of connections that were open through the
tunnel must not leave by another interface.
"""

from . import server_flows, values as V
from .fence import fence
from .model import (BUILTIN_CHAINS, FENCE_TABLE, JUDGED_BIT, JUDGED_MARK, LOCKDOWN_COMMENT,
                    TUNNEL_FLOW_CHAIN, TUNNEL_FLOW_MARK, Rule, our_chain)

UDP_DNS = (("udp", ((False, "--dport", "53"),)),)
TCP_DNS = (("tcp", ((False, "--dport", "53"),)),)
ESTABLISHED = (("conntrack", ((False, "--ctstate", "RELATED,ESTABLISHED"),)),)
LOG_LIMIT = ("limit", ((False, "--limit", "5/min"), (False, "--limit-burst", "10")))
# What a LAN needs besides its own networks: broadcast and link-scope multicast.
LAN_MULTICAST = {V.IP: ("224.0.0.0/24", "239.255.255.250/32", "255.255.255.255/32"), V.IP6: ("ff02::/16",)}
BROADCAST = (("addrtype", ((False, "--dst-type", "BROADCAST"),)),)
# A LAN host may talk to this machine only at an address of the interface it came in by (or
# to everyone): its probes of the tunnel's address, which would answer, stay unanswered.
# IPv6's addrtype ANDs the types it is given (IPv4's ORs them): LOCAL alone there, the
# link-scope multicast a LAN needs has its own rule.
ON_THIS_LINK = {V.IP: (("addrtype", ((False, "--dst-type", "LOCAL,BROADCAST,MULTICAST"),
                                     (False, "--limit-iface-in", None))),),
                V.IP6: (("addrtype", ((False, "--dst-type", "LOCAL"), (False, "--limit-iface-in", None))),)}
DHCP_OUT = {V.IP: ("68", "67"), V.IP6: ("546", "547")}
# Where a DHCP client's unicast may go: the private, link-local and carrier-grade NAT
# networks that LANs and mobile hotspots use (none is routed on the internet), and
# $LAN_NETS. Never an arbitrary host: a rogue server on the LAN may name an internet host
# as its server identifier, and the client would renew there, outside the tunnel.
DHCP_PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")
# DHCPv6 lives on the link: All_DHCP_Relay_Agents_and_Servers and link-local addresses.
LINK_LOCAL6 = ("fe80::/10",)
DHCP6_PEERS = ("ff02::1:2/128",) + LINK_LOCAL6
# Neighbour discovery answers only on the link; a solicitation from a spoofed off-link
# source must not make this machine send to that source.
LINK_SCOPE6 = LINK_LOCAL6 + ("ff02::/16",)
NDP_OUT = ("133", "135", "136")  # router and neighbour solicitation, neighbour advertisement
NDP_IN = ("134", "135", "136")  # router advertisement, neighbour solicitation and advertisement
MLD_REPORT = "143"
HOP_LIMIT_255 = ("hl", ((False, "--hl-eq", "255"),))  # only on-link senders can send these
TUNNEL_OUT_CHAIN = "TUNNEL-OUT"  # where packets into the tunnel go first, when no rule of the user's comes before
# Up to SERVER_LIST_SPLIT server rules per family stay one list, as written. A longer list
# becomes a tree of chains entered by address range: at most SERVER_FANOUT jumps in a chain,
# at most SERVER_LIST_SPLIT servers in a leaf. A packet to a server then passes some tens
# of rules instead of up to n (5,000 servers: about 30), and the chains stay few.
SERVER_LIST_SPLIT = 32
SERVER_FANOUT = 16
SERVER_CHAIN = "SERVERS-"


def _rule(family, chain, header=(), matches=(), target="ACCEPT", options=()):
    return Rule(family, "filter", chain, header, matches, target, options)


def _h(flag, value, negated=False):
    return (negated, flag, value)


_PORT_UNREACHABLE = {V.IP: "icmp-port-unreachable", V.IP6: "icmp6-port-unreachable"}


def _reject_all(family, chain):
    default = _PORT_UNREACHABLE[family]
    return [
        _rule(family, chain, (_h("-p", "tcp"),), (), "REJECT", (("--reject-with", "tcp-reset"),)),
        _rule(family, chain, (), (), "REJECT", (("--reject-with", default),)),
    ]


def _log(family, chain, word) -> list:
    """What was blocked: to the kernel log, and to `vpn-firewall monitor` by netlink (nflog.py)."""
    from .nflog import LIMIT, options

    return [_rule(family, chain, (), (LOG_LIMIT,), "LOG", (("--log-prefix", f"vpn-firewall blocked {word}: "),)),
            _rule(family, chain, (), (LIMIT,), "NFLOG", options(word))]


def _ports(proto, sport, dport):
    return ((proto, ((False, "--sport", sport), (False, "--dport", dport))),)


def _owner_matches(settings) -> list:
    """Who may reach the servers: each of these users' and groups' sockets, and packets with
    the tunnel's fwmark (kernel WireGuard's socket has no owner; only root sets a mark); the
    mark is compared without the fence's bit, which our first rule has set already; the
    cgroups of the units of $VPN_UNITS that run (bypass.py). [()]: anyone; []: no one."""
    owners = [("owner", ((False, "--uid-owner", uid),)) for uid in settings.vpn_users]
    owners += [("owner", ((False, "--gid-owner", gid),)) for gid in settings.vpn_groups]
    if settings.vpn_units:
        from .bypass import running

        owners += [("cgroup", ((False, "--path", cgroup),)) for _unit, cgroup in running(settings, settings.vpn_units)]
        if not owners and settings.vpn_fwmark is None:
            return []  # $VPN_UNITS and none of them runs: no program may reach the servers now
    if (owners or settings.vpn_units) and settings.vpn_fwmark is not None:
        owners.append(("mark", ((False, "--mark", f"0x{settings.vpn_fwmark:x}/0x{0xFFFFFFFF & ~JUDGED_BIT:x}"),)))
    return [(m,) for m in owners] or [()]


def _endpoint_rules(family, settings):
    owner_matches = _owner_matches(settings)
    out = []
    for ep in settings.vpn_servers:
        if ep.family != family:
            continue
        if ep.proto is None and ep.port is None:
            shapes = [((_h("-d", ep.net),), ())]
        else:
            protos = (ep.proto,) if ep.proto else ("udp", "tcp")
            shapes = [
                ((_h("-d", ep.net), _h("-p", p)), ((p, ((False, "--dport", ep.port),)),) if ep.port else ())
                for p in protos
            ]
        for header, port_match in shapes:
            for owner in owner_matches:
                out.append(_rule(family, "OUTPUT", header, port_match + owner))
    return out


def _dns_refusals(family, header=()):
    return [
        _rule(family, "OUTPUT", header + (_h("-p", "udp"),), UDP_DNS, "REJECT",
              (("--reject-with", _PORT_UNREACHABLE[family]),)),
        _rule(family, "OUTPUT", header + (_h("-p", "tcp"),), TCP_DNS, "REJECT", (("--reject-with", "tcp-reset"),)),
    ]


def _dns_servers(family, settings):
    """The family's $DNS_SERVERS, or None when unset (DNS through the tunnel to anyone)."""
    if settings.dns_servers is None:
        return None
    return [net for fam, net in settings.dns_servers if fam == family]


def _tunnel_rules(family, settings):
    """Everything into the tunnel, DNS only to $DNS_SERVERS when it names any."""
    out = []
    servers = _dns_servers(family, settings)
    for iface in settings.vpn_interfaces:
        if servers is not None:
            # the bulk (tcp and udp not to port 53) first, so that it need not pass the DNS rules
            for proto in ("tcp", "udp"):
                out.append(_rule(family, "OUTPUT", (_h("-o", iface), _h("-p", proto)),
                                 ((proto, ((True, "--dport", "53"),)),)))
            for dst in servers:
                for proto, match in (("udp", UDP_DNS), ("tcp", TCP_DNS)):
                    out.append(_rule(family, "OUTPUT", (_h("-d", dst), _h("-o", iface), _h("-p", proto)), match))
            out += _dns_refusals(family, (_h("-o", iface),))
        out.append(_rule(family, "OUTPUT", (_h("-o", iface),)))
    return out


def _icmp6(chain, types, extra_header=()):
    return [
        _rule(V.IP6, chain, extra_header + (_h("-p", "ipv6-icmp"),),
              (("icmp6", ((False, "--icmpv6-type", t),)), HOP_LIMIT_255))
        for t in types
    ]


def _dhcp_peers(family, chain, settings):
    """The networks a DHCP client may send to (OUTPUT) or hear from (INPUT)."""
    if family == V.IP6:
        return DHCP6_PEERS if chain == "OUTPUT" else LINK_LOCAL6
    peers = list(DHCP_PRIVATE)
    peers += [net for fam, net in settings.lan_nets if fam == family and net not in peers]
    return peers


def _dhcp_rules(family, chain, settings):
    client, server = DHCP_OUT[family]
    if chain == "OUTPUT":
        flag, ports = "-d", _ports("udp", client, server)
        rules = [_rule(family, chain, (_h("-p", "udp"),), ports + BROADCAST)] if family == V.IP else []
    else:
        flag, ports, rules = "-s", _ports("udp", server, client), []
    rules += [_rule(family, chain, (_h(flag, net), _h("-p", "udp")), ports) for net in _dhcp_peers(family, chain, settings)]
    if family == V.IP6 and chain == "OUTPUT":
        rules += [rule for dst in LINK_SCOPE6 for rule in _icmp6(chain, NDP_OUT, (_h("-d", dst),))]
        rules.append(_rule(V.IP6, chain, (_h("-d", "ff02::16/128"), _h("-p", "ipv6-icmp")),
                           (("icmp6", ((False, "--icmpv6-type", MLD_REPORT),)),)))
    elif family == V.IP6:
        rules += _icmp6(chain, NDP_IN)
    return rules


def _tunnel_flows(family, chain, settings):
    """The tunnel's connections get TUNNEL_FLOW_MARK when they begin; in INPUT a packet of
    one of them that did not come by the tunnel goes to the chain that drops it. Before the
    user's rules: an ESTABLISHED accept of theirs must not let a spoofed reply in."""
    flag = "-o" if chain == "OUTPUT" else "-i"
    new = (("conntrack", ((False, "--ctstate", "NEW"),)),)
    rules = [_rule(family, chain, (_h(flag, iface),), new, "CONNMARK", (("--set-xmark", TUNNEL_FLOW_MARK),))
             for iface in settings.vpn_interfaces]
    if chain == "INPUT":
        rules.append(_rule(family, chain, (), (("connmark", ((False, "--mark", TUNNEL_FLOW_MARK),)),),
                           our_chain(TUNNEL_FLOW_CHAIN)))
    return rules


def _tunnel_out_chain(family, settings):
    """What the tunnel's packets pass when they come first (only they enter it): the
    tunnel-flow mark, DNS only to $DNS_SERVERS, then accept. The mark is set on every packet
    rather than on a connection's first: a bit already set is not written again, and on
    nf_tables (iptables 1.8.9) asking for the conntrack state goes through the xtables compat
    layer, which cost every packet into the tunnel about 70 ns more than the mark does here
    (bench/per_packet.py). A flow that only later turns into the tunnel gets the mark too:
    its replies must then come by the tunnel, as any tunnel flow's."""
    out = [_rule(family, TUNNEL_OUT_CHAIN, (), (), "CONNMARK", (("--set-xmark", TUNNEL_FLOW_MARK),))]
    servers = _dns_servers(family, settings)
    if servers is not None:
        for proto in ("tcp", "udp"):  # the bulk first
            out.append(_rule(family, TUNNEL_OUT_CHAIN, (_h("-p", proto),), ((proto, ((True, "--dport", "53"),)),)))
        for dst in servers:
            for proto, match in (("udp", UDP_DNS), ("tcp", TCP_DNS)):
                out.append(_rule(family, TUNNEL_OUT_CHAIN, (_h("-d", dst), _h("-p", proto)), match))
        out += [r._replace(chain=TUNNEL_OUT_CHAIN) for r in _dns_refusals(family)]
    return out + [_rule(family, TUNNEL_OUT_CHAIN)]


def _tunnel_flow_chain(family, settings):
    """Where a packet of a tunnel flow goes in INPUT: back if it came by the tunnel, else dropped."""
    rules = [_rule(family, TUNNEL_FLOW_CHAIN, (_h("-i", iface),), (), "RETURN") for iface in settings.vpn_interfaces]
    if settings.log_blocked:  # "spoof", not "spoofed": a log prefix has room for 29 characters
        rules += _log(family, TUNNEL_FLOW_CHAIN, "spoof")
    return rules + [_rule(family, TUNNEL_FLOW_CHAIN, (), (), "DROP")]


def _lan_rules(family, chain, settings):
    """The LAN: on every network ($ALLOW_LAN), or only on the trusted ones ($TRUSTED_LANS:
    by their interface, each rule named for it so that the guard can take it back)."""
    if not settings.trusted_lans:
        return _lan_on(family, chain, settings, ())
    from .trust import lan_rules

    return lan_rules(family, chain, settings, _lan_on)


def _lan_on(family, chain, settings, on_iface):
    flag = "-d" if chain == "OUTPUT" else "-s"
    on_link = () if chain == "OUTPUT" else ON_THIS_LINK[family]
    out = [_rule(family, chain, (_h(flag, net),) + on_iface, on_link) for fam, net in settings.lan_nets if fam == family]
    out += [_rule(family, chain, (_h("-d", net),) + on_iface) for net in LAN_MULTICAST[family]]
    if family == V.IP:
        out.append(_rule(family, chain, on_iface, BROADCAST))
    return out


def _split_server_list(family, rules):
    """(rules for OUTPUT, rules of the server chains): the list as is when it is short,
    else a tree of chains by address. Every server rule accepts, so a packet is accepted
    iff some rule matches it, wherever that rule stands: the tree changes the cost of a
    verdict, never the verdict."""
    ranged, others = [], []
    for r in rules:
        if r.header and r.header[0][1] == "-d":
            ranged.append((V.net_bounds(r.header[0][2]), r))
        else:
            others.append(r)
    if len(ranged) <= SERVER_LIST_SPLIT:
        return rules, []
    ranged.sort(key=lambda item: item[0])
    jumps, chains = _server_tree(family, ranged, SERVER_CHAIN)
    return others + jumps, chains


def _server_tree(family, ranged, prefix):
    """(iprange jumps into chains prefix1, prefix2..., the rules of those chains): the
    sorted list cut into at most SERVER_FANOUT runs, each cut again while it is longer
    than SERVER_LIST_SPLIT."""
    count = min(SERVER_FANOUT, -(-len(ranged) // SERVER_LIST_SPLIT))
    size = -(-len(ranged) // count)
    jumps, chains = [], []
    for number, start in enumerate(range(0, len(ranged), size), 1):
        group = ranged[start:start + size]
        chain = f"{prefix}{number}"
        first = min(bounds[0] for bounds, _ in group)
        last = max(bounds[1] for bounds, _ in group)
        span = f"{V.address_text(family, first)}-{V.address_text(family, last)}"
        jumps.append(_rule(family, "OUTPUT", (), (("iprange", ((False, "--dst-range", span),)),), our_chain(chain)))
        if len(group) <= SERVER_LIST_SPLIT:
            chains += [r._replace(chain=chain) for _, r in group]
        else:
            inner_jumps, inner_chains = _server_tree(family, group, f"{chain}-")
            chains += [r._replace(chain=chain) for r in inner_jumps] + inner_chains
    return jumps, chains


def _judged(family, chain):
    """The first rule of each filter chain of ours: whatever leaves it alive, it accepted."""
    return _rule(family, chain, (), (), "MARK", (("--set-xmark", JUDGED_MARK),))


def output_chain(family, settings, user, endpoints, portal=None, excluded=()):
    """endpoints: _endpoint_rules of this family (build needs them for the fence too);
    excluded: the filter rules of exclusion sessions (exclusion.py)."""
    tunnel_first, into_tunnel, approved_first = [], [], []
    if not user:
        # Nothing of the user's decides before the tunnel: its packets, most of the traffic,
        # go to their own chain first and pass a handful of rules (the fence lets them by
        # their interface, so they need no judging mark either).
        tunnel_first = [_rule(family, "OUTPUT", (_h("-o", iface),), (), our_chain(TUNNEL_OUT_CHAIN))
                        for iface in settings.vpn_interfaces]
        into_tunnel = _tunnel_out_chain(family, settings)
        # then the flows the server list approved (server_flows.py): only accepts stand
        # before them, so they may go before the judging mark; the fence knows them too
        approved_first = server_flows.fast_rules(family, endpoints, _owner_matches(settings))
    # What an exclusion marked comes first: its root asked for it, and mangle's reroute around
    # the tunnel is not seen by -o in OUTPUT (the hook's device is the one routed before), so
    # to every rule below it would look like the tunnel's (and get the tunnel-flow bit).
    # The first tunnel interface of $VPN_INTERFACES, then the approved flows, then the other
    # interfaces: a packet to a server passes one interface comparison, not one per interface,
    # and the first-named tunnel's packets none of the approved flows' connmark matches (on
    # nf_tables, iptables 1.8.9's connmark is an xtables compat match, the dearer kind:
    # bench/per_packet.py). The fence keeps the same order.
    rules = (list(excluded) + tunnel_first[:1] + approved_first + tunnel_first[1:]
             + [_judged(family, "OUTPUT"), _rule(family, "OUTPUT", (_h("-o", "lo"),))])
    if not tunnel_first:
        rules += _tunnel_flows(family, "OUTPUT", settings)
    rules += user
    if portal is not None:  # after the user's rules, before the refusals of DNS
        from .portal import rules as portal_rules

        rules += portal_rules(family, portal)
    # The tunnel before the servers: its packets are most of the traffic, and so need not
    # pass a long list of servers on their way.
    if not tunnel_first:
        rules += _tunnel_rules(family, settings)
    if settings.overlays or settings.overlay_interfaces:  # before the refusals of DNS (MagicDNS)
        from .overlays import rules as overlay_rules

        rules += overlay_rules(family, "OUTPUT", settings, lambda f, c, h: _rule(f, c, h))
    # a flow the server list accepted once is accepted here at once (server_flows.py)
    if not tunnel_first:
        rules += server_flows.fast_rules(family, endpoints, _owner_matches(settings))
    servers, server_chains = _split_server_list(family, server_flows.judged(endpoints))
    server_chains += server_flows.chain(family, endpoints)
    rules += servers
    # Any other DNS is refused here, after the servers (some listen on port 53), before the
    # LAN allowance could let it out.
    rules += _dns_refusals(family)
    # the internal network of gateway mode is trusted like the tunnel: it is not the outside
    rules += [_rule(family, "OUTPUT", (_h("-o", iface),)) for iface in settings.gateway_interfaces]
    if settings.allow_dhcp:
        rules += _dhcp_rules(family, "OUTPUT", settings)
    if settings.allow_lan or settings.trusted_lans:
        rules += _lan_rules(family, "OUTPUT", settings)
    if settings.log_blocked:
        rules += _log(family, "OUTPUT", "out")
    return rules + _reject_all(family, "OUTPUT") + server_chains + (into_tunnel if tunnel_first else [])


def input_chain(family, settings, user, endpoints):
    """endpoints: as output_chain's."""
    rules = []
    if not user:
        # Nothing of the user's decides before: the replies in the tunnel and the servers'
        # to approved flows, most of what comes in, are accepted at once, unmarked (the
        # fence lets the same ones by); a tunnel's new connection still gets its mark below
        rules += [_rule(family, "INPUT", (_h("-i", iface),), ESTABLISHED) for iface in settings.vpn_interfaces]
        rules += server_flows.reply_rules(family, endpoints)
    rules += [_judged(family, "INPUT"), _rule(family, "INPUT", (_h("-i", "lo"),))]
    rules += _tunnel_flows(family, "INPUT", settings)
    rules += user
    # replies first: most packets; no packet is both a reply and INVALID
    rules.append(_rule(family, "INPUT", (), ESTABLISHED))
    rules.append(_rule(family, "INPUT", (), (("conntrack", ((False, "--ctstate", "INVALID"),)),), "DROP"))
    if settings.allow_dhcp:
        rules += _dhcp_rules(family, "INPUT", settings)
    if settings.overlays or settings.overlay_interfaces:  # the overlay's peers, new connections too
        from .overlays import rules as overlay_rules

        rules += overlay_rules(family, "INPUT", settings, lambda f, c, h: _rule(f, c, h))
    if settings.allow_incoming_vpn:
        rules += [_rule(family, "INPUT", (_h("-i", iface),)) for iface in settings.vpn_interfaces]
    rules += [_rule(family, "INPUT", (_h("-i", iface),)) for iface in settings.gateway_interfaces]
    if settings.allow_lan or settings.trusted_lans:
        rules += _lan_rules(family, "INPUT", settings)
    if settings.log_blocked:
        rules += _log(family, "INPUT", "in")
    return rules + [_rule(family, "INPUT", (), (), "DROP")] + _tunnel_flow_chain(family, settings)


def forward_chain(family, settings, user):
    rules = [_judged(family, "FORWARD")] + list(user)
    if settings.gateway_interfaces:
        rules += _gateway_forward(family, settings)
    if settings.log_blocked:
        rules += _log(family, "FORWARD", "fwd")
    for inside in settings.gateway_interfaces:  # the internal clients fail fast
        rules += [_rule(family, "FORWARD", (_h("-i", inside),) + r.header, r.matches, r.target, r.target_options)
                  for r in _reject_all(family, "FORWARD")]
    return rules + [_rule(family, "FORWARD", (), (), "DROP")]


def _gateway_forward(family, settings):
    """Gateway mode: the internal clients reach the world only through the tunnel."""
    chain = "FORWARD"
    rules = [_rule(family, chain, (), (("conntrack", ((False, "--ctstate", "INVALID"),)),), "DROP")]
    servers = _dns_servers(family, settings)
    for inside in settings.gateway_interfaces:
        # within one internal network (a bridge whose frames pass iptables: br_netfilter)
        rules.append(_rule(family, chain, (_h("-i", inside), _h("-o", inside))))
        for tunnel in settings.vpn_interfaces:
            for dst in (servers if servers is not None else [None]):
                for proto, match in (("udp", UDP_DNS), ("tcp", TCP_DNS)):
                    header = ((_h("-d", dst),) if dst else ()) + (_h("-i", inside), _h("-o", tunnel), _h("-p", proto))
                    rules.append(_rule(family, chain, header, match))
        # the clients' DNS anywhere else is refused, before the tunnel's allowance
        rules.append(_rule(family, chain, (_h("-i", inside), _h("-p", "udp")), UDP_DNS, "REJECT",
                           (("--reject-with", _PORT_UNREACHABLE[family]),)))
        rules.append(_rule(family, chain, (_h("-i", inside), _h("-p", "tcp")), TCP_DNS, "REJECT",
                           (("--reject-with", "tcp-reset"),)))
        for tunnel in settings.vpn_interfaces:
            rules.append(_rule(family, chain, (_h("-i", inside), _h("-o", tunnel))))
            rules.append(_rule(family, chain, (_h("-i", tunnel), _h("-o", inside)),
                               (("conntrack", ((False, "--ctstate", "RELATED,ESTABLISHED"),)),)))
    return rules


def _gateway_nat(family, settings):
    """NAT on the tunnel only, never on a physical interface; NAT66 only when asked."""
    wanted = settings.gateway_masquerade if family == V.IP else settings.gateway_masquerade6
    if not settings.gateway_interfaces or not wanted:
        return []
    return [Rule(family, "nat", "POSTROUTING", (_h("-o", tunnel),), (), "MASQUERADE")
            for tunnel in settings.vpn_interfaces]


def build(settings, user_rules, portal=None, exclusions=()) -> dict:
    """family -> the complete list of rules of that family, in chain order; portal: an open
    portal session (see portal.py), whose allowance goes into OUTPUT; exclusions: the live
    exclusion sessions (see exclusion.py)."""
    from .bypass import sessions as bypass_sessions
    from .exclusion import rules as exclusion_rules

    exclusions = list(exclusions) + bypass_sessions(settings)

    ruleset = {}
    for family in V.FAMILIES:
        mine = [r for r in user_rules if r.family == family]
        by_chain = {}
        for r in mine:
            if r.table == "filter":
                by_chain.setdefault(r.chain, []).append(r)
        user_input, user_output = by_chain.get("INPUT", []), by_chain.get("OUTPUT", [])
        endpoints = _endpoint_rules(family, settings)
        fast_in = None if user_input else server_flows.reply_rules(family, endpoints, target="RETURN")
        fast_out = None if user_output else server_flows.fence_rules(family, endpoints, _owner_matches(settings))
        excluded = exclusion_rules(family, exclusions) if exclusions else []
        ruleset[family] = (
            input_chain(family, settings, user_input, endpoints)
            + forward_chain(family, settings, by_chain.get("FORWARD", []))
            + output_chain(family, settings, user_output, endpoints, portal,
                           [r for r in excluded if r.table == "filter"])
            + [r for r in mine if r.table != "filter" or r.chain not in BUILTIN_CHAINS["filter"]]  # user chains
            + _gateway_nat(family, settings)
            + [r for r in excluded if r.table not in ("filter", FENCE_TABLE)]
            + fence(family, settings.vpn_interfaces, settings.gateway_interfaces, fast_in, fast_out,
                    [r for r in excluded if r.table == FENCE_TABLE])
        )
    return ruleset


def lockdown() -> dict:
    """Drop everything but loopback, both families: what is loaded when nothing else can be."""
    mark = (("comment", ((False, "--comment", LOCKDOWN_COMMENT),)),)
    ruleset = {}
    for family in V.FAMILIES:
        ruleset[family] = [
            _rule(family, "INPUT", (_h("-i", "lo"),), mark),
            _rule(family, "INPUT", (), mark, "DROP"),
            _rule(family, "FORWARD", (), mark, "DROP"),
            _rule(family, "OUTPUT", (_h("-o", "lo"),), mark),
            _rule(family, "OUTPUT", (), mark, "DROP"),
        ] + fence(family, (), ())
    return ruleset
