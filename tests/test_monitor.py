"""`vpn-firewall monitor --json` in a namespace: the tunnel's interface coming and going, a
blocked packet with its destination, protocol, port and sending user (by NFLOG), a flood as
one line a second, and the guard's repair, each as the kernel made them happen."""

import json
import os
import select
import signal
import subprocess
import sys
import time

from conftest import LOADER, needs_root, run_loader, terminate, write_config

pytestmark = [needs_root]

CABLE = ("ip link add v0 type veth peer name v1 && ip link set v0 up && ip addr add 198.19.0.1/24 dev v0 && "
         "ip route add default via 198.19.0.254 dev v0 onlink && "
         "ip neigh replace 198.19.0.254 lladdr 02:00:00:00:00:fe dev v0 nud permanent")
SEND = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(int(sys.argv[2])):\n    try: s.sendto(b'x', (sys.argv[1], 9))\n    except OSError: pass\n")


def events_until(monitor, wanted, seconds=10) -> list:
    """The monitor's events until one satisfies WANTED; AssertionError when the time is up."""
    got = read_for(monitor, seconds, wanted)
    if not got or not wanted(got[-1]):
        raise AssertionError(f"not seen within {seconds} s; seen: {got}")
    return got


def read_for(monitor, seconds, wanted=lambda e: False) -> list:
    """The monitor's events for SECONDS at most (until one satisfies WANTED). Read from the
    pipe's descriptor itself: select() does not see lines a buffered reader already holds."""
    got, deadline = [], time.time() + seconds
    pending = getattr(monitor, "pending", b"")
    while time.time() < deadline:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            got.append(json.loads(line))
            if wanted(got[-1]):
                monitor.pending = pending
                return got
        if not select.select([monitor.stdout], [], [], max(0.0, deadline - time.time()))[0]:
            break
        data = os.read(monitor.stdout.fileno(), 65536)
        if not data:
            break
        pending += data
    monitor.pending = pending
    return got


def test_monitor_sees_the_tunnel_blocked_packets_with_their_sender_and_the_guards_repair(tmp_path, netns):
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"})
    ns = netns("monitor")
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    run = ["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf]
    monitor = subprocess.Popen(run + ["monitor", "--json"], stdout=subprocess.PIPE)
    guard = None
    try:
        assert events_until(monitor, lambda e: e["event"] == "start")[-1]["tunnels"] == {}
        ns.sh("ip link add tun0 type veth peer name vp0 && ip link set tun0 up")
        events_until(monitor, lambda e: e["event"] == "tunnel" and e["interface"] == "tun0" and e["up"])
        ns.sh("ip link set tun0 down")
        events_until(monitor, lambda e: e["event"] == "tunnel" and e["interface"] == "tun0" and not e["up"])
        # a program of nobody's sends where it may not: its destination, port and user
        subprocess.run(["ip", "netns", "exec", ns.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", SEND, "192.0.2.77", "3"], check=True)
        blocked = events_until(monitor, lambda e: e["event"] == "blocked")[-1]
        assert (blocked["direction"], blocked["protocol"], blocked["destination"], blocked["port"], blocked["uid"],
                blocked["packets"]) == ("out", "udp", "192.0.2.77", 9, 65534, 3), blocked
        # a flood: one line a second for its destination, with the count
        start = time.time()
        subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", SEND, "192.0.2.88", "20000"], check=True)
        flood = [e for e in read_for(monitor, max(0.5, start + 3.5 - time.time()))
                 if e["event"] == "blocked" and e.get("destination") == "192.0.2.88"]
        assert flood and sum(e["packets"] for e in flood) > 1, flood
        seconds = [int(e["time"]) for e in flood]
        assert len(seconds) == len(set(seconds)), f"at most one line a second for it: {flood}"
        # the guard's repair
        guard = subprocess.Popen(run + ["guard"], stderr=subprocess.PIPE, text=True)
        assert "guarding the rules in force" in guard.stderr.readline()
        ns.sh("iptables -F VPNFW-OUTPUT")
        repair = events_until(monitor, lambda e: e["event"] == "repair")[-1]
        assert repair["family"] == "ip" and "repaired" in repair["outcome"], repair
    finally:
        terminate(guard, monitor)
    assert monitor.returncode == 0


def test_monitor_text_lines(tmp_path, netns):
    """Without --json: one line an event, with its time."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"})
    ns = netns("monitortext")
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    monitor = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf,
                                "monitor"], stdout=subprocess.PIPE, text=True)
    try:
        assert "watching: tunnel tun+ wg+" in monitor.stdout.readline()
        subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", SEND, "192.0.2.99", "2"], check=True)
        line = monitor.stdout.readline()
        assert line[2] == ":" and "blocked out udp 192.0.2.99:9 from uid 0: 2 packet(s)" in line, line
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=5)


def test_a_second_monitor_without_the_nflog_group_says_so_and_watches_the_rest(tmp_path, netns):
    """NFLOG group 5650 has one listener per namespace (ulogd2 bound to it, or another
    monitor): the second says that blocked packets cannot be shown, and still reports the
    tunnel; the first still gets the blocked packets."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"})
    ns = netns("monitor2")
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    run = ["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf, "monitor", "--json"]
    first = subprocess.Popen(run, stdout=subprocess.PIPE)
    second = None
    try:
        events_until(first, lambda e: e["event"] == "start")
        second = subprocess.Popen(run, stdout=subprocess.PIPE)
        got = events_until(second, lambda e: e["event"] == "start")
        errors = [e for e in got if e["event"] == "error"]
        assert errors and "blocked packets cannot be shown" in errors[0]["message"], got
        assert "another program listens to NFLOG group 5650" in errors[0]["message"], errors
        ns.sh("ip link add tun0 type veth peer name vp0 && ip link set tun0 up")
        events_until(second, lambda e: e["event"] == "tunnel" and e["interface"] == "tun0" and e["up"])
        subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", SEND, "192.0.2.66", "2"], check=True)
        events_until(first, lambda e: e["event"] == "blocked" and e.get("destination") == "192.0.2.66")
    finally:
        terminate(second, first)
    assert second.returncode == 0 and first.returncode == 0


def test_an_ipv6_packet_with_hop_by_hop_options_is_named_by_what_follows():
    """An MLD report carries a hop-by-hop header (next header 0): it is ICMPv6 all the same."""
    import ipaddress

    from vpnfw.nflog import _headers

    header = bytes([0x60, 0, 0, 0, 0, 16, 0, 1]) + bytes(16) + ipaddress.IPv6Address("ff02::16").packed
    hop_by_hop = bytes([58, 0, 5, 2, 0, 0, 1, 0])  # next: ICMPv6; router alert
    assert _headers(10, header + hop_by_hop + bytes([143, 0, 0, 0, 0, 0, 0, 0])) == ("icmp6", "ff02::16", None)
    udp = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + bytes([192, 0, 2, 1, 192, 0, 2, 77])
    assert _headers(2, udp + bytes([0x9c, 0x40, 0x01, 0xbb, 0, 8, 0, 0])) == ("udp", "192.0.2.77", 443)
