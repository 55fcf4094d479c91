"""Golden outputs: `vpn-firewall show` for whole configs, compared line by line.

After a deliberate change of the rules, regenerate with VPN_FIREWALL_REGEN_GOLDEN=1 and
read the diff before committing it."""

import os

import pytest

from conftest import run_loader

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
CASES = sorted(d for d in os.listdir(GOLDEN) if os.path.isdir(os.path.join(GOLDEN, d)))


@pytest.mark.parametrize("case", CASES)
def test_show_matches_golden(tmp_path, case):
    import shutil
    conf = tmp_path / "conf"
    shutil.copytree(os.path.join(GOLDEN, case), conf)
    os.chmod(conf, 0o755)
    for name in os.listdir(conf):
        os.chmod(conf / name, 0o644)
    out = run_loader(["--config-dir", str(conf), "show"], env={"VPN_FIREWALL_STATE_DIR": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr
    expected_path = os.path.join(GOLDEN, f"{case}.rules")
    if os.environ.get("VPN_FIREWALL_REGEN_GOLDEN"):
        with open(expected_path, "w") as f:
            f.write(out.stdout)
    with open(expected_path) as f:
        assert out.stdout.splitlines() == f.read().splitlines()
