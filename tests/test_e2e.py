"""The leak matrix with a real OpenVPN: every case, both iptables backends, with vpn-firewall
and without it (the negative control), counting the frames that leave the client."""

import os
import shutil
import sys

import pytest

from conftest import BACKENDS, leak_matrix_row, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import cases as C  # noqa: E402

pytestmark = [needs_root, pytest.mark.skipif(not shutil.which("openvpn"), reason="needs openvpn")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(C.CASES))
def test_leak_matrix(pki, case, backend):
    workdir, certs = pki
    leaked, obs, expected = C.run_case(case, workdir, certs, backend, firewall=True)
    leaked_without, obs_without, _ = C.run_case(case, workdir, certs, backend, firewall=False)
    control = case in C.NO_LEAK_EXPECTED_WITHOUT or len(leaked_without) > 0
    ok = not leaked and C.matches(obs, expected) and control
    leak_matrix_row(case, backend, len(leaked), len(leaked_without), "PASS" if ok else "FAIL")
    assert not leaked, f"frames leaked with vpn-firewall: {leaked[:10]}"
    assert C.matches(obs, expected), f"observed {obs}, expected {expected}"
    assert control, f"negative control: without vpn-firewall this case must leak, observed {obs_without}"
