"""The guard's repair time, on the wire: from another program's flush to the last frame out.

In the e2e test bed (VPN down, the guard running in the client's namespace), a UDP flood
runs across `nft flush ruleset` (iptables-nft) or firewalld's flush (legacy); the figure
is the time from the flush to the last frame the far side captured, per round.
"""

import signal
import subprocess
import sys
import time

import testbed as T

FLUSHES = {
    "nft": ["nft", "flush", "ruleset"],
    "legacy": ["sh", "-c", "for t in iptables-legacy ip6tables-legacy; do $t -F; $t -t security -F; "
                           "$t -P OUTPUT ACCEPT; $t -P INPUT ACCEPT; done"],
}


def repair_times(workdir, backend, rounds):
    """[seconds from the flush to the last frame that left] for each round."""
    bed = T.Testbed(workdir, None, backend=backend, gateway=False)
    bed.up(vpn=False)
    try:
        guard = bed.spawn("guard", bed.client, [sys.executable, T.LOADER, "--config-dir", bed.confdir, "guard"],
                          stderr=subprocess.PIPE, text=True)
        while "guarding the rules in force" not in guard.stderr.readline():
            pass
        times = []
        for _ in range(rounds):
            since = bed.frames_so_far()
            flood = bed.spawn("flood", bed.client, [sys.executable, T.PROBE, "flood", T.WEB_V4, "9", "100000", "2.5"],
                              stdout=subprocess.DEVNULL)
            time.sleep(0.3)
            at = time.time()
            bed.in_ns(bed.client, FLUSHES[backend])
            flood.wait(timeout=30)
            leaked = bed.leaks(since=since)
            times.append(max(f.time for f in leaked) - at if leaked else 0.0)
        guard.send_signal(signal.SIGTERM)
        guard.communicate(timeout=10)
        return times
    finally:
        bed.down()
