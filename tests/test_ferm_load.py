"""ferm users' rules through the real loader, in namespaces: loaded, read back and verified,
reloaded and unloaded with nothing left behind, both backends; and none of the new
constructs opens the machine where the user did not write an ACCEPT."""

import os
import subprocess
import sys

import pytest

from conftest import BACKENDS, LOADER, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root]

EXAMPLE = "/usr/share/doc/ferm/examples/dmz_router.ferm"
EXTRA = """
@def $VPN_SERVERS = (198.51.100.7:1194/udp);
table mangle chain OUTPUT proto tcp dport 22 MARK set-mark 5;
table raw chain PREROUTING proto udp dport 53 CT notrack;
chain mychain { proto tcp dport 9999 ACCEPT; }
chain INPUT proto tcp jump mychain;
chain INPUT saddr 192.0.2.0/24 @subchain "lan" { proto udp dport 5353 ACCEPT; }
"""


def run(ns_env, *args):
    env, ns = ns_env
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, LOADER, *args], capture_output=True,
                          text=True, env=env, timeout=60)


def save(ns_env, tool):
    env, ns = ns_env
    return subprocess.run(["ip", "netns", "exec", ns, tool], capture_output=True, text=True, env=env).stdout


@pytest.mark.skipif(not os.path.exists(EXAMPLE), reason="needs ferm's examples")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_ferm_file_loads_verifies_reloads_and_unloads_cleanly(tmp_path, netns, backend):
    conf = tmp_path / "conf"
    conf.mkdir()
    os.chmod(conf, 0o755)
    with open(EXAMPLE) as f:
        (conf / "30_user.conf").write_text(f.read() + EXTRA)
    os.chmod(conf / "30_user.conf", 0o644)
    ns = netns("ferm")
    env = dict(os.environ, PATH=T.backend_bin(str(tmp_path), backend) + ":" + os.environ["PATH"],
               VPN_FIREWALL_LOCK=str(tmp_path / "lock"), VPN_FIREWALL_RUN_DIR=str(tmp_path / "run"),
               VPN_FIREWALL_STATE_DIR=str(tmp_path / "state"))
    where = (env, ns.name)
    for attempt in ("start", "restart"):
        out = run(where, "--config-dir", str(conf), "start")
        assert out.returncode == 0, f"{attempt}: {out.stderr}"
    assert "policy ACCEPT for chain OUTPUT is not applied" in out.stderr
    status = run(where, "--config-dir", str(conf), "status")
    assert status.returncode == 0 and "ip: loaded, the same as the config compiles to" in status.stdout, status.stdout
    held = save(where, "iptables-save")
    for line in ("-A VPNFW-INPUT -p tcp -j VPNFW-U-mychain", "-A VPNFW-U-mychain -p tcp -m tcp --dport 9999 -j ACCEPT",
                 "-A VPNFW-INPUT -s 192.0.2.0/24 -j VPNFW-U-lan", "-A VPNFW-U-lan -p udp -m udp --dport 5353 -j ACCEPT",
                 "-A VPNFW-OUTPUT -p tcp -m tcp --dport 22 -j MARK --set-xmark 0x5/0xffffffff",
                 "-A VPNFW-PREROUTING -p udp -m udp --dport 53 -j CT --notrack",
                 "-A VPNFW-PREROUTING -d 193.43.91.203/32 -i eth1 -p tcp -m tcp --dport 80 -j DNAT --to-destination 192.168.1.2",
                 "-A VPNFW-POSTROUTING -s 192.168.0.0/24 -o eth1 -j SNAT --to-source 193.43.91.203"):
        assert line in held, line
    # a reload without the user's chains and tables leaves none of them behind
    (conf / "30_user.conf").write_text("@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n")
    out = run(where, "--config-dir", str(conf), "start")
    assert out.returncode == 0, out.stderr
    assert "VPNFW-U-" not in save(where, "iptables-save") + save(where, "ip6tables-save")
    out = run(where, "--config-dir", str(conf), "unload", "--force")
    assert out.returncode == 0, out.stderr
    assert "VPNFW" not in save(where, "iptables-save") + save(where, "ip6tables-save")


HOLES = """
chain opened ACCEPT;
table nat chain OUTPUT proto udp dport 9 DNAT to 198.18.0.10:9;
table mangle chain OUTPUT MARK set-mark 0x10000000;
table raw chain OUTPUT CT notrack;
table mangle chain OUTPUT CONNMARK set-mark 0;
"""


@pytest.mark.parametrize("firewall", [True, False], ids=["vpn-firewall", "no-firewall"])
def test_no_construct_opens_what_the_user_did_not_accept(pki, firewall):
    """A chain no rule jumps to, a DNAT in nat OUTPUT, the fence's mark set in mangle,
    untracked packets, the connection mark cleared: with the VPN down, nothing leaves.
    Without vpn-firewall the same probes leave: the negative control."""
    bed = T.Testbed(pki[0], pki[1], firewall=firewall, config=T.BASE_CONFIG + HOLES)
    try:
        bed.up(vpn=False)
        before = bed.frames_so_far()
        for addr in (T.DNS_V4, T.WEB_V4):
            bed.probe("udpfrom", "40000", addr, "9")
        bed.probe("http", T.WEB_V4, "80")
        left = [f for f in T.read_pcap(bed.pcap)[before:] if f.dst in (T.WEB_V4, T.DNS_V4)]
        if firewall:
            assert bed.start_code == 0
            assert left == [], left
        else:
            assert left, "the probes leave an open machine"
    finally:
        bed.down()
