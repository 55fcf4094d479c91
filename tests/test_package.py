"""The built package: lintian clean, the files where Debian expects them, a unit systemd accepts."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

DEB = os.environ.get("VPN_FIREWALL_DEB")
pytestmark = pytest.mark.skipif(not DEB, reason="set VPN_FIREWALL_DEB to a built .deb (make test does)")


def test_lintian_has_no_errors_or_warnings():
    out = subprocess.run(["lintian", "--fail-on", "error,warning", DEB], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not re.search(r"^[EW]: ", out.stdout, re.M), out.stdout


def test_contents_and_conffiles(tmp_path):
    listing = subprocess.run(["dpkg-deb", "-c", DEB], capture_output=True, text=True, check=True).stdout
    for path in ("./usr/lib/vpn-firewall/vpn-firewall", "./usr/lib/vpn-firewall/vpnfw/cli.py",
                 "./etc/vpn-firewall/10_default.conf", "./etc/vpn-firewall/30_user.conf",
                 "./lib/systemd/system/vpn-firewall.service", "./usr/share/man/man8/vpn-firewall.8.gz",
                 "./usr/share/man/man5/vpn-firewall.conf.5.gz",
                 "./usr/share/bash-completion/completions/vpn-firewall",
                 "./usr/sbin/vpn-firewall -> ../lib/vpn-firewall/vpn-firewall"):
        assert path in listing
    subprocess.run(["dpkg-deb", "-e", DEB, str(tmp_path / "ctl")], check=True)
    assert (tmp_path / "ctl/conffiles").read_text().split() == [
        "/etc/vpn-firewall/10_default.conf", "/etc/vpn-firewall/30_user.conf"]
    postinst = (tmp_path / "ctl/postinst").read_text()
    assert "py3compile -p vpn-firewall /usr/lib/vpn-firewall" in postinst
    depends = subprocess.run(["dpkg-deb", "-f", DEB, "Depends"], capture_output=True, text=True).stdout
    names = [d.strip().split(":")[0].split()[0] for d in depends.split(",")]
    assert names.count("python3") == 1 and "iptables" in names, depends
    assert re.search(r"^\./usr/share/doc/vpn-firewall/README\.md(\.gz)?$", listing.replace(" ", "\n"), re.M) or \
        "./usr/share/doc/vpn-firewall/README.md" in listing, "the README is shipped"
    # nothing stops the kill switch, the guard, the timer or the path unit on upgrade
    assert not (tmp_path / "ctl/preinst").exists() or "stop" not in (tmp_path / "ctl/preinst").read_text()
    assert "deb-systemd-invoke stop" not in (tmp_path / "ctl/prerm").read_text().split('if [ "$1" = "remove" ]')[0]


def test_bash_completion_offers_only_the_users_commands():
    text = open(os.path.join(ROOT, "usr/share/bash-completion/completions/vpn-firewall")).read()
    words = re.search(r"compgen -W '(start [^']*)'", text).group(1).split()
    assert words == ["start", "reload", "refresh", "check", "show", "status", "leak-test", "portal", "unload"]


def test_the_installed_version_is_the_changelogs(tmp_path):
    subprocess.run(["dpkg-deb", "-x", DEB, str(tmp_path / "tree")], check=True)
    version = subprocess.run(["dpkg-deb", "-f", DEB, "Version"], capture_output=True, text=True).stdout.strip()
    out = subprocess.run(["python3", str(tmp_path / "tree/usr/lib/vpn-firewall/vpn-firewall"), "--version"],
                         capture_output=True, text=True)
    assert out.stdout == f"vpn-firewall {version}\n", out.stdout


@pytest.mark.skipif(not shutil.which("dpkg-buildpackage"), reason="needs dpkg-dev")
def test_make_deb_builds_from_a_tree_without_git(tmp_path):
    """A release tarball, as Debian builds from: no .git."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    tree = tmp_path / "vpn-firewall"
    for name in files.stdout.split("\0"):
        if name and os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(tree / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), tree / name)
    out = subprocess.run(["make", "deb"], cwd=tree, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tree / "vpn-firewall.deb").exists()


def test_version_is_the_changelog_version():
    from vpnfw import VERSION
    version = subprocess.run(["dpkg-parsechangelog", "-S", "Version", "-l", os.path.join(ROOT, "debian/changelog")],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert VERSION == version
    assert os.path.basename(DEB) == f"vpn-firewall_{version}_all.deb"
    assert os.path.exists(os.path.join(os.path.dirname(DEB), "vpn-firewall.deb"))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_unit_verifies_and_is_ordered_for_boot(tmp_path):
    subprocess.run(["dpkg-deb", "-x", DEB, str(tmp_path / "tree")], check=True)
    units = tmp_path / "tree/lib/systemd/system"
    for name in os.listdir("/lib/systemd/system"):  # the targets the timer's defaults name
        if name.endswith((".target", ".slice")) and not (units / name).exists():
            shutil.copy(os.path.join("/lib/systemd/system", name), units / name, follow_symlinks=True)
    out = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path / 'tree'}", "--man=no",
                          "/lib/systemd/system/vpn-firewall.service", "/lib/systemd/system/vpn-firewall-refresh.service",
                          "/lib/systemd/system/vpn-firewall-refresh.timer",
                          "/lib/systemd/system/vpn-firewall-client-configs.path",
                          "/lib/systemd/system/vpn-firewall-client-configs.service",
                          "/lib/systemd/system/vpn-firewall-guard.service"], capture_output=True, text=True)
    assert out.returncode == 0 and "cycle" not in out.stderr.lower(), out.stderr
    assert out.stderr.strip() == "", out.stderr
    unit = (tmp_path / "tree/lib/systemd/system/vpn-firewall.service").read_text()
    for line in ("DefaultDependencies=no", "Before=network-pre.target", "Wants=network-pre.target",
                 "Conflicts=shutdown.target", "WantedBy=sysinit.target", "Type=oneshot", "RemainAfterExit=yes",
                 "After=systemd-tmpfiles-setup.service"):
        assert line in unit
    assert not [l for l in unit.splitlines() if l.startswith("ExecStop=")]
    assert "ExecStopPost=+/usr/sbin/vpn-firewall ensure-closed" in unit, "outside the sandbox"
    guard = (tmp_path / "tree/lib/systemd/system/vpn-firewall-guard.service").read_text()
    for line in ("After=systemd-tmpfiles-setup.service", "After=vpn-firewall.service", "Before=network-pre.target",
                 "WantedBy=vpn-firewall.service"):
        assert line in guard
    score = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tmp_path / 'tree'}",
                            "vpn-firewall.service"], capture_output=True, text=True).stdout
    level = float(re.search(r"Overall exposure level for vpn-firewall.service: ([\d.]+)", score).group(1))
    assert level <= 3.5, score
