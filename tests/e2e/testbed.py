"""A real VPN in network namespaces: an "internet" and a "client" behind vpn-firewall.

    internet (ns)                                client (ns)
      lo: 198.18.0.10  2001:db8:ffff::10 (web)     eth0: 198.19.0.1  2001:db8:100::1
          198.18.0.53 (DNS)                        tun0: from OpenVPN (10.8.0.x, 2001:db8:8::x)
      veth-c: 198.19.0.254  2001:db8:100::254 ---- default routes to 198.19.0.254 / ::254
      OpenVPN server on 198.19.0.254:1194/udp      OpenVPN client, vpn-firewall

The web server answers with the source address it sees; the DNS server answers every
query with 198.18.0.10. A capture on veth-c (frames the client sends) runs from before
the client's link comes up; leaks() counts the frames that are neither ARP nor the VPN
flow (nor what a case allows). Every process is started here and killed by its PID.
Only addresses inside these namespaces are ever used.
"""

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOADER = os.path.join(ROOT, "usr", "lib", "vpn-firewall", "vpn-firewall")
SERVICES = os.path.join(HERE, "services.py")
PROBE = os.path.join(os.path.dirname(HERE), "netprobe.py")

CLIENT_V4, ROUTER_V4 = "198.19.0.1", "198.19.0.254"
CLIENT_V6, ROUTER_V6 = "2001:db8:100::1", "2001:db8:100::254"
WEB_V4, WEB_V6, DNS_V4 = "198.18.0.10", "2001:db8:ffff::10", "198.18.0.53"
LAN_GATEWAY_V4, LAN_CLIENT_V4 = "10.99.0.1", "10.99.0.2"
LAN_GATEWAY_V6, LAN_CLIENT_V6 = "fd00:99::1", "fd00:99::2"
VPN_PORT = 1194
TUNNEL_DNS = "10.8.0.1"

BASE_CONFIG = f"""\
@def $VPN_SERVERS = ({ROUTER_V4}:{VPN_PORT}/udp);
@def $VPN_INTERFACES = (tun+);
@def $DNS_SERVERS = ({TUNNEL_DNS});
@def $ALLOW_DHCP = no;
"""


def sh(argv, check=True, **kw):
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")
    return out


def backend_bin(workdir, backend):
    """A directory whose iptables* are the chosen backend's, to put first on PATH."""
    bindir = os.path.join(workdir, f"bin-{backend}")
    os.makedirs(bindir, exist_ok=True)
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            link = os.path.join(bindir, family + suffix)
            if not os.path.exists(link):
                os.symlink(shutil.which(f"{family}-{backend}{suffix}"), link)
    return bindir


def openvpn_server_conf(pki_dir, local, port, pushes=(), verb=1) -> str:
    """An OpenVPN server on local:port/udp: 10.8.0.0/24 and 2001:db8:8::/64, every client's
    default route through it, both families, and the pushes given."""
    pushed = "".join(f'push "{p}"\n' for p in pushes)
    return f"""dev tun
proto udp
local {local}
port {port}
topology subnet
server 10.8.0.0 255.255.255.0
server-ipv6 2001:db8:8::/64
push "redirect-gateway def1 ipv6"
{pushed}keepalive 1 10
ca {pki_dir}/ca.crt
cert {pki_dir}/server.crt
key {pki_dir}/server.key
dh none
disable-dco
verb {verb}
"""


