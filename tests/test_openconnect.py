"""OpenConnect through the kill switch: a real ocserv and openconnect (with Debian's
vpnc-script) in namespaces, TLS on tcp 443 and DTLS on udp 443.

    server (ns)                                   client (ns)
      lo: 198.18.0.10 (web), 198.18.0.1 (VPN)       eth0: 198.19.0.1, default via 198.19.0.254
      eth0s: 198.19.0.254 ------------------------- openconnect + vpnc-script: tun0, default via tun0
      ocserv :443 (tcp and udp), route = default    vpn-firewall: $VPN_CLIENT_CONFIGS unused,
                                                    $VPN_SERVERS = 198.18.0.1:443 tcp and udp

A program floods the web server while the client is killed, told to disconnect (SIGINT,
SIGTERM: vpnc-script puts the old default route back), told to reconnect (SIGUSR2), and with
DTLS refused (it falls back to TLS); the frames the client sends on its cable are counted
on the server's side. vpnc-script rewrites /etc/resolv.conf and keeps state in /run/vpnc:
the client runs in a mount namespace of its own with scratch copies bound over both.
Only addresses inside these namespaces are used; every process is ours, killed by PID.
"""

import base64
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import BACKENDS, backend_path, needs_root, write_config
from test_wireguard import PROBE, cable, fetched_within, frames_across, leaked, run

VPNC_SCRIPT = "/usr/share/vpnc-scripts/vpnc-script"
pytestmark = [
    needs_root,
    pytest.mark.skipif(not (shutil.which("ocserv") and shutil.which("openconnect") and os.path.exists(VPNC_SCRIPT)),
                       reason="needs ocserv, openconnect and vpnc-scripts"),
]
CONFIG = "@def $VPN_SERVERS = (198.18.0.1:443/tcp 198.18.0.1:443/udp);\n@def $ALLOW_DHCP = no;\n"


def ocserv_conf(d) -> str:
    return f"""auth = "plain[passwd={d}/passwd]"
tcp-port = 443
udp-port = 443
listen-host = 198.18.0.1
run-as-user = nobody
run-as-group = nogroup
socket-file = {d}/ocserv.sock
server-cert = {d}/cert.pem
server-key = {d}/key.pem
isolate-workers = false
max-clients = 8
max-same-clients = 8
keepalive = 30
dpd = 10
mobile-dpd = 10
try-mtu-discovery = false
device = vpns
ipv4-network = 10.10.0.0
ipv4-netmask = 255.255.255.0
route = default
predictable-ips = true
use-occtl = false
pid-file = {d}/ocserv.pid
cisco-client-compat = true
"""


