"""A guard that runs for months: 500 repairs after a warm-up (VPN_FIREWALL_SOAK_REPAIRS for more) in a
network namespace, its memory measured (VmRSS) after a warm-up and at the end, the rules in
sync afterwards. The control plants a leak of 16 KiB per repair in the same guard, to show
the measurement sees one."""

import json
import os
import subprocess
import sys
import time


from conftest import LOADER, needs_root, write_config

pytestmark = [needs_root]
REPAIRS = int(os.environ.get("VPN_FIREWALL_SOAK_REPAIRS", "500"))
# the growth allowed: half a KiB a repair (RSS moves by pages; a steady leak of this size
# or more over 500 repairs shows: 62 pages), and never less than what the control must exceed
KIB_PER_REPAIR = 0.5
WARM_UP = 100

EXAMPLE = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"

# The guard as `vpn-firewall guard` runs it; for the control, with a leak planted in its repair.
RUN_GUARD = """
import sys
sys.path.insert(0, {lib!r})
from vpnfw import cli, guard
if {leak!r}:
    kept, repair = [], guard.Guard._repair
    def leaking(self, *args):
        kept.append(bytearray(16384))
        return repair(self, *args)
    guard.Guard._repair = leaking
sys.exit(cli.main(sys.argv[1:]))
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def soak(tmp_path, netns, repairs: int, leak: bool, warm_up: int = WARM_UP):
    """(RSS after the warm-up, RSS at the end, in KiB; status's exit code at the end)."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    env = dict(os.environ, VPN_FIREWALL_RUN_DIR=str(tmp_path / "run"), VPN_FIREWALL_STATE_DIR=str(tmp_path / "state"),
               VPN_FIREWALL_LOCK=str(tmp_path / "lock"))
    env.pop("JOURNAL_STREAM", None)
    ns = netns("soak")

    def loader(*args):
        return subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf, *args],
                              capture_output=True, text=True, env=env, timeout=60)
    assert loader("start").returncode == 0
    script = RUN_GUARD.format(lib=os.path.dirname(LOADER), leak=leak)
    guard = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", script, "--config-dir", conf,
                              "guard"], env=env, stderr=subprocess.DEVNULL)
    status_file = tmp_path / "run" / "guard.json"
    try:
        seen = {"stamp": None, "repairs": -1}

        def repairs_so_far():  # the file parsed only when it was written again: polling stays cheap
            try:
                stamp = os.stat(status_file).st_mtime_ns, os.stat(status_file).st_ino
                if stamp != seen["stamp"]:
                    seen.update(stamp=stamp, repairs=json.loads(status_file.read_text())["repairs"])
            except (OSError, ValueError):
                return -1
            return seen["repairs"]
        deadline = time.time() + 10
        while repairs_so_far() < 0 and time.time() < deadline:
            time.sleep(0.05)
        # one shell in the namespace flushes our chain, then waits for the repair, again and again
        flusher = subprocess.Popen(["ip", "netns", "exec", ns.name, "sh"], stdin=subprocess.PIPE, text=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = None
        for n in range(repairs + warm_up):
            if n == warm_up:
                before = rss_kib(guard.pid)
            done = repairs_so_far()
            flusher.stdin.write("iptables -F VPNFW-OUTPUT\n")
            flusher.stdin.flush()
            deadline = time.time() + 10
            while repairs_so_far() <= done and time.time() < deadline:
                time.sleep(0.002)
            assert repairs_so_far() > done, f"repair {n} did not come"
        flusher.stdin.close()
        flusher.wait(timeout=30)
        after = rss_kib(guard.pid)
        status = loader("status")
        return before, after, status
    finally:
        guard.terminate()
        guard.wait(timeout=30)


def test_the_guard_repairs_hundreds_of_times_without_growing(tmp_path, netns):
    before, after, status = soak(tmp_path, netns, REPAIRS, leak=False)
    print(f"guard RSS over {REPAIRS} repairs: {before} KiB -> {after} KiB ({after - before:+d} KiB)")
    assert after - before < REPAIRS * KIB_PER_REPAIR, (before, after)
    assert status.returncode == 0 and "ip: loaded, the same as the config compiles to" in status.stdout, status.stdout
    assert f"{REPAIRS + WARM_UP} repair(s)" in status.stdout, status.stdout


def test_control_a_leak_of_16_kib_a_repair_is_seen(tmp_path, netns):
    # 16 KiB a repair needs no long warm-up to show
    before, after, status = soak(tmp_path, netns, 100, leak=True, warm_up=20)
    print(f"guard RSS over 100 repairs, 16 KiB kept each: {before} KiB -> {after} KiB")
    assert after - before > max(REPAIRS * KIB_PER_REPAIR, 1024), "the soak could not tell: the control should grow"
