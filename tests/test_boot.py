"""The package under a real systemd: boot a minimal Debian 12 (systemd-nspawn, its own network
namespace) and show the unit runs before network-pre.target, loads the kill switch, fails into
lockdown with a broken config, and that install, upgrade, remove and purge behave."""

import os
import shutil
import subprocess
import time

import pytest

from conftest import needs_root

DEB = os.environ.get("VPN_FIREWALL_DEB")
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")

pytestmark = [
    needs_root,
    pytest.mark.skipif(not DEB, reason="set VPN_FIREWALL_DEB to a built .deb (make test does)"),
    pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-container"),
]

CONFIGURED = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"
BROKEN = "@def $VPN_SERVERS = (198.51.100.7:1194/udp 198.51.100.);\n"
INTERFACES = "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet static\n    address 198.18.0.1/24\n"


def boot(tmp_path, base, scenario, config=None, preinstall=True, legacy=False, enable=(), upper=None,
         files=None, deb=None, capture=None, installed=None, interfaces=INTERFACES, peer=None, nspawn=(), chroot=()):
    """Boot a guest on an overlay of the base tree; return (results dir, console output).
    upper: the overlay of an earlier boot, to boot the same machine again.
    files: guest path -> text (or (text, mode)), written before the boot (drop-ins, units); deb: another .deb
    copied in as /root/next.deb (an upgrade); capture: a file where tcpdump writes what the
    guest sends on its eth0, as the machine on the other end of the cable sees it;
    installed: the .deb preinstalled, if not the one under test (an older version);
    interfaces: ifupdown's file (without eth0 when NetworkManager configures it);
    peer(namespace): sets up the other end of the cable, returns what stops it;
    nspawn: more arguments for systemd-nspawn; chroot: shell commands run in the tree before it boots."""
    work, root = tmp_path / "work", tmp_path / "root"
    for d in (work, root):
        d.mkdir()
    if upper is None:
        upper = tmp_path / "upper"
        upper.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={work}", str(root)], check=True)
    ns = f"vpnfw-boot-{os.getpid()}-{scenario}"
    tcpdump = stop_peer = None
    try:
        shutil.copy(os.path.join(HERE, "guest-check.sh"), root / "root")
        shutil.copy(os.path.join(HERE, "flood.py"), root / "root")
        shutil.copy(os.path.join(HERE, "guest-check.service"), root / "etc/systemd/system")
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        if not (wants / "guest-check.service").is_symlink():  # booted before: it is there
            (wants / "guest-check.service").symlink_to("/etc/systemd/system/guest-check.service")
        (root / "root/scenario").write_text(scenario)
        for guest_path, text in (files or {}).items():
            text, mode = text if isinstance(text, tuple) else (text, None)
            target = root / guest_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            if mode is not None:
                target.chmod(mode)
        if deb:
            shutil.copy(deb, root / "root/next.deb")
        (root / "etc/network/interfaces").write_text(interfaces)
        shutil.copy(installed or DEB, root / "root/vpn-firewall.deb")
        if preinstall:
            out = subprocess.run(["chroot", str(root), "dpkg", "-i", "/root/vpn-firewall.deb"],
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stdout + out.stderr
        if config is not None:
            (root / "etc/vpn-firewall/30_user.conf").write_text(config)
        for unit in enable:  # enabled as 'systemctl enable' would (the units' WantedBy=sysinit.target)
            (root / "etc/systemd/system/sysinit.target.wants").mkdir(exist_ok=True)
            (root / f"etc/systemd/system/sysinit.target.wants/{unit}").symlink_to(f"/lib/systemd/system/{unit}")
        for command in chroot:
            out = subprocess.run(["chroot", str(root), "sh", "-c", command], capture_output=True, text=True)
            assert out.returncode == 0, command + ": " + out.stdout + out.stderr
        if legacy:
            for tool in ("iptables", "ip6tables"):
                subprocess.run(["chroot", str(root), "update-alternatives", "--set", tool,
                                f"/usr/sbin/{tool}-legacy"], check=True, capture_output=True)
        # the guest's own namespace, with an eth0 for ifupdown to configure
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "add", ns + "-peer"], check=True)
        subprocess.run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", "eth0p",
                        "netns", ns + "-peer"], check=True)
        if peer:
            stop_peer = peer(ns + "-peer")
        if capture:
            subprocess.run(["ip", "-n", ns + "-peer", "link", "set", "eth0p", "up"], check=True)
            tcpdump = subprocess.Popen(["ip", "netns", "exec", ns + "-peer", "tcpdump", "-Z", "root", "--immediate-mode",
                                        "-U", "-w", str(capture), "-i", "eth0p", "-Q", "in"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # listening before the guest's link comes up
        cgroups = own_cgroups(ns)
        console = subprocess.run(
            ["sh", "-c", 'for g in $0; do echo $$ > "$g/cgroup.procs"; done; exec "$@"', " ".join(cgroups),
             "timeout", "180", "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
             f"--network-namespace-path=/run/netns/{ns}", "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
             "--console=read-only", *nspawn, "-D", str(root)],
            capture_output=True, text=True)
        if tcpdump is not None:
            time.sleep(0.3)
            tcpdump.terminate()
            tcpdump.wait(timeout=10)
        results = tmp_path / "results"
        shutil.copytree(root / "root/results", results, dirs_exist_ok=True)
        shutil.rmtree(root / "root/results")  # a next boot of the same machine writes its own
        return results, console.stdout + console.stderr
    finally:
        if stop_peer:
            stop_peer()
        remove_cgroups(ns)
        if tcpdump is not None and tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait()
        umount(root)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        subprocess.run(["ip", "netns", "delete", ns + "-peer"], check=False)


# With --keep-unit and no systemd on the host, nspawn makes the guest's cgroups (payload/...)
# under its own cgroup: two guests booted side by side from one cgroup would share them, and
# one guest's systemd then removes the other's unit cgroups (a start fails 219/CGROUP).
# Each boot gets a cgroup of its own in every hierarchy the host has.
def cgroup_roots() -> list:
    if os.path.exists("/sys/fs/cgroup/cgroup.procs"):  # the unified hierarchy alone
        return ["/sys/fs/cgroup"]
    return [p for p in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified") if os.path.isdir(p)]


def own_cgroups(name) -> list:
    made = [os.path.join(root, name) for root in cgroup_roots()]
    for path in made:
        os.makedirs(path, exist_ok=True)
    return made


def remove_cgroups(name) -> None:
    """The boot's cgroups, deepest first (the guest's systemd left its own below them)."""
    for root in cgroup_roots():
        top = os.path.join(root, name)
        for _ in range(50):
            for where, dirs, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(where)
                except OSError:
                    pass
            if not os.path.exists(top):
                break
            time.sleep(0.1)


def umount(path) -> None:
    """Under load the container's last processes may still hold it for a moment."""
    for _ in range(50):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    subprocess.run(["umount", "--lazy", str(path)], check=False)


def facts(results):
    return dict(line.split("=", 1) for line in (results / "boot").read_text().splitlines())


def test_boot_loads_the_kill_switch_before_the_network(tmp_path, base):
    results, console = boot(tmp_path, base, "configured", CONFIGURED)
    f = facts(results)
    assert f["result"] == "success" and f["active"] == "active", console
    assert 0 < int(f["fw_exit"]) < int(f["netpre"]), f
    assert int(f["fw_exit"]) < int(f["networking_start"]), f
    assert "198.18.0.1/24" in (results / "addr").read_text(), "ifupdown configured eth0 afterwards"
    for name in ("boot-ip.save", "boot-ip6.save"):
        save = (results / name).read_text()
        assert ":OUTPUT DROP" in save and "-A OUTPUT -j VPNFW-OUTPUT" in save
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in (results / "boot-ip.save").read_text()
    assert f["guard_active"] == "active", (results / "journal").read_text()
    assert "guarding the rules in force" in (results / "journal").read_text()


def test_the_second_boot_with_an_unchanged_config_loads_the_cached_compile(tmp_path, base):
    (tmp_path / "first").mkdir()
    results, console = boot(tmp_path / "first", base, "configured", CONFIGURED)
    journal = (results / "journal").read_text()
    assert facts(results)["active"] == "active" and "(cache)" not in journal, journal
    assert (tmp_path / "first/upper/var/lib/vpn-firewall/compiled").exists(), "the unit may write its state directory"
    (tmp_path / "second").mkdir()
    results, console = boot(tmp_path / "second", base, "again", preinstall=False, upper=tmp_path / "first/upper")
    f = facts(results)
    assert f["active"] == "active" and 0 < int(f["fw_exit"]) < int(f["netpre"]), f
    assert "the config is unchanged since it was compiled last (cache)" in (results / "journal").read_text()
    save = (results / "boot-ip.save").read_text()
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in save


def test_boot_with_nftables_enabled_ends_with_the_kill_switch_in_force(tmp_path, base):
    """Debian's /etc/nftables.conf begins with 'flush ruleset': the kill switch loads after it."""
    assert "flush ruleset" in open(os.path.join(base, "etc", "nftables.conf")).read()
    results, console = boot(tmp_path, base, "nftables", CONFIGURED, enable=["nftables.service"])
    f = facts(results)
    assert f["nft_result"] == "success", console
    assert 0 < int(f["nft_exit"]) <= int(f["fw_start"]) < int(f["fw_exit"]) < int(f["netpre"]), f
    for name in ("boot-ip.save", "boot-ip6.save"):
        save = (results / name).read_text()
        assert ":OUTPUT DROP" in save and "-A OUTPUT -j VPNFW-OUTPUT" in save and "-A VPNFW-OUTPUT -j DROP" in save
    assert f["guard_active"] == "active"


def test_boot_with_the_legacy_backend_under_the_hardened_unit(tmp_path, base):
    results, console = boot(tmp_path, base, "legacy", CONFIGURED, legacy=True)
    f = facts(results)
    assert f["result"] == "success" and f["active"] == "active", (results / "journal").read_text()
    save = (results / "boot-ip.save").read_text()
    assert "-A OUTPUT -j VPNFW-OUTPUT" in save
    assert "nf_tables" not in save.splitlines()[0], "the legacy backend's save (no '(nf_tables)')"


def test_broken_config_boots_into_lockdown_with_the_unit_failed(tmp_path, base):
    results, console = boot(tmp_path, base, "broken", BROKEN)
    f = facts(results)
    assert f["result"] == "exit-code" and f["active"] == "failed" and f["exit_status"] == "11", f
    assert 0 < int(f["fw_exit"]) < int(f["networking_start"]), f
    save = (results / "boot-ip.save").read_text()
    assert "vpn-firewall lockdown" in save and ":OUTPUT DROP" in save
    assert f["guard_active"] == "active", "the guard keeps the lockdown in force"
    assert "/etc/vpn-firewall/30_user.conf:1:44: expected an address, got '198.51.100.'" in (results / "journal").read_text()


def test_install_upgrade_remove_purge_in_a_running_system(tmp_path, base):
    results, console = boot(tmp_path, base, "install", preinstall=False)
    f = facts(results)
    assert (results / "done").exists(), console
    # unconfigured install: enabled, not started, and says so
    install_log = (results / "install.log").read_text()
    assert "NOT started" in install_log
    assert "vpn-firewall: \n" not in install_log, "blank lines are blank, not an empty message"
    assert f["install_active"] == "inactive" and f["install_enabled"] == "enabled", f
    assert f["timer_enabled"] == "disabled", "the refresh timer is off by default"
    assert f["watcher_enabled"] == "disabled", "the client-config watcher is off by default"
    assert "VPNFW" not in (results / "install.save").read_text()
    # the guard follows the kill switch: with nothing to guard it ends cleanly, and status's
    # advice is a command that works in this state
    assert f["guard_start_unconfigured"] == "0" and f["guard_unconfigured"] == "inactive success", f
    status = (results / "install-status").read_text()
    assert "guard: not running: nothing of vpn-firewall's is loaded (systemctl start vpn-firewall starts both)" in status
    # configured and restarted: loaded
    assert f["restart_active"] == "active"
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32" in (results / "restart.save").read_text()
    # upgrade (reinstall): still active, rules still there
    assert f["upgrade_active"] == "active"
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32" in (results / "upgrade.save").read_text()
    # remove: opened, with a clear message
    assert "OPEN" in (results / "remove.log").read_text()
    removed = (results / "remove.save").read_text()
    assert "VPNFW" not in removed and ":OUTPUT ACCEPT" in removed
    assert f["guard_after_remove"] != "active", "the guard was stopped before the unload"
    # purge: nothing left in /etc
    assert "No such file" in f["purged_etc"]


def test_autopkgtest_script_passes_in_a_chroot(tmp_path, base):
    """debian/tests/kill-switch, run where the package is installed (a chroot of the base tree)."""
    upper, work, root = (tmp_path / d for d in ("upper", "work", "root"))
    for d in (upper, work, root):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={work}", str(root)], check=True)
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        shutil.copy(DEB, root / "root/vpn-firewall.deb")
        shutil.copy(os.path.join(HERE, "..", "..", "debian", "tests", "kill-switch"), root / "root/kill-switch")
        out = subprocess.run(["chroot", str(root), "dpkg", "-i", "/root/vpn-firewall.deb"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "NOT started" in out.stderr
        out = subprocess.run(["chroot", str(root), "sh", "/root/kill-switch"], capture_output=True, text=True)
        assert out.returncode == 0 and "PASS" in out.stdout, out.stdout + out.stderr
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
        subprocess.run(["umount", str(root)], check=False)
