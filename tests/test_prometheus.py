"""`vpn-firewall status --prometheus` and vpn-firewall-prometheus.service: the metrics as the
real prometheus-node-exporter (Debian's) scrapes them from its textfile directory, in a
namespace where the kill switch is loaded, then in lockdown. The unit's own command writes
the file (its ExecStart, with the directory of this test)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import LOADER, needs_root, run_loader, write_config

pytestmark = [needs_root, pytest.mark.skipif(not shutil.which("prometheus-node-exporter"),
                                             reason="needs prometheus-node-exporter (make test-deps)")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "lib/systemd/system/vpn-firewall-prometheus.service")
SCRAPE = r"""
import sys, time, urllib.request
for _ in range(100):
    try:
        print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode())
        break
    except OSError:
        time.sleep(0.05)
"""


def unit_command(textfiles) -> str:
    """The unit's ExecStart, writing into TEXTFILES, with this checkout's loader."""
    line = next(l for l in open(UNIT).read().splitlines() if l.startswith("ExecStart="))
    argv = shlex.split(line[len("ExecStart="):])
    script = argv[2].replace("/var/lib/prometheus/node-exporter", str(textfiles))
    return script.replace("/usr/sbin/vpn-firewall", f"{sys.executable} {LOADER} --config-dir $CONF")


def scrape(ns, textfiles) -> dict:
    """node_exporter's textfile collector alone, on loopback in the namespace: the samples."""
    exporter = subprocess.Popen(["ip", "netns", "exec", ns.name, "prometheus-node-exporter",
                                 "--web.listen-address=127.0.0.1:9777", "--collector.disable-defaults",
                                 "--collector.textfile", f"--collector.textfile.directory={textfiles}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", SCRAPE, "9777"],
                              capture_output=True, text=True, timeout=30).stdout
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_node_exporter_scrapes_the_kill_switchs_state(tmp_path, netns):
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp);\n"})
    ns = netns("prom")
    ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up && ip addr add 198.19.0.1/24 dev v0 && "
          "ip route add default via 198.19.0.254 dev v0 onlink && "
          "ip neigh replace 198.19.0.254 lladdr 02:00:00:00:00:fe dev v0 nud permanent")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    write = ["ip", "netns", "exec", ns.name, "env", f"CONF={conf}", "sh", "-c", unit_command(textfiles)]
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    out = subprocess.run(write, capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(textfiles)) == ["vpn_firewall.prom"], "written beside, moved into place"
    m = scrape(ns, textfiles)
    assert m.get("node_textfile_scrape_error") == 0, m
    assert m['vpn_firewall_rules_loaded{family="ip"}'] == 1 and m['vpn_firewall_rules_in_sync{family="ip6"}'] == 1
    assert m['vpn_firewall_lockdown{family="ip"}'] == 0 and m["vpn_firewall_vpn_servers"] == 1
    assert m["vpn_firewall_config_valid"] == 1 and m["vpn_firewall_status_exit_code"] == 0
    # what is blocked is counted
    subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                    "import socket\nfor _ in range(3):\n    try: socket.create_connection(('192.0.2.9', 80), 1)\n"
                    "    except OSError: pass"], check=True)
    assert subprocess.run(write, capture_output=True, text=True).returncode == 0
    m = scrape(ns, textfiles)
    assert m['vpn_firewall_blocked_packets_total{chain="OUTPUT",family="ip"}'] >= 3, m
    # the config broken on disk: the rules in force stay, and the metrics say so
    write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (192.0.2.1:1194/udp 192.0.2.);\n"})
    assert subprocess.run(write, capture_output=True, text=True).returncode == 0
    m = scrape(ns, textfiles)
    assert m.get("node_textfile_scrape_error") == 0, m
    assert m["vpn_firewall_config_valid"] == 0 and m['vpn_firewall_rules_loaded{family="ip"}'] == 1, m
    assert m["vpn_firewall_status_exit_code"] != 0


def test_no_file_when_vpn_firewall_cannot_run(tmp_path, netns):
    """The command fails: the file in place stays as it was, no half file appears."""
    ns = netns("promfail")
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    (textfiles / "vpn_firewall.prom").write_text("vpn_firewall_rules_loaded 1\n")
    broken = unit_command(textfiles).replace(f"{sys.executable} {LOADER}", "/nonexistent/vpn-firewall")
    out = subprocess.run(["ip", "netns", "exec", ns.name, "env", "CONF=/nonexistent", "sh", "-c", broken],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert sorted(os.listdir(textfiles)) == ["vpn_firewall.prom"]
    assert (textfiles / "vpn_firewall.prom").read_text() == "vpn_firewall_rules_loaded 1\n"
