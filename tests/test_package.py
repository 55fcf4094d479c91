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
    control = subprocess.run(["dpkg-deb", "-f", DEB, "Depends", "Version"], capture_output=True, text=True).stdout
    assert "python3" in control and "iptables" in control


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
                 "Conflicts=shutdown.target", "WantedBy=sysinit.target", "Type=oneshot", "RemainAfterExit=yes"):
        assert line in unit
    assert not [l for l in unit.splitlines() if l.startswith("ExecStop=")]
    assert "ExecStopPost=/usr/sbin/vpn-firewall ensure-closed" in unit
    score = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tmp_path / 'tree'}",
                            "vpn-firewall.service"], capture_output=True, text=True).stdout
    level = float(re.search(r"Overall exposure level for vpn-firewall.service: ([\d.]+)", score).group(1))
    assert level <= 3.5, score