class PKI:
    """A throwaway EC CA with a server and a client certificate, made by openssl."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "pki")
        os.makedirs(self.dir, exist_ok=True)
        d = self.dir
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        sh(["openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt",
            "-days", "2", "-subj", "/CN=vpn-firewall test CA"])
        for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
            ext = f"{d}/{name}.ext"
            with open(ext, "w") as f:
                f.write(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n")
            sh(["openssl", "req", "-new", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr",
                "-subj", f"/CN={name}"])
            sh(["openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
                "-CAcreateserial", "-out", f"{d}/{name}.crt", "-days", "2", "-extfile", ext])


class Testbed:
    def __init__(self, workdir, pki, backend="nft", firewall=True, config=BASE_CONFIG, dhcp=False,
                 kill_first_start=False, gateway=False):
        self.workdir = tempfile.mkdtemp(dir=workdir, prefix="bed-")
        self.pki, self.backend, self.firewall, self.config, self.dhcp = pki, backend, firewall, config, dhcp
        self.kill_first_start = kill_first_start
        self.gateway = gateway
        self.start_code = None
        self.closed_before_link = False
        tag = uuid.uuid4().hex[:6]
        self.inet, self.client = f"vpnfw-inet-{tag}", f"vpnfw-cli-{tag}"
        self.lan = f"vpnfw-lan-{tag}"  # gateway mode: a machine behind the client
        self.procs = {}
        self.env = dict(os.environ, PATH=backend_bin(workdir, backend) + ":" + os.environ["PATH"],
                        VPN_FIREWALL_LOCK=os.path.join(self.workdir, "lock"),
                        VPN_FIREWALL_RUN_DIR=os.path.join(self.workdir, "run"),
                        VPN_FIREWALL_STATE_DIR=os.path.join(self.workdir, "state"))
        self.env.pop("JOURNAL_STREAM", None)
        self.confdir = os.path.join(self.workdir, "conf")
        self.pcap = os.path.join(self.workdir, "client.pcap")

    # -- running things -------------------------------------------------------------
    def in_ns(self, ns, argv, check=True, timeout=30, stdin=None):
        return sh(["ip", "netns", "exec", ns, *argv], check=check, env=self.env, timeout=timeout, input=stdin)

    def spawn(self, name, ns, argv, **kw):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=self.env, **kw)
        self.procs[name] = proc
        return proc

    def stop(self, name, sig=signal.SIGTERM):
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def loader(self, *args, ns=None):
        return self.in_ns(ns or self.client, [sys.executable, LOADER, "--config-dir", self.confdir, *args],
                          check=False, timeout=60)

    def probe(self, *args, user=None, ns=None):
        argv = [sys.executable, PROBE, *[str(a) for a in args]]
        stdin = None
        if user:  # the script comes on stdin: the checkout may not be readable by that user
            with open(PROBE) as f:
                stdin = f.read()
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                    sys.executable, "-", *[str(a) for a in args]]
        return self.in_ns(ns or self.client, argv, check=False, stdin=stdin).stdout.strip()

    # -- building it ----------------------------------------------------------------
    def write_config(self, text):
        os.makedirs(self.confdir, exist_ok=True)
        os.chmod(self.confdir, 0o755)
        path = os.path.join(self.confdir, "30_user.conf")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)

    def up(self, vpn=True):
        """Namespaces, capture, firewall (before the link), link, services, VPN; a bed that
        cannot come up is taken down again (nothing of it is left behind)."""
        try:
            return self._up(vpn)
        except BaseException:
            self.down()
            raise

    def _up(self, vpn):
        for ns in (self.inet, self.client):
            sh(["ip", "netns", "add", ns])
            self.in_ns(ns, ["ip", "link", "set", "lo", "up"])
        self.in_ns(self.inet, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        sh(["ip", "link", "add", "eth0", "netns", self.client, "type", "veth", "peer", "name", "veth-c",
            "netns", self.inet])
        self.in_ns(self.inet, ["ip", "link", "set", "veth-c", "up"])
        self.spawn("tcpdump", self.inet, ["tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "200",
                                          "-w", self.pcap, "-i", "veth-c", "-Q", "in"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_capture()
        self.write_config(self.config)
        if self.firewall and self.kill_first_start:
            self._kill_first_start()
        elif self.firewall:
            out = self.loader("start")
            self.start_code = out.returncode
            if out.returncode != 0 and self.config == BASE_CONFIG:
                raise RuntimeError(f"vpn-firewall start: {out.stderr}")
        i = lambda *a: self.in_ns(self.inet, list(a))
        i("ip", "addr", "add", f"{ROUTER_V4}/24", "dev", "veth-c")
        i("ip", "addr", "add", f"{ROUTER_V6}/64", "dev", "veth-c", "nodad")
        for addr in (f"{WEB_V4}/32", f"{DNS_V4}/32"):
            i("ip", "addr", "add", addr, "dev", "lo")
        i("ip", "addr", "add", f"{WEB_V6}/128", "dev", "lo")
        c = lambda *a: self.in_ns(self.client, list(a))
        c("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
        if not self.dhcp:
            c("ip", "addr", "add", f"{CLIENT_V4}/24", "dev", "eth0")
            c("ip", "addr", "add", f"{CLIENT_V6}/64", "dev", "eth0", "nodad")
        c("ip", "link", "set", "eth0", "up")
        if not self.dhcp:
            c("ip", "route", "add", "default", "via", ROUTER_V4)
            c("ip", "-6", "route", "add", "default", "via", ROUTER_V6)
        if self.gateway:
            self._lan_client()
        if self.dhcp:
            self.spawn("dnsmasq", self.inet, ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                                              "--interface=veth-c", "--bind-interfaces", "-u", "root",
                                              "--dhcp-range=198.19.0.100,198.19.0.150,1h",
                                              f"--dhcp-leasefile={self.workdir}/leases"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.spawn("services", self.inet, [sys.executable, SERVICES], stdout=subprocess.PIPE, text=True)
        assert self.procs["services"].stdout.readline().strip() == "ready"
        if vpn:
            self.start_vpn_server()
            self.start_vpn_client()
        return self

    def _lan_client(self):
        """A machine on the client's internal interface lan0, routed by the client."""
        sh(["ip", "netns", "add", self.lan])
        sh(["ip", "link", "add", "lan0", "netns", self.client, "type", "veth", "peer", "name", "eth0",
            "netns", self.lan])
        c = lambda *a: self.in_ns(self.client, list(a))  # noqa: E731
        c("sysctl", "-qw", "net.ipv4.ip_forward=1")
        c("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        c("ip", "addr", "add", f"{LAN_GATEWAY_V4}/24", "dev", "lan0")
        c("ip", "addr", "add", f"{LAN_GATEWAY_V6}/64", "dev", "lan0", "nodad")
        c("ip", "link", "set", "lan0", "up")
        m = lambda *a: self.in_ns(self.lan, list(a))  # noqa: E731
        m("ip", "link", "set", "lo", "up")
        m("ip", "addr", "add", f"{LAN_CLIENT_V4}/24", "dev", "eth0")
        m("ip", "addr", "add", f"{LAN_CLIENT_V6}/64", "dev", "eth0", "nodad")
        m("ip", "link", "set", "eth0", "up")
        m("ip", "route", "add", "default", "via", LAN_GATEWAY_V4)
        m("ip", "-6", "route", "add", "default", "via", LAN_GATEWAY_V6)

    def _kill_first_start(self):
        """Kill the loader at once, then do what the unit's ExecStopPost does."""
        self.spawn("loader", self.client, [sys.executable, LOADER, "--config-dir", self.confdir, "start"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stop("loader", signal.SIGKILL)
        self.env["SERVICE_RESULT"] = "signal"
        self.in_ns(self.client, [sys.executable, LOADER, "ensure-closed"], check=False)
        del self.env["SERVICE_RESULT"]
        save = self.in_ns(self.client, ["iptables-save"]).stdout
        self.closed_before_link = "-A OUTPUT -j VPNFW-OUTPUT" in save and ":OUTPUT DROP" in save

    def _wait_capture(self):
        deadline = time.time() + 5
        while time.time() < deadline:
            if os.path.exists(self.pcap) and os.path.getsize(self.pcap) >= 24:
                return
            time.sleep(0.02)
        raise RuntimeError("tcpdump did not start")

    def start_vpn_server(self):
        conf = os.path.join(self.workdir, "server.conf")
        with open(conf, "w") as f:
            f.write(openvpn_server_conf(self.pki.dir, ROUTER_V4, VPN_PORT, ["route-ipv6 2000::/3"]))
        self.spawn("vpn-server", self.inet, ["openvpn", "--config", conf],
                   stdout=open(os.path.join(self.workdir, "server.log"), "w"), stderr=subprocess.STDOUT)

    def start_vpn_client(self, wait=True):
        d = self.pki.dir
        conf = os.path.join(self.workdir, "client.conf")
        with open(conf, "w") as f:
            f.write(f"""client
dev tun0
proto udp
remote {ROUTER_V4} {VPN_PORT}
remote-cert-tls server
ca {d}/ca.crt
cert {d}/client.crt
key {d}/client.key
disable-dco
connect-retry 1
verb 1
""")
        self.spawn("vpn-client", self.client, ["openvpn", "--config", conf],
                   stdout=open(os.path.join(self.workdir, "client.log"), "a"), stderr=subprocess.STDOUT)
        if wait:
            self.wait_tunnel()

    def wait_tunnel(self, timeout=15):
        """Until a fetch through the tunnel works, both families."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.fetch(WEB_V4).startswith("10.8.0.") and self.fetch(WEB_V6).startswith("2001:db8:8:"):
                return
            time.sleep(0.1)
        logs = "".join(open(os.path.join(self.workdir, n)).read() for n in ("server.log", "client.log")
                       if os.path.exists(os.path.join(self.workdir, n)))
        raise RuntimeError(f"the tunnel did not come up:\n{logs}")

    def fetch(self, addr, device=None):
        """What the web server saw as our address, or why the fetch failed."""
        return self.probe("http", addr, 80, *([device] if device else []))

    def down(self):
        for name in list(self.procs):
            if name != "tcpdump":
                self.stop(name, signal.SIGKILL)
        self.stop("tcpdump")
        for ns in (self.client, self.inet) + ((self.lan,) if self.gateway else ()):
            sh(["ip", "netns", "delete", ns], check=False)

    # -- the verdict ----------------------------------------------------------------
    def frames_so_far(self):
        time.sleep(0.2)  # let the capture flush
        return len(read_pcap(self.pcap))

    def leaks(self, allow=lambda frame: False, vpn_flow=None, since=0):
        """Frames the client sent (after the first `since`) that are neither ARP nor the VPN
        flow nor allowed."""
        vpn_flow = vpn_flow or Frame.is_vpn_flow
        time.sleep(0.2)  # let the capture flush
        return [f for f in read_pcap(self.pcap)[since:] if not (f.arp or vpn_flow(f) or allow(f))]


class Frame:
    """What the verdict needs of one Ethernet frame."""

    def __init__(self, data):
        self.time = None
        self.arp = self.proto = self.src = self.dst = self.sport = self.dport = None
        self.version = 0
        ethertype = struct.unpack("!H", data[12:14])[0]
        self.arp = ethertype == 0x0806
        ip = data[14:]
        if ethertype == 0x0800 and len(ip) >= 20:
            self.version, hl = 4, (ip[0] & 0x0F) * 4
            self.proto = ip[9]
            self.src, self.dst = _v4(ip[12:16]), _v4(ip[16:20])
            l4 = ip[hl:]
        elif ethertype == 0x86DD and len(ip) >= 40:
            self.version, self.proto = 6, ip[6]
            self.src, self.dst = _v6(ip[8:24]), _v6(ip[24:40])
            l4 = ip[40:]
            if self.proto == 0 and len(l4) >= 2:  # hop-by-hop options, as MLD carries
                self.proto, l4 = l4[0], l4[(l4[1] + 1) * 8:]
        else:
            return
        if self.proto in (6, 17) and len(l4) >= 4:
            self.sport, self.dport = struct.unpack("!HH", l4[:4])
        elif self.proto in (1, 58) and l4:
            self.sport = l4[0]  # the ICMP type, for the description

    def is_vpn_flow(self):
        return self.version == 4 and self.proto == 17 and self.dst == ROUTER_V4 and self.dport == VPN_PORT

    def __repr__(self):
        if self.arp:
            return "ARP"
        names = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}
        return f"{names.get(self.proto, self.proto)} {self.src}:{self.sport} > {self.dst}:{self.dport}"


def _v4(b):
    return ".".join(str(x) for x in b)


def _v6(b):
    import ipaddress
    return str(ipaddress.IPv6Address(bytes(b)))


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    frames, i = [], 24
    while i + 16 <= len(data):
        seconds, micros, caplen = struct.unpack(endian + "III", data[i:i + 12])
        frame = data[i + 16:i + 16 + caplen]
        if len(frame) >= 14:
            frames.append(Frame(frame))
            frames[-1].time = seconds + micros / 1e6  # when it was captured (wall clock)
        i += 16 + caplen
    return frames
