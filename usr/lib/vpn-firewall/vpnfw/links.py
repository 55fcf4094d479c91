"""This network namespace's interfaces as the kernel describes them, and the paths around
the firewall that can be seen from here.

Read over rtnetlink rather than /sys/class/net: sysfs shows the namespace it was mounted
in, which need not be the one this process runs in.

The paths: an interface named like a tunnel that is not one (its traffic passes as
tunnel traffic), macvlan and ipvlan devices (they send straight out of their physical
parent; moved into a container's namespace, past this firewall), and bridges whose ports
exchange frames unseen by iptables because br_netfilter is not loaded.
"""

import socket
import struct
from collections import namedtuple

from . import netlink

RTM_GETLINK, NLMSG_ERROR, NLMSG_DONE = 18, 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME, IFLA_LINK, IFLA_MASTER, IFLA_OPERSTATE, IFLA_LINKINFO = 3, 5, 10, 16, 18
IFLA_INFO_KIND = 1
ARPHRD_PPP = 512
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
# Devices that really are tunnels: whatever enters them is encapsulated (tun also covers
# userspace WireGuard and tap; the others are the kernel's own tunnels, IPsec's among them).
TUNNEL_KINDS = frozenset(("tun", "wireguard", "ppp", "ovpn", "ovpn-dco", "ipip", "sit", "gre", "ip6gre",
                          "ip6tnl", "vti", "vti6", "xfrm"))
SENDS_BY_PARENT = frozenset(("macvlan", "macvtap", "ipvlan", "ipvtap"))
BR_NETFILTER = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables")

Link = namedtuple("Link", "index name kind arphrd master lower state")


def read_links() -> list:
    """Every interface of this namespace, as Link, in index order; [] if netlink is unavailable."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    except OSError:
        return []
    with sock:
        sock.bind((0, 0))
        request = struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        sock.send(request + struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0))
        links = []
        while True:
            data = sock.recv(1 << 16)
            for kind, body in netlink.messages(data):
                if kind == NLMSG_DONE or kind == NLMSG_ERROR:
                    return sorted(links)
                if kind == 16:  # RTM_NEWLINK
                    links.append(_link(body))


def _link(body: bytes) -> Link:
    _, arphrd, index, _, _ = struct.unpack_from("=BxHiII", body)
    attrs = netlink.attributes(body, 16)
    text = netlink.text
    number = lambda key: struct.unpack("=I", attrs[key][:4])[0] if key in attrs else 0  # noqa: E731
    kind = ""
    if IFLA_LINKINFO in attrs:
        kind = text(netlink.attributes(attrs[IFLA_LINKINFO]).get(IFLA_INFO_KIND, b""))
    state = attrs.get(IFLA_OPERSTATE, b"\0")[0]
    return Link(index, text(attrs.get(IFLA_IFNAME, b"")), kind, arphrd, number(IFLA_MASTER), number(IFLA_LINK),
                OPERSTATES[state] if state < len(OPERSTATES) else "unknown")


def matches(name: str, patterns) -> bool:
    """Whether an interface name matches iptables-style names ('tun+' is any name starting tun)."""
    return any(name.startswith(p[:-1]) if p.endswith("+") else name == p for p in patterns)


def is_tunnel(link: Link) -> bool:
    return link.kind in TUNNEL_KINDS or link.arphrd == ARPHRD_PPP


def br_netfilter_on() -> bool:
    """Whether bridged frames pass iptables and ip6tables (br_netfilter loaded and switched on)."""
    for path in BR_NETFILTER:
        try:
            with open(path) as f:
                if f.read().strip() != "1":
                    return False
        except OSError:
            return False
    return True


class Path(namedtuple("Path", "name what fatal")):
    """A way around the firewall: the interface, what it is and does; fatal: a leak-test failure."""

    __slots__ = ()


def paths_around(links, patterns, bridged_filtered=None) -> list:
    """The paths around the firewall that these links show, as Path."""
    by_index = {link.index: link for link in links}
    name_of = lambda index: by_index[index].name if index in by_index else "a device of another namespace"  # noqa: E731
    what_kind = lambda link: f"a {link.kind} device" if link.kind else "a physical device"  # noqa: E731
    found = []
    for link in links:
        if link.name != "lo" and matches(link.name, patterns) and not is_tunnel(link):
            parent = ""
            if link.lower and link.lower != link.index:
                parent = f" (its peer: {name_of(link.lower)})" if link.kind == "veth" else f" on {name_of(link.lower)}"
            found.append(Path(link.name, f"named like a tunnel ($VPN_INTERFACES {' '.join(patterns)}) but "
                              f"{what_kind(link)}{parent}, not a tunnel: what it sends passes as tunnel "
                              "traffic, unencrypted", True))
        elif link.kind in SENDS_BY_PARENT:
            found.append(Path(link.name, f"a {link.kind} device on {name_of(link.lower)}: it sends straight out "
                              "of its parent; moved into another namespace (a container's), its traffic "
                              "passes this firewall unseen", False))
    if bridged_filtered is None:
        bridged_filtered = br_netfilter_on()
    if not bridged_filtered:
        for bridge in (link for link in links if link.kind == "bridge"):
            ports = [link.name for link in links if link.master == bridge.index]
            if ports:
                found.append(Path(bridge.name, f"a bridge with ports {', '.join(ports)}, and br_netfilter is "
                                  "off: frames bridged between its ports pass iptables unseen", False))
    return found


def describe(path: Path) -> str:
    return f"{path.name}: {path.what}"

