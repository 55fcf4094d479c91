"""The holes an outside security review found, each probed on the wire in namespaces.

DHCP and neighbour discovery only on the link, spoofed packets of tunnel flows dropped, a
LAN host's probe of the tunnel address unanswered. Every probe runs twice: with the rules
vpn-firewall loads, where nothing may get through, and with the same rules but only the
fix taken out (the kernel's ruleset read back, edited, restored), where it must get through:
the negative control, which shows that the probe can see the hole it is looking for.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import BACKENDS, needs_root, terminate

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "e2e"))
import testbed as T  # noqa: E402

ROGUE = os.path.join(HERE, "rogue_dhcp.py")
ROUTER_V4, CLIENT_V4 = "192.168.77.254", "192.168.77.1"
ROUTER_V6, CLIENT_V6 = "2001:db8:77::254", "2001:db8:77::1"
INTERNET_V4, INTERNET_V6, OFFLINK_V6 = "198.18.0.10", "2001:db8:ffff::10", "2001:db8:ffff::66"
LAN_CONFIG = f"""\
@def $VPN_SERVERS = ({INTERNET_V4}:1194/udp [{INTERNET_V6}]:1194/udp);
@def $VPN_INTERFACES = (tun+);
"""
FIXED = pytest.mark.parametrize("fixed", [True, False], ids=["vpn-firewall", "without-the-fix"])

pytestmark = [needs_root]


# -- the negative controls: the loaded rules with one fix taken out ----------------------
def _dhcp_anywhere(text):
    out = []
    for line in text.splitlines():
        if re.search(r"--sport (68 --dport 67|67 --dport 68|546 --dport 547|547 --dport 546) ", line):
            line = re.sub(r" -[sd] \S+", "", line).replace(" -m addrtype --dst-type BROADCAST", "")
            if line in out:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def _ndp_anywhere(text):
    out = []
    for line in text.splitlines():
        if line.startswith("-A VPNFW-OUTPUT") and re.search(r"--icmpv6-type 13[356] -m hl", line):
            line = re.sub(r" -d \S+", "", line)
            if line in out:
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def _tunnel_flows_anywhere(text):
    return "".join(line + "\n" for line in text.splitlines() if "-j VPNFW-TUNNEL-FLOWS" not in line)


def _lan_to_any_address(text):
    return re.sub(r" -m addrtype --dst-type LOCAL(,BROADCAST,MULTICAST)? --limit-iface-in", "", text)


def take_out(run, fix):
    """Edit the rules in force of a namespace (run(argv) runs there) by `fix`, a text edit."""
    changed = []
    for family in ("iptables", "ip6tables"):
        saved = run([f"{family}-save"]).stdout
        edited = fix(saved)
        if edited != saved:
            run([f"{family}-restore"], stdin=edited)
            changed.append(family)
    assert changed, f"{fix.__name__} found nothing to take out"


# -- a LAN with a router, no VPN: DHCP and neighbour discovery ---------------------------
class Lan:
    """client (eth0) ---- router (veth-c: 192.168.77.254, 2001:db8:77::254; lo: "the internet")

    A capture on veth-c sees every frame the client sends."""

    def __init__(self, workdir, backend):
        self.workdir = str(workdir)
        tag = uuid.uuid4().hex[:6]
        self.router, self.client = f"vpnfw-rt-{tag}", f"vpnfw-dh-{tag}"
        self.env = dict(os.environ, PATH=T.backend_bin(self.workdir, backend) + ":" + os.environ["PATH"],
                        VPN_FIREWALL_LOCK=os.path.join(self.workdir, "lock"),
                        VPN_FIREWALL_RUN_DIR=os.path.join(self.workdir, "run"),
                        VPN_FIREWALL_STATE_DIR=os.path.join(self.workdir, "state"))
        self.confdir = os.path.join(self.workdir, "conf")
        self.pcap = os.path.join(self.workdir, "client.pcap")
        self.procs = {}

    def run(self, ns, argv, check=True, stdin=None, timeout=30):
        return T.sh(["ip", "netns", "exec", ns, *argv], check=check, env=self.env, input=stdin, timeout=timeout)

    def spawn(self, name, ns, argv, **kw):
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=self.env, **kw)
        return self.procs[name]

    def up(self, config=LAN_CONFIG, fix=None, static=True):
        for ns in (self.router, self.client):
            T.sh(["ip", "netns", "add", ns])
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        T.sh(["ip", "link", "add", "eth0", "netns", self.client, "type", "veth", "peer", "name", "veth-c",
              "netns", self.router])
        r = lambda *a: self.run(self.router, list(a))  # noqa: E731
        r("sysctl", "-qw", "net.ipv4.ip_forward=1")
        r("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        r("ip", "addr", "add", f"{ROUTER_V4}/24", "dev", "veth-c")
        r("ip", "addr", "add", f"{ROUTER_V6}/64", "dev", "veth-c", "nodad")
        for addr in (f"{INTERNET_V4}/32", f"{INTERNET_V6}/128", f"{OFFLINK_V6}/128"):
            r("ip", "addr", "add", addr, "dev", "lo")
        r("ip", "link", "set", "veth-c", "up")
        self.spawn("tcpdump", self.router, ["tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "300",
                                            "-w", self.pcap, "-i", "veth-c", "-Q", "in"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 5
        while not (os.path.exists(self.pcap) and os.path.getsize(self.pcap) >= 24):
            assert time.time() < deadline, "tcpdump did not start"
            time.sleep(0.02)
        os.makedirs(self.confdir)
        with open(os.path.join(self.confdir, "30_user.conf"), "w") as f:
            f.write(config)
        out = self.run(self.client, [sys.executable, T.LOADER, "--config-dir", self.confdir, "start"], check=False)
        assert out.returncode == 0, out.stderr
        if fix:
            take_out(lambda argv, stdin=None: self.run(self.client, argv, stdin=stdin), fix)
        c = lambda *a: self.run(self.client, list(a))  # noqa: E731
        c("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
        c("ip", "link", "set", "eth0", "up")
        if static:
            c("ip", "addr", "add", f"{CLIENT_V4}/24", "dev", "eth0")
            c("ip", "addr", "add", f"{CLIENT_V6}/64", "dev", "eth0", "nodad")
            c("ip", "route", "add", "default", "via", ROUTER_V4)
            c("ip", "-6", "route", "add", "default", "via", ROUTER_V6)
        return self

    def mac(self, ns, iface):
        return self.run(ns, ["cat", f"/sys/class/net/{iface}/address"]).stdout.strip()

    def frames(self):
        time.sleep(0.3)  # let the capture flush
        return T.read_pcap(self.pcap)

    def down(self):
        terminate(*self.procs.values())
        for ns in (self.client, self.router):
            T.sh(["ip", "netns", "delete", ns], check=False)


@pytest.fixture
def lan(tmp_path, request):
    beds = []

    def make(backend="nft", **kw):
        beds.append(Lan(tmp_path / f"lan{len(beds)}", backend))
        os.makedirs(beds[-1].workdir, exist_ok=True)
        return beds[-1].up(**kw)
    yield make
    for bed in beds:
        bed.down()


UDHCPC_SCRIPT = """#!/bin/sh
echo "$1 $ip $serverid" >> {events}
case "$1" in bound|renew)
  ip addr replace $ip/$mask dev $interface
  [ -n "$router" ] && ip route replace default via $router ;;
