"""A flow to a VPN server is judged by the server list once, then accepted by one rule
(server_flows.py): real packets in a namespace, told apart by the kernel's rule counters.
The approval is taken back by a reload whose list drops the server, and it is not a way
out for another user's socket that shares the flow's addresses and ports."""

import os
import subprocess
import sys

import pytest

from conftest import BACKENDS, backend_path, needs_root, run_loader, write_config

pytestmark = [needs_root]

# Sends COUNT datagrams to ADDR:PORT from local port 40000 (SO_REUSEADDR, so that another
# user's socket may share it), each line of stdin one round; prints how many sends failed.
SENDER = r"""
import socket, sys
addr, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40000))
s.connect((addr, 1194))
for line in sys.stdin:
    failed = 0
    for _ in range(count):
        try:
            s.send(b"x" * 64)
        except OSError:
            failed += 1
    print(failed, flush=True)
"""
CABLE = ("ip link add v0 type veth peer name v1 && ip link set v0 up && ip addr add 192.0.2.1/24 dev v0 && "
         "ip route add default via 192.0.2.254 dev v0 onlink && "
         "ip neigh replace 192.0.2.254 lladdr 02:00:00:00:00:fe dev v0 nud permanent")
BOTH = "@def $VPN_SERVERS = (198.51.100.7:1194/udp 198.51.100.8:1194/udp);\n"
ONLY_8 = "@def $VPN_SERVERS = (198.51.100.8:1194/udp);\n"


def counters(ns, env) -> dict:
    """Packets per rule of our OUTPUT chain and the server flow chain, by the rule's text
    (the filter table's: the fence repeats the fast rule)."""
    out = subprocess.run(["ip", "netns", "exec", ns.name, "iptables-save", "-c", "-t", "filter"],
                         capture_output=True, text=True, env=env, check=True).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("[") and "-A VPNFW-" in line:
            packets = int(line[1:line.index(":")])
            found[line[line.index("]") + 2:]] = packets
    return found


def fast(c):
    return sum(n for rule, n in c.items() if rule.startswith("-A VPNFW-OUTPUT ") and "-m connmark --mark 0x4" in rule)


def refused(c):
    return c["-A VPNFW-OUTPUT -j REJECT --reject-with icmp-port-unreachable"]


def start_sender(ns, env, addr, count, user=None):
    argv = ["ip", "netns", "exec", ns.name] + (["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
                                                if user else []) + [sys.executable, "-c", SENDER, addr, str(count)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def round_of(sender) -> int:
    sender.stdin.write("go\n")
    sender.stdin.flush()
    return int(sender.stdout.readline())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_flow_is_judged_once_and_the_approval_goes_with_the_server(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": BOTH})
    ns = netns("flows")
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name).returncode == 0
    # nat sees a flow's first packet, after the fence: the judging bit must be gone by then
    judged_bit = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x10000000/0x10000000"]
    subprocess.run(["ip", "netns", "exec", ns.name, *judged_bit], env=dict(os.environ, **env), check=True)
    sender = start_sender(ns, dict(os.environ, **env), "198.51.100.7", 50)
    try:
        assert round_of(sender) == 0
        c = counters(ns, env)
        server = "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW"
        assert c[server] == 1 and fast(c) == 49, c  # the list once, then the one rule
        nat = subprocess.run(["ip", "netns", "exec", ns.name, "iptables-save", "-c", "-t", "nat"],
                             capture_output=True, text=True, env=dict(os.environ, **env), check=True).stdout
        assert "[0:0] -A POSTROUTING -m mark --mark 0x10000000/0x10000000" in nat, nat
        # the config drops the server: the same flow's packets are refused from the reload on
        write_config(tmp_path / "conf", {"30_user.conf": ONLY_8})
        assert run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name).returncode == 0
        before = refused(counters(ns, env))
        failed = round_of(sender)  # refused: EPERM, and its ICMP error fails the next send() at once
        c = counters(ns, env)
        assert fast(c) == 0 and refused(c) > before and failed == 50, c
        # and back: the list that approved it approves it again
        write_config(tmp_path / "conf", {"30_user.conf": BOTH})
        assert run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name).returncode == 0
        assert round_of(sender) == 0 and fast(counters(ns, env)) >= 49
    finally:
        sender.stdin.close()
        sender.wait(timeout=10)