class OpenConnectBed:
    def __init__(self, tmp_path, backend):
        tag = uuid.uuid4().hex[:6]
        self.client, self.server = f"vpnfw-occ-{tag}", f"vpnfw-ocs-{tag}"
        # ocserv's workers run as nobody: its files where nobody may read them (pytest's are root's only)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="vpnfw-ocserv-"))
        os.chmod(self.dir, 0o755)
        self.procs = {}
        self.env = dict(os.environ, PATH=backend_path(tmp_path, backend))
        self.confdir = write_config(tmp_path / "vpnfw", {"30_user.conf": CONFIG})

    def up(self):
        s, d = self.server, str(self.dir)
        cable(self.client, s)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2", "-subj", "/CN=198.18.0.1"],
                       check=True, capture_output=True)
        subprocess.run(["ocpasswd", "-c", f"{d}/passwd", "alice"], input="secret\nsecret\n", text=True, check=True,
                       capture_output=True)
        (self.dir / "ocserv.conf").write_text(ocserv_conf(d))
        for name in ("cert.pem", "key.pem", "passwd", "ocserv.conf"):
            os.chmod(self.dir / name, 0o644)
        der = subprocess.run(f"openssl x509 -in {d}/cert.pem -pubkey -noout | openssl pkey -pubin -outform der",
                             shell=True, capture_output=True, check=True).stdout
        self.pin = "pin-sha256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
        self.spawn("ocserv", s, ["ocserv", "-f", "-c", f"{d}/ocserv.conf"])
        web = self.spawn("web", s, [sys.executable, PROBE, "serve", "80", "198.18.0.10"], stdout=subprocess.PIPE,
                         text=True)
        assert web.stdout.readline().strip() == "ready"
        deadline = time.time() + 10
        while run(s, "ss", "-ltn", "sport = :443").stdout.count("198.18.0.1:443") == 0 and time.time() < deadline:
            time.sleep(0.1)
        (self.dir / "resolv.conf").write_text("nameserver 192.0.2.53\n")
        (self.dir / "vpnc").mkdir()

    def spawn(self, name, ns, argv, **kw):
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=self.env, start_new_session=True, **kw)
        self.procs[name] = proc
        return proc

    def connect(self):
        """openconnect, until the tunnel is up (tun0 with the default route)."""
        d = str(self.dir)
        inner = (f"mount --bind {d}/resolv.conf /etc/resolv.conf && mkdir -p /run/vpnc && "
                 f"mount --bind {d}/vpnc /run/vpnc && exec openconnect --protocol=anyconnect -u alice "
                 f"--passwd-on-stdin --servercert {self.pin} --script {VPNC_SCRIPT} --interface tun0 "
                 f"https://198.18.0.1/")
        client = self.spawn("openconnect", self.client, ["unshare", "-m", "sh", "-c", inner], stdin=subprocess.PIPE,
                            stdout=open(self.dir / "client.log", "ab"), stderr=subprocess.STDOUT, text=True)
        client.stdin.write("secret\n")
        client.stdin.close()
        deadline = time.time() + 15
        while "default dev tun0" not in run(self.client, "ip", "route").stdout and time.time() < deadline:
            time.sleep(0.1)
        assert "default dev tun0" in run(self.client, "ip", "route").stdout, (self.dir / "client.log").read_text()
        return client

    def openconnect_pid(self) -> int:
        """openconnect itself (exec'd by the shell the bed started, so the same process)."""
        return self.procs["openconnect"].pid

    def loader(self, *args):
        return subprocess.run(["ip", "netns", "exec", self.client, sys.executable, os.path.join(
            os.path.dirname(PROBE), "..", "usr", "lib", "vpn-firewall", "vpn-firewall"), "--config-dir", self.confdir,
            *args], capture_output=True, text=True, env=self.env, timeout=60)

    def fetch(self):
        return run(self.client, sys.executable, PROBE, "tcp", "198.18.0.10", "80", check=False).stdout.strip()

    def down(self):
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for ns in (self.client, self.server):
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def capture(bed):
    pcap = bed.dir / "wire.pcap"
    bed.spawn("tcpdump", bed.server, ["tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "200",
                                      "-i", "eth0s", "-Q", "in", "-w", str(pcap)])
    deadline = time.time() + 5
    while (not pcap.exists() or pcap.stat().st_size < 24) and time.time() < deadline:
        time.sleep(0.05)
    return pcap


def outside_the_tunnel(pcap) -> list:
    """leaked() counts the frames that are not WireGuard's; here the VPN's are TLS and DTLS to 443."""
    return [f for f in leaked(pcap) if not (f.version == 4 and f.dst == "198.18.0.1" and f.dport == 443)]


def block_dtls(bed):
    run(bed.server, "iptables", "-I", "INPUT", "-p", "udp", "--dport", "443", "-j", "REJECT")


CASES = {
    "killed (SIGKILL)": lambda bed: os.kill(bed.openconnect_pid(), signal.SIGKILL),
    "disconnect (SIGINT)": lambda bed: os.kill(bed.openconnect_pid(), signal.SIGINT),
    "disconnect (SIGTERM)": lambda bed: os.kill(bed.openconnect_pid(), signal.SIGTERM),
    "reconnect (SIGUSR2)": lambda bed: os.kill(bed.openconnect_pid(), signal.SIGUSR2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("firewall", [True, False], ids=["vpn-firewall", "control-without"])
@pytest.mark.parametrize("case", list(CASES) + ["DTLS refused: TLS only"])
def test_openconnect_leak_matrix(tmp_path, backend, firewall, case):
    bed = OpenConnectBed(tmp_path, backend)
    try:
        bed.up()
        if case.startswith("DTLS refused"):
            block_dtls(bed)
        if firewall:
            out = bed.loader("start")
            assert out.returncode == 0, out.stderr
        bed.connect()
        assert fetched_within(bed, 10), "through the tunnel"
        frames = frames_across(bed, capture, lambda: CASES[case](bed) if case in CASES else None,
                               outside_the_tunnel)
        print(f"{case}, {backend}, {'with' if firewall else 'WITHOUT'} vpn-firewall: {len(frames)} frame(s) leaked")
        if firewall:
            assert frames == [], [(f.src, f.dst, f.dport) for f in frames[:5]]
        elif case.startswith("disconnect"):
            assert frames, "the control: vpnc-script puts the old default route back, and the flood leaves by it"
        if case.startswith("reconnect") or case.startswith("DTLS"):
            assert fetched_within(bed, 15), "the tunnel works again (or still), through the kill switch"
    finally:
        bed.down()
