"""`vpn-firewall leak-test`: ask the kernel, not the rules' text, whether anything can leave.

For every interface that is neither loopback nor a VPN interface it sends, bound to that
interface, a TCP connect and a UDP datagram of each family to documentation addresses
that are never routed on the internet (192.0.2.1, 2001:db8::1); then the same routed
normally. A send the kernel refuses at once (EPERM, or a local RST) was blocked; one with
no route never left; one that was handed to the network left.
"""

import errno
import select
import socket
import subprocess
import time

from . import links

TARGETS = {"ip": "192.0.2.1", "ip6": "2001:db8::1"}
PORT = 9  # discard
BLOCKED, NO_ROUTE, LEFT, TUNNEL = "blocked", "no route", "LEFT", "tunnel"
NO_ROUTE_ERRORS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENODEV, errno.EAFNOSUPPORT)
LOCAL_REJECT_SECONDS = 0.05  # a refusal this fast came from this machine's own rules


def _socket(family: str, kind, device):
    s = socket.socket(socket.AF_INET6 if family == "ip6" else socket.AF_INET, kind)
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    return s


def try_tcp(family: str, device=None) -> str:
    try:
        s = _socket(family, socket.SOCK_STREAM, device)
    except OSError:
        return NO_ROUTE
    s.setblocking(False)
    try:
        code = s.connect_ex((TARGETS[family], PORT))
        if code == errno.EPERM:
            return BLOCKED
        if code in NO_ROUTE_ERRORS:
            return NO_ROUTE
        if code not in (0, errno.EINPROGRESS):
            return f"{LEFT} ({errno.errorcode.get(code, code)})"
        start = time.monotonic()
        select.select([], [s], [], 1.0)
        code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in (errno.ECONNREFUSED, errno.EPERM) and time.monotonic() - start < LOCAL_REJECT_SECONDS:
            return BLOCKED
        return LEFT
    finally:
        s.close()


def try_udp(family: str, device=None) -> str:
    try:
        s = _socket(family, socket.SOCK_DGRAM, device)
    except OSError:
        return NO_ROUTE
    try:
        s.sendto(b"vpn-firewall leak-test", (TARGETS[family], PORT))
        return LEFT
    except OSError as e:
        if e.errno == errno.EPERM:
            return BLOCKED
        return NO_ROUTE if e.errno in NO_ROUTE_ERRORS else f"{LEFT} ({errno.errorcode.get(e.errno, e.errno)})"
    finally:
        s.close()


def route_device(family: str) -> str:
    out = subprocess.run(["ip", "-6" if family == "ip6" else "-4", "-o", "route", "get", TARGETS[family]],
                         capture_output=True, text=True)
    words = out.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else ""


def leak_test(patterns, families) -> int:
    """Print the findings; 0 only if nothing can leave outside the tunnel."""
    rows, leaks = [], 0
    links_here = links.read_links()
    physical = [link.name for link in links_here if link.name != "lo" and not links.matches(link.name, patterns)]
    for name in physical:
        for family in families:
            tcp, udp = try_tcp(family, name), try_udp(family, name)
            leaks += (tcp.startswith(LEFT)) + (udp.startswith(LEFT))
            rows.append((name, family, "bound to it", tcp, udp))
    for family in families:
        device = route_device(family)
        tcp, udp = try_tcp(family), try_udp(family)
        through_tunnel = links.matches(device, patterns)
        if through_tunnel:  # what went out went through the tunnel, as it should
            tcp, udp = (TUNNEL if r.startswith(LEFT) else r for r in (tcp, udp))
        else:
            leaks += (tcp.startswith(LEFT)) + (udp.startswith(LEFT))
        rows.append(("(routed)", family, f"via {device or 'no route'}" + (" (tunnel)" if through_tunnel else ""),
                     tcp, udp))
    print(f"{'interface':12} {'family':6} {'socket':24} {'tcp':10} udp")
    for name, family, how, tcp, udp in rows:
        print(f"{name:12} {family:6} {how:24} {tcp:10} {udp}")
    vpn = [f"{link.name} ({link.state})" for link in links_here if links.matches(link.name, patterns)]
    print(f"vpn interfaces ({' '.join(patterns)}): {', '.join(vpn) or 'none present'}")
    # the probes above trust the names: a device named like the tunnel is not probed
    around = links.paths_around(links_here, patterns)
    for path in around:
        print(f"{'LEAK' if path.fatal else 'warning'}: around the firewall: {links.describe(path)}")
    fakes = sum(path.fatal for path in around)
    if leaks or fakes:
        found = [f"{leaks} probe(s) LEFT outside the tunnel"] if leaks else []
        found += [f"{fakes} interface(s) only named like the tunnel"] if fakes else []
        print(f"RESULT: {' and '.join(found)}: this machine is NOT protected")
        return 1
    from .exclusion import read_sessions
    from .exclusion_run import shown

    excluded = read_sessions()
    if excluded:  # this test's own process is outside their cgroups: what it found holds for the rest
        print(f"RESULT: nothing else can leave outside the tunnel: {len(excluded)} exclusion(s) run "
              f"({'; '.join(shown(x['command']) for x in excluded)}), and these probes, from a process "
              "outside them, stayed in")
        return 0
    print("RESULT: nothing can leave outside the tunnel")
    return 0
