"""wg-quick's full tunnel through the kill switch on a host with strict reverse-path filtering.

    server (ns)                                   client (ns), rp_filter=1
      lo: 198.18.0.10 (web), 198.18.0.1 (VPN)       eth0: 198.19.0.1
      eth0s: 198.19.0.254 ------------------------- default route to 198.19.0.254
      wgs: 10.9.0.1, wireguard-go :51820            wg: 10.9.0.2, wg-quick (AllowedIPs 0.0.0.0/0)
                                                    vpn-firewall

The VPN server is off-link (behind the router), as on the internet: only its reply's
conntrack mark routes it back by eth0 in the reverse-path check.

wg-quick marks its own UDP packets (fwmark 51820 = 0xca6c) and, in mangle's postrouting,
saves that mark into the flow's conntrack mark only when the packet mark is exactly 0xca6c;
the replies get it back in prerouting, and that mark is what lets them pass the strict
reverse-path check. A bit of ours left on the packet breaks the exact match. The kernel
here has no WireGuard module: wg-quick falls back to wireguard-go (a tun device).
Only addresses inside these namespaces are used; every process is ours, killed by PID.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import BACKENDS, backend_path, needs_root, write_config
from testbed import read_pcap

HERE = os.path.dirname(os.path.abspath(__file__))
LOADER = os.path.join(HERE, "..", "usr", "lib", "vpn-firewall", "vpn-firewall")
PROBE = os.path.join(HERE, "netprobe.py")

pytestmark = [
    needs_root,
    pytest.mark.skipif(not (shutil.which("wg-quick") and shutil.which("wireguard-go")),
                       reason="needs wireguard-tools and wireguard-go"),
]


def run(ns, *argv, check=True, **kw):
    out = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{ns}: {' '.join(argv)}: {out.stdout}{out.stderr}")
    return out


def keypair():
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


def cable(client: str, server: str) -> None:
    """The two namespaces and the cable between them: the client behind the server, which is
    its router too, and the server's own addresses beyond it: the VPN's (198.18.0.1) and a
    web server's (198.18.0.10)."""
    for ns in (client, server):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        run(ns, "ip", "link", "set", "lo", "up")
    subprocess.run(["ip", "link", "add", "eth0", "netns", client, "type", "veth", "peer", "name", "eth0s",
                    "netns", server], check=True)
    run(client, "ip", "addr", "add", "198.19.0.1/24", "dev", "eth0")
    run(client, "ip", "link", "set", "eth0", "up")
    run(client, "ip", "route", "add", "default", "via", "198.19.0.254")
    run(server, "ip", "addr", "add", "198.19.0.254/24", "dev", "eth0s")
    for address in ("198.18.0.1/32", "198.18.0.10/32"):
        run(server, "ip", "addr", "add", address, "dev", "lo")
    run(server, "ip", "link", "set", "eth0s", "up")
    run(server, "sysctl", "-qw", "net.ipv4.ip_forward=1")


