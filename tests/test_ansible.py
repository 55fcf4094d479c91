"""contrib/ansible's role with Debian's ansible-core, in a booted Debian 12 (the local
connection): a good drop-in lands and is loaded, a second run changes nothing, a drop-in
that fails `vpn-firewall check` never lands and the rules in force stay."""

import json
import os
import shutil

import pytest

from conftest import needs_root

pytestmark = [needs_root,
              pytest.mark.skipif(not os.environ.get("VPN_FIREWALL_DEB"),
                                 reason="set VPN_FIREWALL_DEB to a built .deb (make test does)"),
              pytest.mark.skipif(not shutil.which("systemd-nspawn"), reason="needs systemd-container")]

ROLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib", "ansible")
GOOD = '@def $VPN_SERVERS = (198.51.100.44:1194/udp);\n'
BAD = '@def $VPN_SERVERS = (198.51.100.45:1194/udp 198.51.100.);\n'


def role_files() -> dict:
    out = {}
    for where, _dirs, names in os.walk(ROLE):
        for name in names:
            path = os.path.join(where, name)
            mode = os.stat(path).st_mode & 0o777
            out["/root/ansible/" + os.path.relpath(path, ROLE)] = (open(path).read(), mode)
    return out


def vars_file(content) -> str:
    return f"vpn_firewall_deb: /root/vpn-firewall.deb\nvpn_firewall_dropins:\n  30_user.conf: {json.dumps(content)}\n"


def test_the_role_lands_good_drop_ins_only_and_a_second_run_changes_nothing(tmp_path, ansible_base):
    from test_boot import boot, facts

    files = role_files()
    files["/root/vars-good.yml"] = vars_file(GOOD)
    files["/root/vars-bad.yml"] = vars_file(BAD)
    (tmp_path / "boot").mkdir()
    results, console = boot(tmp_path / "boot", ansible_base, "ansible", None, files=files)
    f = facts(results)
    logs = {n: (results / f"ansible-{n}.log").read_text() for n in ("first", "again", "bad")}
    assert f["ansible_first"] == "0", logs["first"]
    assert "-d 198.51.100.44/32 -p udp -m udp --dport 1194" in (results / "ansible-good.save").read_text()
    assert f["ansible_again"] == "0" and "changed=0" in logs["again"], logs["again"]
    assert f["ansible_bad"] != "0" and "failed to validate" in logs["bad"], logs["bad"]
    assert "30_user.conf:1:45: expected an address, got '198.51.100.'" in logs["bad"], "check's own error"
    assert "198.51.100.45" not in (results / "conf-after-bad").read_text(), "the bad drop-in never landed"
    assert "198.51.100.44" in (results / "ansible-bad.save").read_text(), "the rules in force stayed"
    assert f["active_after"] == "active", f
