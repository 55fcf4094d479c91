"""`vpn-firewall leak-test` in the test bed, both ways: protected (exit 0) and not (exit 1)."""

import os
import shutil
import re
import sys

import pytest

from conftest import LOADER, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root, pytest.mark.skipif(not shutil.which("openvpn"), reason="needs openvpn")]


def leak_test(bed):
    return bed.in_ns(bed.client, [sys.executable, LOADER, "--config-dir", bed.confdir, "leak-test"], check=False)


@pytest.mark.parametrize("vpn", [True, False], ids=["vpn-up", "vpn-down"])
def test_protected_machine_passes(pki, vpn):
    bed = T.Testbed(pki[0], pki[1], firewall=True)
    try:
        bed.up(vpn=vpn)
        out = leak_test(bed)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "RESULT: nothing can leave outside the tunnel" in out.stdout
        assert "eth0         ip     bound to it              blocked    blocked" in out.stdout
        assert "eth0         ip6    bound to it              blocked    blocked" in out.stdout
        if vpn:
            assert "via tun0 (tunnel)" in out.stdout and "tun0 (unknown)" in out.stdout
            # what went through the tunnel reads as that, not as a leak
            assert re.search(r"\(routed\)\s+ip\s+via tun0 \(tunnel\)\s+tunnel\s+tunnel\n", out.stdout), out.stdout
            assert "LEFT" not in out.stdout
        assert not bed.leaks(), "leak-test itself sent nothing out"
    finally:
        bed.down()


@pytest.mark.parametrize("vpn", [True, False], ids=["vpn-up", "vpn-down"])
def test_unprotected_machine_fails(pki, vpn):
    bed = T.Testbed(pki[0], pki[1], firewall=False)
    try:
        bed.up(vpn=vpn)
        out = leak_test(bed)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "NOT protected" in out.stdout
        assert "eth0         ip     bound to it              LEFT       LEFT" in out.stdout
        assert any(f.dst == "192.0.2.1" for f in bed.leaks()), "the probes really left"
    finally:
        bed.down()