class WireGuardBed:
    def __init__(self, tmp_path, backend, extra=""):
        self.extra = extra  # more of 30_user.conf
        tag = uuid.uuid4().hex[:6]
        self.client, self.server = f"vpnfw-wgc-{tag}", f"vpnfw-wgs-{tag}"
        self.tmp, self.procs = tmp_path, []
        self.env = dict(os.environ, PATH=backend_path(tmp_path, backend))  # run and state dirs: own_state's
        # wg-quick and wireguard-go keep their control sockets in /var/run/wireguard: two names
        self.client_if, self.server_if = f"wg{tag[:4]}", f"wgs{tag[:4]}"

    def up(self):
        c, s = self.client, self.server
        cable(c, s)
        for key in ("all", "default", "eth0"):  # the hardened setting (CIS): strict
            run(c, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
        server_key, server_pub = keypair()
        client_key, client_pub = keypair()
        (self.tmp / "server.key").write_text(server_key + "\n")
        # it daemonizes: nothing of ours may stay attached to it
        subprocess.run(["ip", "netns", "exec", s, "wireguard-go", self.server_if], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30)
        deadline = time.time() + 5
        while not os.path.exists(f"/var/run/wireguard/{self.server_if}.sock") and time.time() < deadline:
            time.sleep(0.05)
        run(s, "wg", "set", self.server_if, "listen-port", "51820", "private-key", str(self.tmp / "server.key"),
            "peer", client_pub, "allowed-ips", "10.9.0.2/32")
        run(s, "ip", "addr", "add", "10.9.0.1/24", "dev", self.server_if)
        run(s, "ip", "link", "set", self.server_if, "up")
        # the web server on the far side of the tunnel (it answers with the source it sees)
        web = subprocess.Popen(["ip", "netns", "exec", s, sys.executable, PROBE, "serve", "80", "198.18.0.10"],
                               stdout=subprocess.PIPE, text=True)
        self.procs.append(web)
        assert web.stdout.readline().strip() == "ready"
        conf = self.tmp / f"{self.client_if}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {client_key}\nAddress = 10.9.0.2/32\n\n"
                        f"[Peer]\nPublicKey = {server_pub}\nEndpoint = 198.18.0.1:51820\n"
                        "AllowedIPs = 0.0.0.0/0\nPersistentKeepalive = 0\n")
        conf.chmod(0o600)
        self.conf = conf
        self.confdir = write_config(self.tmp / "vpnfw", {
            "30_user.conf": f"@def $VPN_CLIENT_CONFIGS = ('{conf}');\n@def $ALLOW_DHCP = no;\n{self.extra}"})

    def loader(self, *args):
        return subprocess.run(["ip", "netns", "exec", self.client, sys.executable, LOADER, "--config-dir",
                               self.confdir, *args], capture_output=True, text=True, env=self.env, timeout=60)

    def wg_quick(self, action):
        """wg-quick up or down; its wireguard-go daemon is given nothing of ours to hold on to."""
        out = subprocess.run(["ip", "netns", "exec", self.client, "wg-quick", action, str(self.conf)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr

    def fetch(self):
        """A TCP connection to the web server behind the tunnel: ok, refused, timeout or error:NAME."""
        return run(self.client, sys.executable, PROBE, "tcp", "198.18.0.10", "80", check=False).stdout.strip()

    def rp_filter_drops(self) -> int:
        out = run(self.client, "nstat", "-az", "TcpExtIPReversePathFilter").stdout
        return int(out.split("TcpExtIPReversePathFilter")[1].split()[0])

    def down(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in (self.client, self.server):  # the tun devices go with them, and wireguard-go exits
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        for name in (self.client_if, self.server_if):
            try:
                os.unlink(f"/var/run/wireguard/{name}.sock")
            except FileNotFoundError:
                pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_wg_quick_full_tunnel_works_both_ways_under_strict_rp_filter(tmp_path, backend):
    bed = WireGuardBed(tmp_path, backend)
    save = "iptables-save" if backend == "nft" else "iptables-legacy-save"
    try:
        bed.up()
        out = bed.loader("start")
        assert out.returncode == 0, out.stderr
        rules = run(bed.client, save).stdout
        assert "-A VPNFW-OUTPUT -d 198.18.0.1/32 -p udp -m udp --dport 51820 -j VPNFW-SERVER-FLOW" in rules, \
            "the server, read from the wg-quick file"
        bed.wg_quick("up")
        assert bed.fetch() == "ok", "through the tunnel, both ways"
        assert bed.rp_filter_drops() == 0

        # the control: the fence leaves its bit on the packets (as before), on a new flow
        bed.wg_quick("down")
        run(bed.client, save.replace("-save", ""), "-t", "security", "-R", "VPNFW-JUDGED", "1", "-j", "RETURN")
        bed.wg_quick("up")
        assert bed.fetch() != "ok", "the replies fail the strict reverse-path check"
        assert bed.rp_filter_drops() > 0

        # put right by a reload; then the tunnel killed: nothing gets out by eth0
        bed.wg_quick("down")
        assert bed.loader("reload").returncode == 0
        bed.wg_quick("up")
        assert bed.fetch() == "ok"
        run(bed.client, "ip", "link", "delete", bed.client_if)
        assert bed.fetch() in ("refused", "error:EPERM", "error:ECONNREFUSED", "timeout"), "blocked"
        counters = run(bed.client, save, "-c").stdout
        rejected = [line for line in counters.splitlines() if line.startswith("[") and "VPNFW-OUTPUT" in line
                    and ("REJECT" in line or "DROP" in line) and not line.startswith("[0:")]
        assert rejected, "the kill switch refused the connection"
    finally:
        bed.down()


@pytest.mark.parametrize("fwmark", [True, False], ids=["with-VPN_FWMARK", "control-without"])
def test_an_owner_and_the_tunnels_fwmark_let_only_the_tunnel_reach_its_server(tmp_path, fwmark):
    """$VPN_USER names an account the tunnel's socket does not belong to (as with the kernel's
    WireGuard, whose socket no process owns); wg-quick's mark (51820) lets the tunnel through,
    and without $VPN_FWMARK the tunnel cannot reach its server."""
    bed = WireGuardBed(tmp_path, "nft", extra="@def $VPN_USER = 65534;\n"
                       + ("@def $VPN_FWMARK = 51820;\n" if fwmark else ""))
    try:
        bed.up()
        out = bed.loader("start")
        assert out.returncode == 0, out.stderr
        assert ("set $VPN_FWMARK" in out.stderr) != fwmark, out.stderr
        bed.wg_quick("up")
        if fwmark:
            assert bed.fetch() == "ok", "the tunnel's marked packets reach its server"
        else:
            assert bed.fetch() != "ok", "without the mark the owner match blocks the tunnel"
    finally:
        bed.down()


# -- the leak matrix: frames the client sends on its cable, counted on the server's side ---------
def capture(bed):
    """tcpdump on the server's end of the cable: what the client sends there."""
    pcap = bed.tmp / "wire.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", bed.server, "tcpdump", "-Z", "root", "--immediate-mode", "-U",
                             "-n", "-s", "200", "-i", "eth0s", "-Q", "in", "-w", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bed.procs.append(dump)
    deadline = time.time() + 5
    while (not pcap.exists() or pcap.stat().st_size < 24) and time.time() < deadline:
        time.sleep(0.05)
    return pcap


def leaked(pcap) -> list:
    """Frames that are neither ARP, nor the tunnel's own UDP to its server, nor IPv6 link chatter."""
    return [f for f in read_pcap(str(pcap)) if not f.arp and not (f.version == 4 and f.proto == 17 and
            f.dst == "198.18.0.1" and f.dport == 51820) and not (f.version == 6 and (f.dst or "").startswith("ff02:"))]


def flood(bed, seconds):
    """UDP and TCP to the web server behind the tunnel, from the client, all the while."""
    return subprocess.Popen(["ip", "netns", "exec", bed.client, sys.executable, PROBE, "flood", "198.18.0.10", "9",
                             str(int(seconds * 500)), str(seconds)], stdout=subprocess.DEVNULL)


def frames_across(bed, capture, change, outside) -> list:
    """What reached the far side outside the tunnel while a 3 s flood ran across change()."""
    pcap = capture(bed)
    flooding = flood(bed, 3.0)
    time.sleep(0.7)
    change()
    flooding.wait(timeout=30)
    time.sleep(0.3)
    return outside(pcap)


def fetched_within(bed, seconds) -> bool:
    """Whether a fetch through the tunnel works within `seconds`."""
    deadline = time.time() + seconds
    while bed.fetch() != "ok" and time.time() < deadline:
        pass
    return bed.fetch() == "ok"


def wireguard_go_pid(bed) -> int:
    pids = subprocess.run(["ip", "netns", "pids", bed.client], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "wireguard-go":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError("wireguard-go is not running in the client's namespace")


CASES = {
    "killed (SIGKILL)": lambda bed: os.kill(wireguard_go_pid(bed), signal.SIGKILL),
    "orderly down": lambda bed: bed.wg_quick("down"),
    "down and up again": lambda bed: (bed.wg_quick("down"), time.sleep(0.5), bed.wg_quick("up")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("firewall", [True, False], ids=["vpn-firewall", "control-without"])
@pytest.mark.parametrize("case", list(CASES))
def test_wireguard_leak_matrix(tmp_path, backend, firewall, case):
    """wg-quick's full tunnel while a program floods: the tunnel killed, taken down in order,
    taken down and up again. With vpn-firewall nothing but the tunnel's own packets reach the
    cable; without it the flood leaves by eth0 once the tunnel is gone."""
    bed = WireGuardBed(tmp_path, backend)
    try:
        bed.up()
        if firewall:
            assert bed.loader("start").returncode == 0
        bed.wg_quick("up")
        assert bed.fetch() == "ok", "the tunnel works before"
        frames = frames_across(bed, capture, lambda: CASES[case](bed), leaked)
        print(f"{case}, {backend}, {'with' if firewall else 'WITHOUT'} vpn-firewall: {len(frames)} frame(s) leaked")
        if firewall:
            assert frames == [], [(f.src, f.dst, f.dport) for f in frames[:5]]
        else:
            assert frames, "the control: without the kill switch the flood leaves by eth0"
        if case == "down and up again":  # WireGuard retries a lost handshake after 5 s, with or without us
            assert fetched_within(bed, 15), "reconnected through the kill switch without restarting it"
    finally:
        bed.down()
