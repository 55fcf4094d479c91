"""Living with the package under a real systemd (a booted Debian 12 in systemd-nspawn, its own
network): many boots under load, a sandbox that cannot be set up, the boot race made
certain, an upgrade under a flood, a disabled kill switch."""

import contextlib
import os
import re
import shutil
import subprocess

import pytest

from conftest import alone, needs_root
from test_boot import CONFIGURED, DEB, boot, facts

BOOTS = int(os.environ.get("VPN_FIREWALL_BOOTS", "20"))
UNITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib", "systemd", "system")

pytestmark = [
    needs_root,
    pytest.mark.skipif(not DEB, reason="set VPN_FIREWALL_DEB to a built .deb (make test does)"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-container"),
]


def cpu_times() -> tuple:
    """(busy, all) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


@contextlib.contextmanager
def load_on_the_host():
    """CPU, memory and IO load beside the boots; yields a dict that gets 'busy', the share of
    the machine's CPU that was busy meanwhile. Side by side with the other tests (make test),
    they are the load: eight workers of leak matrices, boots and fuzzing keep both cores busy.
    Run alone, stress-ng makes it, stopped by its PID afterwards."""
    hog = None
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        if not shutil.which("stress-ng"):
            pytest.skip("needs stress-ng")
        hog = subprocess.Popen(["stress-ng", "--cpu", "2", "--io", "1", "--hdd", "1", "--hdd-bytes", "64M",
                                "--timeout", "3600s", "--quiet"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    seen, (busy, total) = {}, cpu_times()
    try:
        yield seen
    finally:
        if hog is not None:
            os.killpg(hog.pid, 15)  # its own session: stress-ng's workers are its children
            hog.wait(timeout=30)
        now_busy, now_total = cpu_times()
        seen["busy"] = (now_busy - busy) / max(1, now_total - total)


def problems_of(f: dict) -> list:
    """What is wrong with one boot: the units' results and their order before network-pre."""
    found = []
    if f["result"] != "success" or f["active"] != "active":
        found.append(f"vpn-firewall.service {f['active']} ({f['result']}, status {f['exit_status']})")
    if f["guard_result"] != "success" or f["guard_active"] != "active" or f["guard_restarts"] != "0":
        found.append(f"guard {f['guard_active']} ({f['guard_result']}, {f['guard_restarts']} restarts)")
    if not 0 < int(f["fw_exit"]) < int(f["netpre"]):
        found.append(f"vpn-firewall finished at {f['fw_exit']}, network-pre.target at {f['netpre']}")
    if not 0 < int(f["guard_ready"]) < int(f["netpre"]):
        found.append(f"guard ready at {f['guard_ready']}, network-pre.target at {f['netpre']}")
    if "vpn-firewall" in f["failed_units"]:
        found.append(f"failed units: {f['failed_units']}")
    return found


def boots(tmp_path, base, count, files=None):
    """Install and configure once, then boot the same machine `count` times; [(boot, facts, journal)]."""
    (tmp_path / "first").mkdir()
    results, console = boot(tmp_path / "first", base, "configured", CONFIGURED, files=files)
    assert (results / "boot").exists(), console
    seen = []
    for n in range(count):
        (tmp_path / f"b{n}").mkdir()
        results, console = boot(tmp_path / f"b{n}", base, "again", preinstall=False,
                                upper=tmp_path / "first/upper")
        assert (results / "boot").exists(), console
        seen.append((n, facts(results), (results / "journal").read_text()))
        shutil.rmtree(tmp_path / f"b{n}")
    return seen


def test_many_boots_under_load_never_fail_the_units(tmp_path, base):
    """The goal: no failed start in consecutive boots under CPU and IO load (VPN_FIREWALL_BOOTS,
    20 by default; 100 were run by hand, see the README), both units done before network-pre."""
    with load_on_the_host() as load:
        seen = boots(tmp_path, base, BOOTS)
    bad = [(n, problems_of(f), journal) for n, f, journal in seen if problems_of(f)]
    print(f"{len(seen)} boots under load ({load['busy']:.0%} of the CPU busy), {len(bad)} with a problem")
    assert load["busy"] >= 0.75, f"the machine was not under load: {load['busy']:.0%} of its CPU busy"
    assert not bad, bad[:3]
    assert all("(cache)" in journal for n, f, journal in seen), "every boot after the first loads the cached compile"


# The race made certain. systemd builds a PrivateDevices= unit's /dev in
# /tmp/namespace-dev-XXXXXX (src/core/namespace.c), and systemd-tmpfiles-setup empties /tmp
# at boot ('D /tmp'): what starts beside it can lose its /dev half-built (226/NAMESPACE). Here
# the emptying is stretched over two seconds (a drop-in that keeps removing those directories
# before tmpfiles runs), and vpn-firewall's start is set up a moment after tmpfiles began
# (an ExecStartPre of 0.2 s: each command gets its own sandbox), so that it meets it.
EMPTY_TMP_SLOWLY = """import os, shutil, time
end = time.monotonic() + 2
while time.monotonic() < end:
    for name in os.listdir("/tmp"):
        if name.startswith("namespace-dev-"):
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)
"""
SLOW_TMPFILES = "[Service]\nExecStartPre=/usr/bin/python3 /root/empty-tmp-slowly.py\n"
A_MOMENT_LATER = "[Service]\nExecStartPre=/bin/sleep 0.2\n"


def unit_without(name: str, line: str) -> str:
    text = open(os.path.join(UNITS, name)).read()
    assert line + "\n" in text
    return text.replace(line + "\n", "")


@pytest.mark.parametrize("ordered", [True, False], ids=["as-shipped", "control-without-the-ordering"])
def test_the_boot_race_with_tmpfiles_made_certain(tmp_path, base, ordered):
    files = {"/root/empty-tmp-slowly.py": EMPTY_TMP_SLOWLY,
             "/etc/systemd/system/systemd-tmpfiles-setup.service.d/slow.conf": SLOW_TMPFILES,
             "/etc/systemd/system/vpn-firewall.service.d/later.conf": A_MOMENT_LATER}
    if not ordered:  # the unit as it was: nothing between it and the emptying of /tmp
        files["/etc/systemd/system/vpn-firewall.service"] = unit_without(
            "vpn-firewall.service", "After=systemd-tmpfiles-setup.service")
    seen = boots(tmp_path, base, 4, files=files)
    failed = [(n, f) for n, f, journal in seen if f["result"] != "success"]
    if ordered:
        assert not failed, failed
        assert all(int(f["tmpfiles_exit"]) < int(f["fw_start"]) for n, f, j in seen)
    else:
        assert failed, "without the ordering the race should show: the test could not fail"
        assert any(f["exit_status"] == "226" for n, f in failed), failed


# A sandbox that cannot be set up: the start fails with 226/NAMESPACE before any code of
# ours runs. The closing step runs outside it ('+'), so it still closes the machine.
NO_SANDBOX = "[Service]\nInaccessiblePaths=/nonexistent\n"


def closed_before_the_network(f: dict) -> bool:
    return 0 < int(f["fw_inactive"]) < int(f["netpre"]) < int(f["networking_start"])


def test_a_sandbox_that_cannot_be_set_up_boots_closed_in_lockdown_without_a_verified_ruleset(tmp_path, base):
    results, console = boot(tmp_path, base, "configured", CONFIGURED,
                            files={"/etc/systemd/system/vpn-firewall.service.d/broken.conf": NO_SANDBOX})
    f = facts(results)
    assert f["result"] == "exit-code" and f["exit_status"] == "226", f
    assert closed_before_the_network(f), f
    for name in ("boot-ip.save", "boot-ip6.save"):
        save = (results / name).read_text()
        assert "vpn-firewall lockdown" in save and ":OUTPUT DROP" in save, save
    journal = (results / "journal").read_text()
    assert "the start did not finish (exit-code: exited 226)" in journal, journal
    assert f["guard_active"] == "active", "the guard keeps the lockdown in force"


@pytest.mark.parametrize("closing", ["as-shipped", "control-closing-inside-the-sandbox"])
def test_a_sandbox_that_cannot_be_set_up_boots_with_the_last_verified_rules(tmp_path, base, closing):
    """A failure that is not the config's: the VPN can still connect (its server's rule is in)."""
    (tmp_path / "first").mkdir()
    results, console = boot(tmp_path / "first", base, "configured", CONFIGURED)
    assert facts(results)["result"] == "success", console
    files = {"/etc/systemd/system/vpn-firewall.service.d/broken.conf": NO_SANDBOX}
    if closing != "as-shipped":  # the closing step as it was: in the same sandbox as the start
        files["/etc/systemd/system/vpn-firewall.service"] = open(os.path.join(UNITS, "vpn-firewall.service")).read() \
            .replace("ExecStopPost=+/usr/sbin/", "ExecStopPost=/usr/sbin/")
    (tmp_path / "second").mkdir()
    results, console = boot(tmp_path / "second", base, "again", preinstall=False, upper=tmp_path / "first/upper",
                            files=files)
    f = facts(results)
    assert f["result"] == "exit-code" and f["exit_status"] == "226", f
    save, save6 = (results / "boot-ip.save").read_text(), (results / "boot-ip6.save").read_text()
    if closing != "as-shipped":
        # nothing at all: iptables-save prints no table
        assert "VPNFW" not in save and "DROP" not in save, "the boot came up open: the control shows the hole"
        return
    assert closed_before_the_network(f), f
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in save, save
    assert ":OUTPUT DROP" in save and "lockdown" not in save and "-A OUTPUT -j VPNFW-OUTPUT" in save6
    journal = (results / "journal").read_text()
    assert "ip: the last verified rules loaded (the config is unchanged since they were)" in journal, journal
    assert f["guard_active"] == "active" and "guarding the rules in force" in journal


def test_a_changed_config_and_a_failed_sandbox_boot_into_lockdown_not_into_stale_rules(tmp_path, base):
    (tmp_path / "first").mkdir()
    results, console = boot(tmp_path / "first", base, "configured", CONFIGURED)
    assert facts(results)["result"] == "success", console
    (tmp_path / "second").mkdir()
    results, console = boot(tmp_path / "second", base, "again", preinstall=False, upper=tmp_path / "first/upper",
                            config="@def $VPN_SERVERS = (198.51.100.8:1194/udp);\n",
                            files={"/etc/systemd/system/vpn-firewall.service.d/broken.conf": NO_SANDBOX})
    f = facts(results)
    assert f["exit_status"] == "226" and closed_before_the_network(f), f
    save = (results / "boot-ip.save").read_text()
    assert "vpn-firewall lockdown" in save and "198.51.100.7" not in save, save


def next_version_of(deb: str, tmp_path) -> str:
    """The same package with a higher version (what 'apt upgrade' would bring)."""
    tree = tmp_path / "next-tree"
    subprocess.run(["dpkg-deb", "-R", deb, str(tree)], check=True)
    control = tree / "DEBIAN/control"
    version = re.search(r"^Version: (.*)$", control.read_text(), re.M).group(1)
    control.write_text(control.read_text().replace(f"Version: {version}", f"Version: {version}+next1"))
    init = tree / "usr/lib/vpn-firewall/vpnfw/__init__.py"
    init.write_text(init.read_text().replace(f'VERSION = "{version}"', f'VERSION = "{version}+next1"'))
    md5sums = tree / "DEBIAN/md5sums"
    md5sums.write_text("".join(
        line if not line.endswith(" usr/lib/vpn-firewall/vpnfw/__init__.py\n") else
        subprocess.run(["md5sum", "usr/lib/vpn-firewall/vpnfw/__init__.py"], cwd=tree, capture_output=True,
                       text=True, check=True).stdout
        for line in md5sums.read_text().splitlines(keepends=True)))
    out = tmp_path / "next.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(tree), str(out)], check=True, capture_output=True)
    return str(out), version


def frames_to_the_internet(capture) -> list:
    """What left the guest for the documentation addresses the flood sends to."""
    out = subprocess.run(["tcpdump", "-nn", "-r", str(capture), "dst", "host", "192.0.2.1", "or", "dst", "host",
                          "2001:db8:ffff::1"], capture_output=True, text=True)
    return out.stdout.splitlines()


@alone  # the guard's gap is measured
def test_an_upgrade_under_a_flood_is_quiet_and_seamless(tmp_path, base):
    """Upgrade a running, configured installation with the refresh timer and the client-config
    watcher enabled, while a program floods: nothing on the wire, the upgrade path's message
    (not the first install's), the guard moved to the new code only after the new rules were
    in, within half a second, the timer and the path unit still active."""
    deb, version = next_version_of(DEB, tmp_path)
    (tmp_path / "boot").mkdir()
    results, console = boot(tmp_path / "boot", base, "upgrade", CONFIGURED, deb=deb, capture=tmp_path / "wire.pcap")
    f = facts(results)
    log = (results / "upgrade.log").read_text()
    assert f["upgrade_status"] == "0", log
    assert f"vpn-firewall: upgraded from {version}: the new rules are loaded, the kill switch stayed in force" in log, log
    assert "SSH sessions" not in log and "NOT started" not in log, log
    assert not re.search(r"^vpn-firewall: $", log, re.M), "no empty message lines"
    assert f["version_after"] == f"vpn-firewall {version}+next1", f
    assert f["upgraded_active"] == "active" and f["upgraded_guard_active"] == "active", f
    assert f["guard_pid_after"] != f["guard_pid_before"], "the guard runs the new code"
    assert int(f["guard_stopping"]) > int(f["upgraded_fw_exit"]), "the guard was stopped only after the new rules were in"
    gap = (int(f["guard_ready_again"]) - int(f["guard_stopping"])) / 1e6
    print(f"guard's gap during the upgrade: {gap * 1000:.0f} ms (goal: under 500 ms)")
    assert 0 < gap < 0.5, gap
    assert (f["timer_before"], f["timer_after"]) == ("active", "active"), f
    assert (f["path_before"], f["path_after"]) == ("active", "active"), f
    assert f["status_after"] == "0", (results / "status-after").read_text()
    flood = dict(line.split("=") for line in (results / "flood").read_text().split())
    assert int(flood["refused"]) + int(flood["taken"]) > 1000, flood
    leaked = frames_to_the_internet(tmp_path / "wire.pcap")
    print(f"flood during the upgrade: {flood}; frames on the wire: {len(leaked)}")
    assert leaked == [], leaked[:5]
    control = subprocess.run(["tcpdump", "-nn", "-r", str(tmp_path / "wire.pcap"), "dst", "host", "192.0.2.2"],
                             capture_output=True, text=True).stdout.splitlines()
    assert len(control) == 5, "unloaded afterwards, the same sends reach the wire: the capture sees them"


def test_a_disabled_kill_switch_starts_no_guard_and_leaves_nothing_failed(tmp_path, base):
    (tmp_path / "first").mkdir()
    results, console = boot(tmp_path / "first", base, "disable", CONFIGURED)
    assert facts(results)["result"] == "success", console
    assert "Removed" in (results / "disable.log").read_text()
    (tmp_path / "second").mkdir()
    results, console = boot(tmp_path / "second", base, "again", preinstall=False, upper=tmp_path / "first/upper")
    f = facts(results)
    assert f["active"] == "inactive" and f["guard_active"] == "inactive", f
    assert f["guard_result"] == "success" and f["guard_restarts"] == "0", f
    assert f["failed_units"].strip() == "", f
    assert "VPNFW" not in (results / "boot-ip.save").read_text()


FIRST_RELEASE = "e36c743fd34aa0b13b521ab80820e8da7925e33c"  # 0.1.0, the last commit before the lifecycle work


def first_release_deb(tmp_path) -> str:
    """0.1.0 built from this repository's history, as users have it installed."""
    root = os.path.join(os.path.dirname(UNITS), "..", "..")
    tree = tmp_path / "vpn-firewall-0.1.0"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", root, "archive", FIRST_RELEASE], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"0.1.0 is not in this checkout's history: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    out = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return str(tmp_path / "vpn-firewall_0.1.0_all.deb")


def test_the_upgrade_from_0_1_0_under_a_flood(tmp_path, base):
    """From the first release, whose guard was enabled on its own (WantedBy=sysinit.target)
    and whose preinst stopped everything: nothing on the wire, the upgrade's message, the
    guard now enabled with the kill switch, the timer and the path unit still active."""
    old = first_release_deb(tmp_path)
    (tmp_path / "boot").mkdir()
    results, console = boot(tmp_path / "boot", base, "upgrade", CONFIGURED, deb=DEB, installed=old,
                            capture=tmp_path / "wire.pcap")
    f = facts(results)
    log = (results / "upgrade.log").read_text()
    assert f["upgrade_status"] == "0", log
    assert "vpn-firewall: upgraded from 0.1.0: the new rules are loaded, the kill switch stayed in force" in log, log
    assert "SSH sessions" not in log, log
    assert f["guard_wanted_by"].split() == ["vpn-firewall.service.wants/vpn-firewall-guard.service"], f
    assert f["upgraded_active"] == "active" and f["upgraded_guard_active"] == "active", f
    assert f["guard_pid_after"] != f["guard_pid_before"], "the guard runs the new code"
    assert (f["timer_before"], f["timer_after"]) == ("active", "active"), f
    assert f["version_after"] == f"vpn-firewall {subprocess.run(['dpkg-deb', '-f', DEB, 'Version'], capture_output=True, text=True).stdout.strip()}"
    assert frames_to_the_internet(tmp_path / "wire.pcap") == []


def test_a_networkmanager_connection_saved_and_edited_reaches_the_kill_switch(tmp_path, base):
    """$VPN_CLIENT_CONFIGS names NetworkManager's keyfiles and the path unit is on: a VPN
    connection saved, then its server changed, is in force each time without anyone touching
    /etc/vpn-firewall (NetworkManager itself is not needed to write its files)."""
    config = ('@def $VPN_CLIENT_CONFIGS = ("/etc/NetworkManager/system-connections/*.nmconnection");\n'
              "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n")
    results, console = boot(tmp_path, base, "keyfile", config,
                            files={"/etc/NetworkManager/system-connections/.keep": ""})
    assert facts(results)["result"] == "success", console
    first, second = (results / "keyfile-1.save").read_text(), (results / "keyfile-2.save").read_text()
    assert "-A VPNFW-OUTPUT -d 198.51.100.44/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in first, \
        (results / "keyfile.journal").read_text()
    assert "-A VPNFW-OUTPUT -d 198.51.100.45/32 -p tcp -m tcp --dport 443 -j VPNFW-SERVER-FLOW" in second
    assert "198.51.100.44" not in second, "the old server is gone with the edit"