def _root_owns_the_vpn(tmp_path, netns, backend, tag):
    """A namespace with the cable and both servers, $VPN_USER root, started: (ns, the env for
    the loader, the whole env for senders)."""
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": BOTH + "@def $VPN_USER = root;\n"})
    ns = netns(tag)
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name).returncode == 0
    return ns, env, dict(os.environ, **env)


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_users_socket_in_an_approved_flow_stays_blocked(tmp_path, netns, backend):
    ns, env, full_env = _root_owns_the_vpn(tmp_path, netns, backend, "owner")
    vpn = start_sender(ns, full_env, "198.51.100.7", 20)
    other = start_sender(ns, full_env, "198.51.100.7", 30, user=65534)
    try:
        assert round_of(vpn) == 0
        assert fast(counters(ns, env)) == 19, "root's flow is approved"
        before = refused(counters(ns, env))
        failed = round_of(other)  # nobody's socket, the same addresses and ports: the same conntrack flow
        c = counters(ns, env)
        assert fast(c) == 19 and refused(c) > before and failed == 30, c
    finally:
        for proc in (vpn, other):
            proc.stdin.close()
            proc.wait(timeout=10)


def fence_counter(ns, env, owner) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns.name, "iptables-save", "-c", "-t", "security"],
                         capture_output=True, text=True, env=env, check=True).stdout
    return sum(int(line[1:line.index(":")]) for line in out.splitlines()
               if "-A VPNFW-OUTPUT " in line and "-m connmark" in line and f"--uid-owner {owner} " in line)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fence_lets_an_approved_flow_by_only_for_its_owner(tmp_path, netns, backend):
    """The fast rule stands before the judging mark; when another tool accepts every packet
    ahead of our chain, the fence lets by the flows our list approved, for the owners the
    list names, and nothing else."""
    ns, env, full_env = _root_owns_the_vpn(tmp_path, netns, backend, "fenceflow")
    vpn = start_sender(ns, full_env, "198.51.100.7", 20)
    other = start_sender(ns, full_env, "198.51.100.7", 30, user=65534)
    stranger = start_sender(ns, full_env, "198.51.100.9", 10)  # root, to no server
    try:
        assert round_of(vpn) == 0
        before = fence_counter(ns, env, 0)
        # another tool, ahead of our jump
        subprocess.run(["ip", "netns", "exec", ns.name, "iptables", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
                       env=full_env, check=True)
        assert round_of(vpn) == 0 and fence_counter(ns, env, 0) == before + 20, "the approved flow goes on"
        assert round_of(other) == 30, "another user's socket in the same flow: dropped by the fence"
        assert round_of(stranger) == 10, "a flow no list approved: dropped by the fence"
        assert fence_counter(ns, env, 0) == before + 20
    finally:
        for proc in (vpn, other, stranger):
            proc.stdin.close()
            proc.wait(timeout=10)


# The server's side: echoes what reaches 198.51.100.7:1194; on a line of stdin, sends COUNT
# datagrams to 192.0.2.1:40001, a port no flow of ours uses (a new connection from the server's
# address: what a LAN attacker spoofing it would send).
SERVER = r"""
import socket, sys, threading
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
echo.bind(("198.51.100.7", 1194))
def serve():
    while True:
        data, peer = echo.recvfrom(2048)
        echo.sendto(data, peer)
threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    for _ in range(int(line)):
        echo.sendto(b"y" * 64, ("192.0.2.1", 40001))
    print("sent", flush=True)
"""
# On our side: sends COUNT datagrams from 40000 to the server, then counts for half a second
# what came back to 40000 and what came to 40001; prints both.
ROUND_TRIP = r"""
import socket, sys, time
count = int(sys.argv[1])
flow, other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flow.bind(("0.0.0.0", 40000)); other.bind(("0.0.0.0", 40001))
flow.connect(("198.51.100.7", 1194))
for s in (flow, other):
    s.settimeout(0.05)
for line in sys.stdin:
    for _ in range(count):
        flow.send(b"x" * 64)
    got, deadline = {"replies": 0, "new": 0}, time.time() + 0.5
    while time.time() < deadline:
        for name, s in (("replies", flow), ("new", other)):
            try:
                s.recv(2048)
                got[name] += 1
            except OSError:
                pass
    print(got["replies"], got["new"], flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fence_lets_an_approved_flows_replies_in_and_nothing_new_from_the_server(tmp_path, netns, backend):
    """Another tool accepts every packet in INPUT ahead of our chain: the server's replies to
    the approved flow still come in (the fence knows them), a new connection from the
    server's address does not."""
    env = {"PATH": backend_path(tmp_path, backend)}
    full_env = dict(os.environ, **env)
    conf = write_config(tmp_path / "conf", {"30_user.conf": BOTH})
    ours, far = netns("replies"), netns("server")
    ours.sh(f"ip link add v0 type veth peer name v1 netns {far.name} && ip link set v0 up && "
            "ip addr add 192.0.2.1/24 dev v0 && ip route add default via 192.0.2.254 dev v0")
    far.sh("ip link set lo up && ip link set v1 up && ip addr add 192.0.2.254/24 dev v1 && "
           "ip addr add 198.51.100.7/32 dev lo")
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ours.name).returncode == 0
    server = subprocess.Popen(["ip", "netns", "exec", far.name, sys.executable, "-c", SERVER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client = subprocess.Popen(["ip", "netns", "exec", ours.name, sys.executable, "-c", ROUND_TRIP, "10"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full_env)

    def round_trip(new):
        server.stdin.write(f"{new}\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "sent"
        client.stdin.write("go\n")
        client.stdin.flush()
        return tuple(int(n) for n in client.stdout.readline().split())

    try:
        assert server.stdout.readline().strip() == "ready"
        assert round_trip(5) == (10, 0), "our rules: replies in, the server's new connection refused"
        subprocess.run(["ip", "netns", "exec", ours.name, "iptables", "-I", "INPUT", "1", "-j", "ACCEPT"],
                       env=full_env, check=True)  # another tool, ahead of our jump
        assert round_trip(5) == (10, 0), "the fence: the approved flow's replies in, nothing new"
    finally:
        for proc in (server, client):
            proc.stdin.close()
            proc.kill()
            proc.wait(timeout=10)


# Sends to ADDR:1194 from port 40000 for SECONDS; prints how many sends there were and failed.
FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
s.connect((sys.argv[1], 1194))
sent = failed = 0
print("go", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    sent += 1
    try:
        s.send(b"x" * 64)
    except OSError:
        failed += 1
print(sent, failed, flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reload_with_another_list_drops_nothing_of_a_flow_it_keeps(tmp_path, netns, backend):
    """The filter and fence tables are committed one after the other: between the two, the
    VPN's packets (approved by the old list, then by the new) must still pass both."""
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": BOTH})
    ns = netns("reloadflow")
    ns.sh(CABLE)
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name).returncode == 0
    flood = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", FLOOD, "198.51.100.7", "4"],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, **env))
    try:
        assert flood.stdout.readline().strip() == "go"
        for extra in ("198.51.100.9", "198.51.100.10", "198.51.100.11"):
            write_config(tmp_path / "conf", {"30_user.conf": BOTH.replace(");", f" {extra}:1194/udp);")})
            assert run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name).returncode == 0
        sent, failed = (int(n) for n in flood.stdout.readline().split())
    finally:
        flood.kill()
        flood.wait(timeout=10)
    assert sent > 1000 and failed == 0, (sent, failed)
