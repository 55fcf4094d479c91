"""NetworkManager's OpenVPN through the kill switch, in a booted Debian 12 (systemd-nspawn,
its own network namespace): the VPN imported with nmcli, its server read from the keyfile
NetworkManager wrote (the path unit), brought up, its openvpn killed, soft-restarted,
brought down and up, then brought up at boot as the wired connection's secondary. Every
frame the guest puts on its cable is counted on the other end; the control is the same
without the kill switch. Name resolution with NetworkManager writing resolv.conf itself
(Debian's default) and with systemd-resolved.

    guest (NetworkManager, vpn-firewall)        the other end (the test's namespace)
      eth0 198.18.0.1/24, 2001:db8:1::1/64 ----- eth0p 198.18.0.2 (router, LAN resolver)
      tun0 (nm-openvpn) ......................... openvpn 192.0.2.10:1194/udp, resolver
                                                  192.0.2.53, web 192.0.2.80, 2001:db8:80::80
"""

import os
import re
import shutil
import signal
import subprocess

import pytest

import testbed as T
from conftest import needs_root
from test_boot import DEB, boot

pytestmark = [
    needs_root,
    pytest.mark.skipif(not DEB, reason="set VPN_FIREWALL_DEB to a built .deb (make test does)"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-container"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="needs /dev/net/tun for the guest's openvpn"),
]
HERE = os.path.dirname(os.path.abspath(__file__))

# The user's whole config: NetworkManager's connections are where the servers come from, and
# openvpn under NetworkManager opens its socket as root, then (after a soft restart) as nm-openvpn.
CONFIG = ('@def $VPN_CLIENT_CONFIGS = ("/etc/NetworkManager/system-connections/*.nmconnection");\n'
          "@def $VPN_USER = (root nm-openvpn);\n")
WITH_DNS_SERVERS = CONFIG + "@def $DNS_SERVERS = (192.0.2.53);\n"

LAN_KEYFILE = """[connection]
id=lan
uuid=0b9a6c2e-5d1f-4c7e-9a55-3f1d2e8b7c40
type=ethernet
interface-name=eth0

[ipv4]
method=manual
address1=198.18.0.1/24,198.18.0.2
dns=198.18.0.2;

[ipv6]
method=manual
address1=2001:db8:1::1/64,2001:db8:1::2
"""
# NetworkManager manages the container's veth (no udev in the guest to say otherwise)
NM_CONF = "[device-eth0]\nmatch-device=interface-name:eth0\nmanaged=1\n"
CLIENT_OVPN = """client
dev tun
proto udp
remote 192.0.2.10 1194
remote-cert-tls server
ca /etc/openvpn/work/ca.crt
cert /etc/openvpn/work/client.crt
key /etc/openvpn/work/client.key
"""
# Debian's default: no systemd-resolved, NetworkManager writes /etc/resolv.conf itself
WITHOUT_RESOLVED = ("dpkg --purge systemd-resolved", "rm -f /etc/resolv.conf && : > /etc/resolv.conf")


def the_other_end(pki_dir, work):
    """The router, the LAN's resolver, the VPN server and the internet behind it, in the
    namespace on the other end of the guest's cable; returns what stops them (by PID)."""
    def setup(ns):
        def ip(*args):
            subprocess.run(["ip", "-n", ns, *args], check=True)
        ip("link", "set", "lo", "up")
        ip("link", "set", "eth0p", "up")
        ip("addr", "add", "198.18.0.2/24", "dev", "eth0p")
        ip("-6", "addr", "add", "2001:db8:1::2/64", "dev", "eth0p", "nodad")
        for addr in ("192.0.2.10/32", "192.0.2.53/32", "192.0.2.80/32"):
            ip("addr", "add", addr, "dev", "lo")
        ip("-6", "addr", "add", "2001:db8:80::80/128", "dev", "lo")
        with open(os.path.join(work, "server.conf"), "w") as f:
            f.write(T.openvpn_server_conf(pki_dir, "192.0.2.10", 1194, ["dhcp-option DNS 192.0.2.53"], verb=3))
        procs = []

        def spawn(*argv, log="/dev/null"):
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=open(log, "ab"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        dnsmasq = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                   "--bind-interfaces", "--user=root", "--pid-file="]
        spawn(*dnsmasq, "--listen-address=198.18.0.2", "--address=/web.example/198.18.0.66")
        spawn(*dnsmasq, "--listen-address=192.0.2.53", "--address=/web.example/192.0.2.80",
              "--address=/web.example/2001:db8:80::80")
        spawn("python3", T.PROBE, "serve", "80")
        spawn("openvpn", "--config", os.path.join(work, "server.conf"), log=os.path.join(work, "server.log"))

        def stop():
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        return stop
    return setup


def guest_files(pki_dir) -> dict:
    files = {"/etc/NetworkManager/system-connections/lan.nmconnection": (LAN_KEYFILE, 0o600),
             "/etc/NetworkManager/conf.d/test.conf": NM_CONF,
             "/root/work.ovpn": CLIENT_OVPN,
             "/root/guest-nm.sh": open(os.path.join(HERE, "boot", "guest-nm.sh")).read(),
             "/root/netprobe.py": open(T.PROBE).read()}
    for name in ("ca.crt", "client.crt", "client.key"):
        files[f"/etc/openvpn/work/{name}"] = (open(os.path.join(pki_dir, name)).read(), 0o600)
    return files


def outside_the_tunnel(pcap) -> list:
    """Every frame but ARP, the VPN's own UDP to its server, and IPv6's link chatter
    (neighbour discovery, MLD to ff02::)."""
    return [f for f in T.read_pcap(str(pcap)) if not f.arp
            and not (f.version == 4 and f.proto == 17 and f.dst == "192.0.2.10" and f.dport == 1194)
            and not (f.version == 6 and ((f.dst or "").startswith("ff02:") or (f.proto == 58 and f.sport in (133, 135, 136))))]


def socket_owner(ss_output) -> int:
    """The uid of openvpn's one socket to the server, from 'ss -e' (which leaves out uid 0)."""
    lines = [line for line in ss_output.read_text().splitlines() if "openvpn" in line]
    assert len(lines) == 1, lines
    found = re.search(r"\buid:(\d+)", lines[0])
    return int(found.group(1)) if found else 0


def notes(results) -> dict:
    return dict(line.split("=", 1) for line in (results / "nm").read_text().splitlines())


def run_guest(tmp_path, pki, base, scenario, config, chroot=(), again=False):
    """One boot of the machine (again: the same machine's next boot); (results, capture)."""
    (tmp_path / "upper").mkdir(exist_ok=True)
    pcap = tmp_path / f"{scenario}.pcap"
    results, console = boot(tmp_path / scenario, base, scenario, config, preinstall=not again,
                            files=None if again else guest_files(pki[1].dir), interfaces="auto lo\niface lo inet loopback\n",
                            peer=the_other_end(pki[1].dir, str(tmp_path)), nspawn=["--bind=/dev/net/tun"],
                            chroot=chroot, capture=pcap, upper=tmp_path / "upper")
    assert (results / "nm").exists(), console + (results / "boot").read_text()
    return results, pcap


@pytest.fixture
def machine(tmp_path):
    for d in ("nm", "nm-control", "nm-again"):
        (tmp_path / d).mkdir()
    return tmp_path


@pytest.mark.parametrize("resolver", ["networkmanager", "systemd-resolved"])
def test_networkmanager_openvpn_through_the_kill_switch(machine, pki, nm_base, resolver):
    plain = resolver == "networkmanager"
    results, pcap = run_guest(machine, pki, nm_base, "nm", CONFIG if plain else WITH_DNS_SERVERS,
                              chroot=WITHOUT_RESOLVED if plain else ())
    seen = notes(results)
    journal = (results / "vpn-firewall-journal").read_text()
    assert seen["nm_online"] == "0" and seen["imported"] == "0", (results / "import.log").read_text()
    assert "-d 192.0.2.10/32 -p udp -m udp --dport 1194" in (results / "imported.save").read_text(), \
        "the server NetworkManager saved reaches the kill switch by itself\n" + journal
    assert seen["up1"] == "0" and seen["fetch1"] == "ok ok", (results / "nmcli.log").read_text()
    assert seen["dns1"] == "192.0.2.80", "names resolve through the tunnel, by the VPN's resolver"
    if plain:
        assert "nameserver 192.0.2.53" in (results / "resolv-up").read_text()
    assert seen["after_kill"] != "activated", "NetworkManager saw its client die"
    assert "default via 198.18.0.2" in (results / "routes-after-kill").read_text(), \
        "the LAN's default route is back: only the kill switch stands between programs and the LAN"
    assert seen["up2"] == "0" and seen["fetch2"] == "ok ok", "up again through the kill switch, no restart of it"
    assert seen["fetch3"] == "ok ok", "openvpn's soft restart (its socket is nm-openvpn's then) goes on working"
    # who owns openvpn's socket, measured: root at first, nm-openvpn after the soft restart,
    # which is why $VPN_USER names both
    assert socket_owner(results / "sockets-up") == 0
    assert socket_owner(results / "sockets-soft-restart") == int(seen["nm_openvpn_uid"])
    assert seen["down"] == "0" and seen["up3"] == "0" and seen["fetch4"] == "ok ok"
    assert seen["dns4"] == "192.0.2.80"
    frames = outside_the_tunnel(pcap)
    print(f"NetworkManager ({resolver}): {len(frames)} frame(s) outside the tunnel")
    assert frames == [], frames[:10]
    if plain:  # the same machine booted again: the VPN comes up with the wired connection
        assert seen["secondary"] == "0"
        results, pcap = run_guest(machine, pki, nm_base, "nm-again", None, again=True)
        again = notes(results)
        assert again["at_boot"] == "0" and again["fetch_boot"] == "ok ok", (results / "nm-journal").read_text()
        assert again["dns_boot"] == "192.0.2.80"
        frames = outside_the_tunnel(pcap)
        print(f"NetworkManager at boot: {len(frames)} frame(s) outside the tunnel")
        assert frames == [], frames[:10]


def test_control_without_the_kill_switch_networkmanager_leaks(machine, pki, nm_base):
    results, pcap = run_guest(machine, pki, nm_base, "nm-control", CONFIG, chroot=WITHOUT_RESOLVED)
    seen = notes(results)
    assert seen["unloaded"] == "0" and seen["fetch1"] == "ok ok"
    frames = outside_the_tunnel(pcap)
    print(f"NetworkManager WITHOUT vpn-firewall: {len(frames)} frame(s) outside the tunnel")
    assert frames, "the same steps without the kill switch must leak, or the test could not fail"
    assert any(f.dst == "198.18.0.2" and f.dport == 53 for f in frames), "lookups went to the LAN's resolver"


def test_networkmanager_wireguard_needs_the_kernels_module():
    """NetworkManager's WireGuard has no userspace fallback: it creates a kernel wireguard link."""
    out = subprocess.run(["unshare", "-n", "ip", "link", "add", "wg0", "type", "wireguard"], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"this kernel has no WireGuard ({out.stderr.strip()!r}), which NetworkManager's WireGuard "
                    "needs: its keyfiles are read for the servers (test_clientconfigs.py), its traffic is not run")
    pytest.skip("this kernel has WireGuard, but no NetworkManager WireGuard guest is written yet")
