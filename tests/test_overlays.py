"""$OVERLAYS and the generic form: a real Nebula (Debian's) beside the kill switch, VPN down.

Four namespaces: ours (the kill switch and a Nebula node, its daemon in a cgroup standing for
its unit), a lighthouse and another node somewhere on the "internet" (TEST-NET addresses),
and a router between them. Our node reaches the other over the overlay, through its
lighthouse, while nothing else of ours leaves: a bystander's connection to the other node's
underlay address is refused, and every frame on our cable is the Nebula daemon's. Control:
without the daemon's unit in the config, the overlay never comes up. The presets are
checked by the rules they give, by their documented names and ranges.
"""

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import needs_root, run_loader, write_config

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root, pytest.mark.skipif(not shutil.which("nebula"), reason="needs nebula (make test-deps)")]

NODES = {  # name: (underlay address, its router's address, overlay address, listen port)
    "ours": ("198.19.0.1", "198.19.0.254", "192.168.100.2", 0),
    "lighthouse": ("203.0.113.1", "203.0.113.254", "192.168.100.1", 4242),
    "other": ("198.51.100.20", "198.51.100.254", "192.168.100.3", 4242),
}
NEBULA = """pki:
  ca: {d}/ca.crt
  cert: {d}/{name}.crt
  key: {d}/{name}.key
static_host_map:
  "192.168.100.1": ["203.0.113.1:4242"]
lighthouse:
  am_lighthouse: {lighthouse}
  hosts: [{hosts}]
listen:
  host: 0.0.0.0
  port: {port}
punchy:
  punch: true
tun:
  dev: nebula1
logging:
  level: info
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
"""
# answers with the address it saw, on the other node's overlay address and its underlay one
SEEN = r"""
import socket, sys, threading
def serve(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    while True:
        try:
            s.bind((addr, 8080))
            break
        except OSError:  # the overlay's address comes with nebula1
            import time; time.sleep(0.1)
    s.listen()
    while True:
        c, peer = s.accept()
        c.recv(1024)
        c.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + peer[0].encode())
        c.close()
for a in sys.argv[1:]:
    threading.Thread(target=serve, args=(a,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def sh(ns, command):
    subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", command], check=True, capture_output=True, text=True)


def in_ours(ns, argv, **kw):
    """In our namespace with the cgroup hierarchy in view (ip netns exec hides it)."""
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


@pytest.fixture
def mesh(tmp_path):
    """The namespaces, certificates and configs; yields (names, directory); all gone after."""
    tag = uuid.uuid4().hex[:6]
    names = {n: f"vpnfw-mesh-{n[:5]}-{tag}" for n in ("router", *NODES)}
    d = tmp_path / "nebula"
    d.mkdir()
    for ns in names.values():
        subprocess.run(["ip", "netns", "add", ns], check=True)
        sh(ns, "ip link set lo up")
    try:
        sh(names["router"], "sysctl -qw net.ipv4.ip_forward=1")
        for i, (node, (addr, gw, _, _)) in enumerate(NODES.items()):
            subprocess.run(["ip", "link", "add", "eth0", "netns", names[node], "type", "veth", "peer", "name",
                            f"r{i}", "netns", names["router"]], check=True)
            sh(names["router"], f"ip addr add {gw}/24 dev r{i} && ip link set r{i} up")
            sh(names[node], f"ip addr add {addr}/24 dev eth0 && ip link set eth0 up && "
                            f"ip route add default via {gw}")
        subprocess.run(["nebula-cert", "ca", "-name", "vpnfw-test", "-out-crt", d / "ca.crt", "-out-key", d / "ca.key"],
                       check=True, capture_output=True)
        for node, (_, _, overlay, port) in NODES.items():
            subprocess.run(["nebula-cert", "sign", "-name", node, "-ip", f"{overlay}/24", "-ca-crt", d / "ca.crt",
                            "-ca-key", d / "ca.key", "-out-crt", d / f"{node}.crt", "-out-key", d / f"{node}.key"],
                           check=True, capture_output=True)
            lighthouse = node == "lighthouse"
            (d / f"{node}.yml").write_text(NEBULA.format(d=d, name=node, lighthouse=str(lighthouse).lower(),
                                                          hosts="" if lighthouse else '"192.168.100.1"', port=port))
        yield names, d
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)  # only what this test started runs in its namespaces
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def fetch(ns, addr):
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, T.PROBE, "http", addr, "8080"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@pytest.mark.parametrize("with_unit", [True, False], ids=["overlay", "control-without-the-daemons-unit"])
def test_a_nebula_overlay_works_beside_the_kill_switch_and_nothing_else_leaves(mesh, tmp_path, with_unit):
    from vpnfw.portal_run import cgroup2_mount

    names, d = mesh
    unit = f"vpnfw-test-{uuid.uuid4().hex[:8]}.slice/nebula.service"
    cgroup_dir = os.path.join(cgroup2_mount(), unit)
    os.makedirs(cgroup_dir)
    procs = []
    try:
        config = ("@def $VPN_SERVERS = (198.18.0.99:1194/udp);\n@def $OVERLAY_INTERFACES = (nebula1);\n"
                  "@def $OVERLAY_NETS = (192.168.100.0/24);\n"
                  + (f"@def $OVERLAY_UNITS = ({unit});\n" if with_unit else ""))
        conf = write_config(tmp_path / "conf", {"30_user.conf": config})
        env = dict(os.environ, VPN_FIREWALL_RUN_DIR=str(tmp_path / "run"), VPN_FIREWALL_STATE_DIR=str(tmp_path / "st"))
        env.pop("JOURNAL_STREAM", None)
        out = subprocess.run(in_ours(names["ours"], [sys.executable, T.LOADER, "--config-dir", conf, "start"]),
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        capture = tmp_path / "ours.pcap"
        procs.append(subprocess.Popen(["ip", "netns", "exec", names["router"], "tcpdump", "-Z", "root", "-U", "-w",
                                       capture, "-i", "r0", "-Q", "in"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        seen = subprocess.Popen(["ip", "netns", "exec", names["other"], sys.executable, "-c", SEEN, "192.168.100.3",
                                 "198.51.100.20"], stdout=subprocess.PIPE, text=True)
        procs.append(seen)
        assert seen.stdout.readline().strip() == "ready"
        for node in ("lighthouse", "other"):
            procs.append(subprocess.Popen(["ip", "netns", "exec", names[node], "nebula", "-config", d / f"{node}.yml"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # ours: the daemon in the cgroup that stands for its unit, entered before it runs
        procs.append(subprocess.Popen(in_ours(names["ours"], ["sh", "-c", f'echo $$ > {cgroup_dir}/cgroup.procs && '
                                                               f'exec nebula -config {d}/ours.yml']),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # up in about 2 s here; the control waits 6 s for what never comes
        deadline, answer = time.time() + (15 if with_unit else 6), ""
        while time.time() < deadline and answer != "192.168.100.2":
            answer = fetch(names["ours"], "192.168.100.3")
            time.sleep(0.3)
        if not with_unit:
            assert answer != "192.168.100.2", "control: the daemon's underlay blocked, so no overlay"
            return
        assert answer == "192.168.100.2", f"over the overlay, from our overlay address: {answer}"
        assert fetch(names["ours"], "198.51.100.20").startswith("error:"), "the other node's underlay: blocked"
        status = subprocess.run(in_ours(names["ours"], [sys.executable, T.LOADER, "--config-dir", conf, "status"]),
                                env=env, capture_output=True, text=True, timeout=60)
        assert "overlay up, VPN down: everything else is blocked" in status.stdout, status.stdout
        assert status.returncode == 0, status.stdout
        time.sleep(0.3)
        procs[0].terminate()
        procs[0].wait(timeout=10)
        frames = [f for f in T.read_pcap(capture) if not f.arp]
        assert frames, "the daemon's frames were seen"
        # the daemon's UDP, and the link-scope neighbour discovery and MLD $ALLOW_DHCP lets out
        others = [f for f in frames if not ((f.proto == 17 and f.src == "198.19.0.1")
                                            or (f.proto == 58 and f.dst.startswith("ff02:")))]
        tcp = [f for f in frames if f.proto == 6]
        assert others == [] and tcp == [], f"frames on our cable that are not the Nebula daemon's: {others[:5]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        time.sleep(0.2)
        if os.path.isdir(cgroup_dir):
            for _ in range(50):
                try:
                    os.rmdir(cgroup_dir)
                    break
                except OSError:
                    time.sleep(0.1)
            os.rmdir(os.path.dirname(cgroup_dir))


@pytest.mark.parametrize("overlays,expected", [
    ("tailscale", ["-A VPNFW-OUTPUT -d 100.64.0.0/10 -o tailscale0 -j ACCEPT",
                   "-A VPNFW-INPUT -s 100.64.0.0/10 -i tailscale0 -j ACCEPT"]),
    ("headscale", ["-A VPNFW-OUTPUT -d 100.64.0.0/10 -o tailscale0 -j ACCEPT"]),
    ("nebula", ["-A VPNFW-OUTPUT -o nebula1 -j ACCEPT", "-A VPNFW-INPUT -i nebula1 -j ACCEPT"]),
    ("zerotier", ["-A VPNFW-OUTPUT -o zt+ -j ACCEPT"]),
])
def test_the_presets_give_their_documented_interfaces_and_ranges(tmp_path, netns, overlays, expected):
    """Loaded (and verified) in a namespace; the kernel's rules read back."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"
                                                           f"@def $OVERLAYS = ({overlays});\n"})
    ns = netns("preset")
    out = run_loader(["--config-dir", conf, "start"], netns=ns.name)
    assert out.returncode == 0, out.stderr
    v4, v6 = ns.save("ip"), ns.save("ip6")
    for line in expected:
        assert line in v4, (line, v4)
    if overlays in ("tailscale", "headscale"):  # IPv6: Tailscale's ULA prefix, nothing else on it
        assert "-A VPNFW-OUTPUT -d fd7a:115c:a1e0::/48 -o tailscale0 -j ACCEPT" in v6, v6
        lines = (v4 + v6).splitlines()
        assert "-A VPNFW-OUTPUT -o tailscale0 -j ACCEPT" not in lines, "no exit node by the overlay: only its ranges"


def test_an_unknown_overlay_is_an_error_with_its_place(tmp_path):
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $OVERLAYS = (tailscale wiregard);\n"})
    out = run_loader(["--config-dir", conf, "check"])
    assert out.returncode == 3 and "30_user.conf:1:" in out.stderr and "expected an overlay" in out.stderr, out.stderr
