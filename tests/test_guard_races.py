"""Another program's next command landing between the guard's repair and its read-back.

A firewall's reload is several commands (firewalld on the legacy backend: flush, flush the
security table, open the policies, for each family); the guard may repair after the first
and read back after the second. Measured here before the fix: the read-back saw the change
and the guard loaded the lockdown, which blocks the VPN too, until a retry a second later.
Now an opened filter policy is no failure of the repair (it lets nothing out: the fence
decides), and a hole that came after our commit is repaired again at once (three times in a
row at most, then the lockdown as before).

The race is made certain, not waited for: the guard runs with the kernel module's
check_restored wrapped so that the other program's command runs right after our commit, in
the same namespace, on real rules. The control takes the fix out the same way."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BACKENDS, LOADER, backend_path, needs_root, run_loader, write_config

pytestmark = [needs_root]

RUN_GUARD = """
import os, subprocess, sys
sys.path.insert(0, {lib!r})
from vpnfw import cli, differences, guard, kernel
committed, raced = kernel.check_restored, []
def then_the_other_program(restoring):
    out = committed(restoring)
    if not raced:  # once: the first repair's commit
        raced.append(subprocess.run({race!r}, shell=True).returncode)
    return out
kernel.check_restored = then_the_other_program
if {without_fix!r}:
    guard.CHANGED_AGAIN_MAX = 0
    differences.holes = differences.differences
sys.exit(cli.main(sys.argv[1:]))
"""
RACES = {
    "a filter policy opened": "iptables -P OUTPUT ACCEPT",
    "the fence flushed": "iptables -t security -F",
}


def _outcomes(run_dir, timeout=10.0) -> list:
    """The guard's repairs so far, from its status file, once they have settled."""
    deadline, seen = time.time() + timeout, None
    while time.time() < deadline:
        try:
            recent = json.loads((run_dir / "guard.json").read_text())["recent"]
        except (OSError, ValueError, KeyError):
            recent = []
        outcomes = [r["outcome"] for r in recent]
        if outcomes and outcomes == seen and outcomes[-1] != "changed again":
            return outcomes
        seen = outcomes
        time.sleep(0.3)
    return seen or []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("race", list(RACES))
@pytest.mark.parametrize("fixed", [True, False], ids=["vpn-firewall", "without-the-fix"])
def test_a_command_after_the_repair_gives_another_repair_not_the_lockdown(tmp_path, netns, backend, race, fixed):
    ns = netns("race")
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"})
    path = backend_path(tmp_path, backend)
    env = {"PATH": path, "VPN_FIREWALL_RUN_DIR": str(tmp_path / "run"),
           "VPN_FIREWALL_STATE_DIR": str(tmp_path / "state"), "VPN_FIREWALL_LOCK": str(tmp_path / "lock")}
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name).returncode == 0
    script = RUN_GUARD.format(lib=os.path.dirname(LOADER), race=RACES[race], without_fix=not fixed)
    full_env = dict(os.environ, **env)
    full_env.pop("JOURNAL_STREAM", None)
    guard = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", script, "--config-dir", conf,
                              "guard"], env=full_env, stderr=subprocess.PIPE, text=True)
    try:
        while "guarding the rules in force" not in (line := guard.stderr.readline()):
            assert line, "the guard did not start"
        ns.sh(f"PATH={path} iptables -F VPNFW-OUTPUT")  # what the guard repairs first
        outcomes = _outcomes(tmp_path / "run")
        rules = ns.sh(f"PATH={path} iptables-save").stdout
    finally:
        guard.terminate()
        guard.communicate(timeout=30)
    if fixed:
        assert "lockdown" not in outcomes and outcomes[-1] == "repaired", outcomes
        assert "vpn-firewall lockdown" not in rules and "-A OUTPUT -j VPNFW-OUTPUT" in rules, rules
        status = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
        assert "ip: loaded" in status.stdout, status.stdout
    else:
        assert "lockdown" in outcomes, f"control: without the fix the race gives the lockdown: {outcomes}"
