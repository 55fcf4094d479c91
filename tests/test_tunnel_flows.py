"""The tunnel-flow mark is set on every packet into the tunnel, not only on a connection's
first (policy._tunnel_out_chain: cheaper per packet on nf_tables). What that adds: a flow
that began on the cable and later turns into the tunnel is a tunnel flow from then on, and
a LAN host's packets into it are dropped like any spoofed reply of a tunnel flow.

In namespaces: this machine, a LAN host on its cable, and a tun0 (a veth whose far end is
down: what goes in is gone). The control loads the same rules with the mark asked only of a
connection's first packet (the rule as it was), and the LAN host's packet gets in."""

import subprocess
import sys

import pytest

from conftest import BACKENDS, backend_path, needs_root, run_loader, write_config

pytestmark = [needs_root]

CONFIG = "@def $VPN_INTERFACES = (tun+);\n@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (192.168.50.0/24);\n"
MARK_EVERY_PACKET = "-A VPNFW-TUNNEL-OUT -j CONNMARK --set-xmark 0x20000000/0x20000000"
MARK_FIRST_PACKET = "-A VPNFW-TUNNEL-OUT -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000000/0x20000000"

# This machine's side: one UDP socket, local port 40001, connected to the LAN host's port 7.
# "send WORD" sends it; "recv" prints what came within 1 s ("got:..." or "none").
CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40001))
s.connect(("192.168.50.2", 7))
s.settimeout(1)
print("ready", flush=True)
for line in sys.stdin:
    verb, _, word = line.strip().partition(" ")
    if verb == "send":
        s.send(word.encode())
        print("sent", flush=True)
    else:
        try:
            print("got:" + s.recv(100).decode(), flush=True)
        except OSError:
            print("none", flush=True)
"""
# The LAN host, on the cable: each line of stdin is sent from its port 7 to this machine's
# port 40001, as a reply of the flow would be (or an attacker on the link, who knows it).
LAN_HOST = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.168.50.2", 7))
print("ready", flush=True)
for line in sys.stdin:
    s.sendto(line.strip().encode(), ("192.168.50.1", 40001))
    print("sent", flush=True)
"""


class Talker:
    """A line-driven helper process in a namespace."""

    def __init__(self, ns, script):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", script],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def __call__(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def _beds(netns):
    me, lan = netns("me"), netns("lan")
    me.sh(f"ip link add lan0 type veth peer name lan1 netns {lan.name}")
    me.sh("ip link set lan0 up && ip addr add 192.168.50.1/24 dev lan0")
    lan.sh("ip link set lan1 up && ip addr add 192.168.50.2/24 dev lan1")
    me.sh("ip link add tun0 type veth peer name tunp && ip link set tun0 up && ip addr add 10.8.0.2/24 dev tun0")
    # Debian's default, loose reverse-path filtering: the kernel lets the LAN packet in after
    # the route to its source turned into the tunnel, and only the rules decide
    me.sh("sysctl -qw net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.lan0.rp_filter=2")
    return me, lan


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("marked", ["every packet", "control: first packet only"])
def test_a_flow_that_turns_into_the_tunnel_takes_no_lan_packets_after(tmp_path, netns, backend, marked):
    me, lan = _beds(netns)
    conf = write_config(tmp_path / "conf", {"30_user.conf": CONFIG})
    path = backend_path(tmp_path, backend)
    env = {"PATH": path, "VPN_FIREWALL_RUN_DIR": str(tmp_path / "run"),
           "VPN_FIREWALL_STATE_DIR": str(tmp_path / "state"), "VPN_FIREWALL_LOCK": str(tmp_path / "lock")}
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=me.name).returncode == 0
    rules = me.sh(f"PATH={path} iptables-save").stdout
    assert MARK_EVERY_PACKET in rules, "the rule this test is about"
    if marked != "every packet":
        subprocess.run(["ip", "netns", "exec", me.name, "env", f"PATH={path}", "iptables-restore"],
                       input=rules.replace(MARK_EVERY_PACKET, MARK_FIRST_PACKET), text=True, check=True)
    host, client = Talker(lan, LAN_HOST), Talker(me, CLIENT)
    try:
        assert client("send a") == "sent" and host("one") == "sent"
        assert client("recv") == "got:one", "on the cable, the LAN flow works both ways"
        me.sh("ip route add 192.168.50.2/32 dev tun0")  # the flow's next packet goes into the tunnel
        assert client("send b") == "sent"
        assert host("two") == "sent"
        got = client("recv")
    finally:
        client.stop()
        host.stop()
    if marked == "every packet":
        assert got == "none", f"a LAN packet got into a flow that runs through the tunnel: {got}"
        dropped = [line for line in me.sh(f"PATH={path} iptables-save -c").stdout.splitlines()
                   if line.endswith("-A VPNFW-TUNNEL-FLOWS -j DROP")]
        assert dropped and not dropped[0].startswith("[0:"), f"dropped as a spoofed reply: {dropped}"
    else:
        assert got == "got:two", f"control: with the first packet only marked, the LAN packet gets in: {got}"
