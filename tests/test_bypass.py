"""$BYPASS_UNITS: a unit's processes leave outside the tunnel whenever they run, everything
else stays in.

In a namespace: a cgroup made here stands for a unit's (named by its path), first absent
(its rules are left out and the load says nothing), then present: a process in it gets out
by the cable with the cable's address, a bystander does not. Booted: a Debian 12 guest with
a real unit named in the config: the generator's drop-in loads its rules before it starts,
and its datagrams reach the wire at boot while another unit's and a bystander's do not.
"""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root]

CONFIG = T.BASE_CONFIG.replace("@def $ALLOW_DHCP = no;\n", "")


def loader(bed, *args):
    """The loader with the cgroup hierarchy in view (ip netns exec hides it)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{bed.client}", sys.executable, T.LOADER, "--config-dir",
                           bed.confdir, *args], env=bed.env, capture_output=True, text=True, timeout=60)


def in_cgroup(bed, cgroup_dir, script) -> str:
    """What a python SCRIPT prints, run by a process that enters CGROUP_DIR (None: stays
    where it is) before it runs."""
    enter = f"echo $$ > {cgroup_dir}/cgroup.procs && " if cgroup_dir else ""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{bed.client}", "sh", "-c",
                          f"{enter}exec {sys.executable} -c '{script}'"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def fetch_in(bed, cgroup_dir):
    """A fetch of the web server from inside CGROUP_DIR."""
    return in_cgroup(bed, cgroup_dir, f"import sys; sys.path.insert(0, \"{os.path.dirname(T.PROBE)}\"); "
                                      f"from netprobe import http; print(http(\"{T.WEB_V4}\", 80))")


@pytest.fixture
def unit_cgroup():
    """(the unit's cgroup path, its directory) for a unit of this test's own, in a slice of
    its own; neither is made here (the test decides when the unit "runs"); both gone after."""
    from vpnfw.portal_run import cgroup2_mount

    made = []

    def make(name):
        unit = f"vpnfw-test-{uuid.uuid4().hex[:8]}.slice/{name}"
        made.append(os.path.join(cgroup2_mount(), unit))
        return unit, made[-1]
    yield make
    for cgroup_dir in made:
        for d in (cgroup_dir, os.path.dirname(cgroup_dir)):
            if os.path.isdir(d):
                os.rmdir(d)


def test_a_unit_outside_the_tunnel_while_its_cgroup_exists(pki, unit_cgroup):
    unit, cgroup_dir = unit_cgroup("backup.service")
    bed = T.Testbed(pki[0], pki[1], config=CONFIG + f"@def $BYPASS_UNITS = ({unit});\n")
    try:
        bed.up(vpn=False)
        # not running yet: its cgroup is not there, its rules are left out, nothing is said
        out = loader(bed, "reload")
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
        assert "vpn-firewall bypass" not in bed.in_ns(bed.client, ["iptables-save"]).stdout
        os.makedirs(cgroup_dir)
        assert fetch_in(bed, cgroup_dir) == "error:ECONNREFUSED", "its rules are not in until a load"
        out = loader(bed, "reload")  # what the unit's drop-in does before it starts
        assert out.returncode == 0, out.stderr
        assert fetch_in(bed, cgroup_dir) == T.CLIENT_V4, "the unit's process: by the cable"
        assert bed.fetch(T.WEB_V4) == "error:ECONNREFUSED", "a bystander: blocked"
        assert loader(bed, "status").returncode == 0
        # the unit gone, its cgroup with it: the next load takes its rules and routes out
        os.rmdir(cgroup_dir)
        assert loader(bed, "reload").returncode == 0
        save = bed.in_ns(bed.client, ["iptables-save"]).stdout
        assert "vpn-firewall bypass" not in save and "VPNFW-BYPASS" not in save, save
        assert "5650" not in bed.in_ns(bed.client, ["ip", "rule"]).stdout
    finally:
        bed.down()


def send_from(bed, cgroup_dir, addr, port) -> str:
    """A datagram to ADDR:PORT from inside CGROUP_DIR (None: from outside any)."""
    return in_cgroup(bed, cgroup_dir, "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                      f"print(s.sendto(b\"x\", (\"{addr}\", {port})))")


def test_only_the_vpn_units_processes_reach_the_servers(pki, unit_cgroup):
    unit, cgroup_dir = unit_cgroup("vpn.service")
    bed = T.Testbed(pki[0], pki[1], config=CONFIG + f"@def $VPN_UNITS = ({unit});\n")
    try:
        bed.up(vpn=False)
        os.makedirs(cgroup_dir)
        assert send_from(bed, cgroup_dir, T.ROUTER_V4, T.VPN_PORT).startswith("PermissionError"), \
            "not running at the last load: no one reaches the servers"
        assert loader(bed, "reload").returncode == 0  # what the unit's drop-in does before it starts
        assert send_from(bed, cgroup_dir, T.ROUTER_V4, T.VPN_PORT) == "1", "the VPN unit's process reaches its server"
        assert send_from(bed, None, T.ROUTER_V4, T.VPN_PORT).startswith("PermissionError"), \
            "another root process does not"
        assert send_from(bed, cgroup_dir, T.WEB_V4, 80).startswith("PermissionError"), "nor elsewhere, the VPN unit"
        assert loader(bed, "status").returncode == 0
    finally:
        bed.down()


@pytest.mark.parametrize("text,said", [
    ("@def $BYPASS_UNITS = (backup);\n", "expected a systemd unit such as backup.service"),
    ("@def $BYPASS_UNITS = (../etc/x.service);\n", "expected a systemd unit"),
    ("@def $BYPASS_UNITS = (a//b.service);\n", "expected a systemd unit"),
    ("@def $BYPASS_UNITS = (x@*.service);\n", "expected a systemd unit such as backup.service"),
    ("@def $VPN_UNITS = (openvpn*.service);\n", "expected a systemd unit such as openvpn-client@*.service"),
])
def test_a_bad_unit_is_an_error_with_its_place(tmp_path, text, said):
    from conftest import run_loader, write_config

    conf = write_config(tmp_path / "conf", {"30_user.conf": text})
    out = run_loader(["--config-dir", conf, "check"])
    assert out.returncode == 3 and said in out.stderr and "30_user.conf:1:" in out.stderr, out.stderr


PROBE_UNIT = """[Unit]
Description=sends five datagrams at boot ({tag})
After=network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 /root/send5.py {tag} {to}
[Install]
WantedBy=multi-user.target
"""
SEND5 = """import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 2 else ("192.0.2.2", 9)
for _ in range(5):
    try:
        s.sendto(sys.argv[1].encode() + b"-payload", to)
    except OSError as e:
        print("refused:", e)
"""
ROUTE_UNIT = """[Unit]
Description=a way out on the cable, before the probes
After=network.target
Before=bypass-probe.service other-probe.service vpn-probe.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'ip route replace default via 198.18.0.2 dev eth0 && ip neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev eth0'
[Install]
WantedBy=multi-user.target
"""


@pytest.mark.skipif(not os.environ.get("VPN_FIREWALL_DEB"), reason="set VPN_FIREWALL_DEB to a built .deb (make test does)")
@pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-container")
def test_a_bypass_unit_gets_out_from_boot_and_only_the_vpn_unit_reaches_its_server(tmp_path, base):
    from test_boot import CONFIGURED, boot

    files = {"/etc/systemd/system/bypass-probe.service": PROBE_UNIT.format(tag="bypass", to=""),
             "/etc/systemd/system/other-probe.service": PROBE_UNIT.format(tag="other", to=""),
             # the VPN client, to its server: the only one that may reach it ($VPN_UNITS)
             "/etc/systemd/system/vpn-probe.service": PROBE_UNIT.format(tag="vpn", to="198.51.100.7 1194"),
             "/etc/systemd/system/way-out.service": ROUTE_UNIT, "/root/send5.py": SEND5}
    wants = ["ln -s /etc/systemd/system/{0} /etc/systemd/system/multi-user.target.wants/{0}".format(u)
             for u in ("bypass-probe.service", "other-probe.service", "vpn-probe.service", "way-out.service")]
    (tmp_path / "boot").mkdir()
    wire = tmp_path / "wire.pcap"
    results, console = boot(tmp_path / "boot", base, "bypass",
                            CONFIGURED + "@def $BYPASS_UNITS = (bypass-probe.service);\n"
                            "@def $VPN_UNITS = (vpn-probe.service);\n",
                            files=files, chroot=wants, capture=wire)
    frames = wire.read_bytes()
    journal = (results / "journal").read_text()
    assert frames.count(b"bypass-payload") == 5, ("the bypass unit's datagrams, at boot", journal, console[-2000:])
    assert frames.count(b"other-payload") == 0, "another unit's: blocked"
    assert frames.count(b"bystander-payload") == 0, "a bystander's: blocked"
    assert frames.count(b"vpn-payload") == 5, "the VPN unit's, to its server"
    assert frames.count(b"bystander-server-payload") == 0, "a root bystander's, to the same server: blocked"
    drop_in = (results / "bypass-drop-in").read_text()
    assert "ExecStartPre=-+/bin/systemctl reload vpn-firewall.service" in drop_in, drop_in
    shutil.rmtree(tmp_path / "boot", ignore_errors=True)


def test_without_ip_the_rules_load_and_the_start_says_the_routes_are_not_set(tmp_path, netns, unit_cgroup):
    """The routes around the tunnel need `ip` (iproute2: Recommends). Without it the rules
    still load, verified (marked packets without the routes go nowhere: closed), and start
    says which routes are missing and why (routing.keep), and exits 0."""
    from conftest import backend_path, write_config

    unit, cgroup_dir = unit_cgroup("backup.service")
    os.makedirs(cgroup_dir)
    conf = write_config(tmp_path / "conf", {"30_user.conf": f"@def $BYPASS_UNITS = ({unit});\n"})
    ns = netns("noip")
    tools = backend_path(tmp_path, "nft").split(":")[0]  # the iptables tools only: no `ip` on this PATH
    env = dict(os.environ, PATH=tools)
    out = subprocess.run([shutil.which("nsenter"), f"--net=/run/netns/{ns.name}", sys.executable, T.LOADER,
                          "--config-dir", conf, "start"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the routes around the tunnel (for $BYPASS_UNITS and exclusions) are not set" in out.stderr, out.stderr
    assert "rules loaded and verified" in out.stderr, out.stderr
    assert f'--path "{unit}"' in ns.sh(f"PATH={tools} iptables-save -t mangle").stdout