esac
"""


class Udhcpc:
    """busybox udhcpc in the foreground, its script's events in a file; SIGUSR1 renews at once."""

    def __init__(self, bed):
        self.bed = bed
        self.events = os.path.join(bed.workdir, "dhcp-events")
        script = os.path.join(bed.workdir, "udhcpc.sh")
        with open(script, "w") as f:
            f.write(UDHCPC_SCRIPT.format(events=self.events))
        os.chmod(script, 0o755)
        self.log = open(os.path.join(bed.workdir, "udhcpc.log"), "w")
        self.proc = bed.spawn("udhcpc", bed.client, ["busybox", "udhcpc", "-i", "eth0", "-f", "-t", "10", "-T", "1",
                                                    "-s", script], stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, event, count=1, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.seen(event)) >= count:
                return self.seen(event)
            time.sleep(0.1)
        return self.seen(event)

    def seen(self, event):
        if not os.path.exists(self.events):
            return []
        with open(self.events) as f:
            return [line.split() for line in f if line.startswith(event + " ")]

    def renew(self):
        self.proc.send_signal(signal.SIGUSR1)

    def output(self):
        with open(self.log.name) as f:
            return f.read()


# -- 1. DHCP ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_dhcp_lease_and_renewal_work_with_a_real_client_and_server(lan, backend):
    bed = lan(backend, config=LAN_CONFIG, static=False)
    bed.spawn("dnsmasq", bed.router, ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                                      "--interface=veth-c", "--bind-interfaces", "-u", "root",
                                      "--dhcp-range=192.168.77.100,192.168.77.150,2m",
                                      f"--dhcp-leasefile={bed.workdir}/leases"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Udhcpc(bed)
    bound = client.wait("bound")
    assert bound and bound[0][2] == ROUTER_V4, client.output()
    client.renew()  # a real renewal: unicast to the server, its answer unicast back
    renewed = client.wait("renew")
    assert renewed and renewed[0][1] == bound[0][1], client.output()
    assert f"sending renew to server {ROUTER_V4}" in client.output()
    sent = [f for f in bed.frames() if f.version == 4 and not f.arp]
    assert any(f.dst == ROUTER_V4 and f.sport == 68 and f.dport == 67 for f in sent), "the renewal went unicast"
    assert all(f.sport == 68 and f.dport == 67 for f in sent), sent


@pytest.mark.parametrize("backend", BACKENDS)
@FIXED
def test_a_rogue_dhcp_server_naming_an_internet_host_gets_no_renewal_out(lan, backend, fixed):
    bed = lan(backend, config=LAN_CONFIG, static=False, fix=None if fixed else _dhcp_anywhere)
    rogue = bed.spawn("rogue", bed.router, [sys.executable, ROGUE, "veth-c", INTERNET_V4, "192.168.77.50", ROUTER_V4],
                      stdout=subprocess.PIPE, text=True)
    assert rogue.stdout.readline().strip() == "ready"
    client = Udhcpc(bed)
    bound = client.wait("bound")
    assert bound and bound[0][1:] == ["192.168.77.50", INTERNET_V4], client.output()
    client.renew()
    deadline = time.time() + 5
    while f"sending renew to server {INTERNET_V4}" not in client.output() and time.time() < deadline:
        time.sleep(0.1)
    assert f"sending renew to server {INTERNET_V4}" in client.output()
    time.sleep(0.5)
    to_internet = [f for f in bed.frames() if f.dst == INTERNET_V4]
    if fixed:
        assert to_internet == [], "the renewal left for the internet host"
    else:
        assert to_internet and to_internet[0].dport == 67, "negative control: the renewal leaves"


@FIXED
def test_the_dhcp_ports_are_no_channel_to_an_internet_host(lan, fixed):
    bed = lan(config=LAN_CONFIG, fix=None if fixed else _dhcp_anywhere)
    probe = [sys.executable, "-c", """if 1:
        import socket, sys
        for family, bind, dst in ((socket.AF_INET, ("0.0.0.0", 68), (sys.argv[1], 67)),
                                  (socket.AF_INET6, ("::", 546), (sys.argv[2], 547))):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind(bind)
            try:
                s.sendto(b"out", dst)
                print("sent")
            except PermissionError:
                print("EPERM")
        """, INTERNET_V4, INTERNET_V6]
    out = bed.run(bed.client, probe).stdout.split()
    # and in: "replies" from an internet host to the DHCP client's port
    listener = bed.spawn("listener", bed.client, [sys.executable, "-c", """if 1:
        import socket, select
        socks = []
        for family, addr in ((socket.AF_INET, ("0.0.0.0", 68)), (socket.AF_INET6, ("::", 546))):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind(addr)
            socks.append(s)
        print("ready", flush=True)
        got = set()
        while len(got) < 2:
            ready = select.select(socks, [], [], 2)[0]
            if not ready:
                break
            for s in ready:
                got.add(s.recv(64).decode())
        print(" ".join(sorted(got)) or "nothing", flush=True)
        """], stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "ready"
    for src, sport, dst, dport, word in ((INTERNET_V4, 67, CLIENT_V4, 68, "in4"),
                                         (INTERNET_V6, 547, CLIENT_V6, 546, "in6")):
        bed.run(bed.router, [sys.executable, "-c", f"""if 1:
            import socket
            s = socket.socket(socket.AF_INET6 if ":" in {src!r} else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(({src!r}, {sport}))
            s.sendto(b"{word}", ({dst!r}, {dport}))
            """])
    heard = listener.stdout.readline().split()
    left = [f for f in bed.frames() if f.dst in (INTERNET_V4, INTERNET_V6)]
    if fixed:
        assert out == ["EPERM", "EPERM"] and left == [] and heard == ["nothing"], (out, left, heard)
    else:
        assert out == ["sent", "sent"] and len(left) == 2 and heard == ["in4", "in6"], (out, left, heard)


def test_dhcpv6_reaches_its_link_scope_group(lan):
    bed = lan(config=LAN_CONFIG)
    bed.run(bed.client, [sys.executable, "-c", """if 1:
        import socket
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::", 546))
        s.sendto(b"solicit", ("ff02::1:2", 547, 0, socket.if_nametoindex("eth0")))
        """])
    assert any(f.dst == "ff02::1:2" and f.dport == 547 for f in bed.frames())


# -- 2. neighbour discovery ------------------------------------------------------------------
@FIXED
def test_a_solicitation_from_an_off_link_source_gets_no_answer_sent_off_link(lan, fixed):
    bed = lan(config=LAN_CONFIG, fix=None if fixed else _ndp_anywhere)
    before = len(bed.frames())
    bed.run(bed.router, [sys.executable, T.PROBE, "spoof-ns", "veth-c", OFFLINK_V6, CLIENT_V6])
    time.sleep(0.5)
    answers = [f for f in bed.frames()[before:] if f.dst == OFFLINK_V6]
    if fixed:
        assert answers == []
        # and neighbour discovery on the link still works: the VPN server is reached past the router
        out = bed.run(bed.client, [sys.executable, T.PROBE, "udpfrom", "40000", INTERNET_V4, "1194"]).stdout
        assert out.strip() == "sent"
        six = bed.run(bed.client, [sys.executable, "-c", f"""if 1:
            import socket
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.sendto(b"vpn", ({INTERNET_V6!r}, 1194))
            """], check=False)
        assert six.returncode == 0, six.stderr
        time.sleep(0.5)
        assert any(f.dst == INTERNET_V6 and f.dport == 1194 for f in bed.frames()), "IPv6 to the VPN server left"
    else:
        assert answers and answers[0].proto == 58 and answers[0].sport == 136, "negative control: NA off-link"


# -- 3. spoofed packets of tunnel flows, a LAN host's probe of the tunnel address -------------
def _bed(pki, backend, config=T.BASE_CONFIG):
    bed = T.Testbed(pki[0], pki[1], backend=backend, config=config)
    bed.up()
    # Debian's default: loose reverse-path filtering, which lets these packets in
    for key in ("all", "eth0", "default"):
        bed.in_ns(bed.client, ["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=2"])
    return bed


def _mac(bed, ns, iface):
    return bed.in_ns(ns, ["cat", f"/sys/class/net/{iface}/address"]).stdout.strip()


@pytest.mark.parametrize("backend", BACKENDS)
@FIXED
def test_spoofed_packets_of_a_tunnel_flow_from_the_lan_are_dropped(pki, backend, fixed):
    bed = _bed(pki, backend)
    try:
        if not fixed:
            take_out(lambda argv, stdin=None: bed.in_ns(bed.client, argv, stdin=stdin), _tunnel_flows_anywhere)
        bed.spawn("echo", bed.inet, [sys.executable, T.PROBE, "serve", "7777", T.WEB_V4, T.WEB_V6],
                  stdout=subprocess.PIPE, text=True)
        assert bed.procs["echo"].stdout.readline().strip() == "ready"
        mac = _mac(bed, bed.client, "eth0")
        heard = {}
        for family, server in (("v4", T.WEB_V4), ("v6", T.WEB_V6)):
            flow = bed.spawn(f"flow-{family}", bed.client, [sys.executable, T.PROBE, "udpwait", server, "7777", "2"],
                             stdout=subprocess.PIPE, text=True)
            _, local, port = flow.stdout.readline().split()
            assert local.startswith("10.8.0.") or local.startswith("2001:db8:8:"), "the flow runs through the tunnel"
            time.sleep(0.3)
            # the attacker on the LAN: "the server's" packet, written onto the client's link
            bed.in_ns(bed.inet, [sys.executable, T.PROBE, "inject", "veth-c", mac, server, "7777", local, port,
                                 "injected"])
            heard[family] = [line.strip() for line in flow.stdout]
        for family, lines in heard.items():
            assert "got:hello" in lines, f"{family}: the genuine reply came back through the tunnel: {lines}"
            if fixed:
                assert "got:injected" not in lines, f"{family}: a spoofed packet got into a tunnel flow"
            else:
                assert "got:injected" in lines, f"{family}: negative control: the spoofed packet gets in"
        if fixed:  # status counts them
            facts = json.loads(bed.loader("status", "--json").stdout)
            assert all(facts["families"][f]["blocked"]["TUNNEL-FLOWS"] >= 1 for f in ("ip", "ip6")), facts
    finally:
        bed.down()


LAN_ALLOWED = T.BASE_CONFIG + "@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (198.19.0.0/24 2001:db8:100::/64);\n"


@FIXED
def test_a_lan_host_probing_the_tunnel_address_gets_no_answer(pki, fixed):
    """With the LAN allowed, a LAN host may talk to this machine, but only at the address it
    has on the LAN: its probe of the tunnel address (the first step of CVE-2019-14899) gets
    no ICMP error back, while the same probe of the LAN address does."""
    bed = _bed(pki, "nft", config=LAN_ALLOWED)
    try:
        if not fixed:
            take_out(lambda argv, stdin=None: bed.in_ns(bed.client, argv, stdin=stdin), _lan_to_any_address)
        mac = _mac(bed, bed.client, "eth0")
        tunnel = {}
        for line in bed.in_ns(bed.client, ["ip", "-o", "addr", "show", "dev", "tun0"]).stdout.splitlines():
            address = line.split()[3].split("/")[0]
            if not address.startswith("fe80"):
                tunnel["v6" if ":" in address else "v4"] = address
        before = bed.frames_so_far()
        targets = [(T.ROUTER_V4, tunnel["v4"]), (T.ROUTER_V6, tunnel["v6"]),
                   (T.ROUTER_V4, T.CLIENT_V4), (T.ROUTER_V6, T.CLIENT_V6)]
        for src, dst in targets:
            bed.in_ns(bed.inet, [sys.executable, T.PROBE, "inject", "veth-c", mac, src, "5555", dst, "9", "probe"])
        deadline = time.time() + 3  # an answer may wait for neighbour discovery
        while True:
            time.sleep(0.3)
            answers = [f for f in T.read_pcap(bed.pcap)[before:] if f.proto in (1, 58) and f.sport in (3, 1)
                       and f.dst in (T.ROUTER_V4, T.ROUTER_V6)]
            from_tunnel = [f for f in answers if f.src in tunnel.values()]
            from_lan = [f for f in answers if f.src in (T.CLIENT_V4, T.CLIENT_V6)]
            if len(answers) == (2 if fixed else 4) or time.time() > deadline:
                break
        assert len(from_lan) == 2, f"the LAN host gets its answers at the LAN address: {answers}"
        if fixed:
            assert from_tunnel == [], "the tunnel address answered a LAN host"
        else:
            assert len(from_tunnel) == 2, f"negative control: the tunnel address answers: {answers}"
    finally:
        bed.down()


# -- 4. paths around the firewall: tunnel look-alikes, macvlan, bridges without br_netfilter ---
def _leak_test(bed):
    return bed.in_ns(bed.client, [sys.executable, T.LOADER, "--config-dir", bed.confdir, "leak-test"], check=False)


LOOK_ALIKES = {
    "macvlan on eth0": ["ip", "link", "add", "link", "eth0", "name", "tun5", "type", "macvlan", "mode", "bridge"],
    "veth": ["ip", "link", "add", "tun5", "type", "veth", "peer", "name", "other5"],
    "bridge": ["ip", "link", "add", "tun5", "type", "bridge"],
    "renamed eth0": ["ip", "link", "set", "eth0", "name", "tun5"],
    "a real tun device": ["ip", "tuntap", "add", "dev", "tun5", "mode", "tun"],
}


@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_leak_test_and_status_name_a_tunnel_look_alike(pki, kind):
    bed = T.Testbed(pki[0], pki[1])
    try:
        bed.up(vpn=False)
        c = lambda *a: bed.in_ns(bed.client, list(a))  # noqa: E731
        if kind == "renamed eth0":
            c("ip", "link", "set", "eth0", "down")
        c(*LOOK_ALIKES[kind])
        c("ip", "link", "set", "tun5", "up")
        out = _leak_test(bed)
        status = bed.loader("status").stdout
        if kind == "a real tun device":  # the negative control: a tunnel is no look-alike
            assert out.returncode == 0, out.stdout
            assert "around the firewall" not in out.stdout + status
            return
        assert out.returncode == 1, out.stdout
        assert "LEAK: around the firewall: tun5: named like a tunnel ($VPN_INTERFACES tun+) but a" in out.stdout
        assert "1 interface(s) only named like the tunnel: this machine is NOT protected" in out.stdout
        assert "LEAK: around the firewall: tun5: named like a tunnel" in status
        if kind == "macvlan on eth0":
            # what the look-alike sends passes the kill switch and goes out on the LAN
            c("ip", "addr", "add", "198.19.0.77/24", "dev", "tun5")
            assert "on eth0, not a tunnel" in out.stdout
            before = bed.frames_so_far()
            bed.probe("udp", T.ROUTER_V4, "9", "tun5")
            assert [f for f in T.read_pcap(bed.pcap)[before:] if f.src == "198.19.0.77" and not f.arp]
    finally:
        bed.down()


def test_leak_test_warns_of_macvlan_devices_and_bridges_that_iptables_cannot_see(pki):
    bed = T.Testbed(pki[0], pki[1])
    try:
        bed.up(vpn=False)
        c = lambda *a: bed.in_ns(bed.client, list(a), check=False)  # noqa: E731
        c("ip", "link", "add", "link", "eth0", "name", "mv0", "type", "macvlan")
        c("ip", "link", "add", "br0", "type", "bridge")
        c("ip", "link", "add", "port0", "type", "veth", "peer", "name", "port1")
        c("ip", "link", "set", "port0", "master", "br0")
        switch = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        have_br_netfilter = c("test", "-e", switch).returncode == 0
        for key in ("iptables", "ip6tables"):
            c("sysctl", "-qw", f"net.bridge.bridge-nf-call-{key}=0")
        out = _leak_test(bed)
        assert out.returncode == 0, "warnings, not a failure: " + out.stdout
        assert "warning: around the firewall: mv0: a macvlan device on eth0" in out.stdout
        assert "warning: around the firewall: br0: a bridge with ports port0, and br_netfilter is off" in out.stdout
        if have_br_netfilter:  # the negative control: bridged frames that iptables sees are no path around
            for key in ("iptables", "ip6tables"):
                c("sysctl", "-qw", f"net.bridge.bridge-nf-call-{key}=1")
            out = _leak_test(bed)
            assert "br0: a bridge" not in out.stdout and "mv0: a macvlan" in out.stdout
    finally:
        bed.down()


# -- 5. the techniques the review found blocked stay blocked ---------------------------------
TECHNIQUES = """if 1:
    import socket, sys
    web4, web6 = sys.argv[1], sys.argv[2]
    def attempt(name, family, dst, size=8, setup=lambda s: None):
        try:
            s = socket.socket(family, socket.SOCK_DGRAM)
            setup(s)
            s.sendto(b"x" * size, dst)
            print(name, "sent")
        except OSError as e:
            print(name, "refused" if e.errno == 1 else "error:%d" % e.errno)
    attempt("ipv4-mapped", socket.AF_INET6, ("::ffff:" + web4, 9))
    attempt("nat64", socket.AF_INET6, ("64:ff9b::c612:a", 9))
    no_df = lambda s: s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
    attempt("fragments-v4", socket.AF_INET, (web4, 9), 4000, no_df)
    attempt("fragments-v6", socket.AF_INET6, (web6, 9), 4000)
    fence_mark = lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x10000000)
    attempt("the fence's mark (root)", socket.AF_INET, (web4, 9), 8, fence_mark)
"""


@FIXED
def test_the_techniques_the_review_found_blocked_stay_blocked(pki, fixed):
    """Without vpn-firewall each of these leaves: the negative control."""
    bed = T.Testbed(pki[0], pki[1], firewall=fixed)
    try:
        bed.up(vpn=False)
        out = bed.in_ns(bed.client, [sys.executable, "-c", TECHNIQUES, T.WEB_V4, T.WEB_V6]).stdout
        results = dict(line.rsplit(" ", 1) for line in out.splitlines())
        unprivileged = bed.in_ns(bed.client, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                              sys.executable, "-c", """if 1:
            import socket
            for name, make in (("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 17)),
                               ("packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
                               ("SO_MARK", lambda: socket.socket().setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 1))):
                try:
                    make()
                    print(name, "allowed")
                except PermissionError:
                    print(name, "refused")
            """]).stdout
        time.sleep(0.3)
        left = [f for f in T.read_pcap(bed.pcap) if f.dst in (T.WEB_V4, T.WEB_V6, "64:ff9b::c612:a")]
        # without the capabilities, none of the ways around iptables is open to an unprivileged program
        assert unprivileged.split() == ["raw", "socket", "refused", "packet", "socket", "refused", "SO_MARK", "refused"]
        if fixed:
            assert set(results.values()) == {"refused"}, results
            assert left == [], left
        else:
            assert set(results.values()) == {"sent"}, results
            kinds = {("v6" if ":" in f.dst and not f.dst.startswith("64:") else "nat64" if f.dst.startswith("64:")
                      else "v4") for f in left}
            assert kinds == {"v4", "v6", "nat64"} and len(left) >= 7, left  # fragments: several frames each
    finally:
        bed.down()
