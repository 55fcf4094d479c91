"""Run inside a network namespace made for this one measurement (unshare -n):
time one step and report the peak memory of what it ran, as JSON.

    in_fresh_netns.py start LOADER CONFDIR STATEDIR   vpn-firewall start, as a whole process, as
                                         at boot: an empty run directory (/run), the state
                                         directory (its cache) as the last start left it
    in_fresh_netns.py restore V4FILE V6FILE  bare iptables-restore + ip6tables-restore
    in_fresh_netns.py ferm FERMFILE          ferm loading an equivalent file
    in_fresh_netns.py save                   one iptables-save (the read-back's floor)
"""

import json
import resource
import subprocess
import sys
import time


def timed(commands):
    start = time.perf_counter()
    for argv, stdin_path in commands:
        stdin = open(stdin_path) if stdin_path else subprocess.DEVNULL
        out = subprocess.run(argv, stdin=stdin, capture_output=True, text=True)
        if stdin_path:
            stdin.close()
        if out.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {out.stderr}")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


if __name__ == "__main__":
    mode = sys.argv[1]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if mode == "start":
        import os
        import tempfile

        loader, confdir, statedir = sys.argv[2], sys.argv[3], sys.argv[4]
        os.environ.update(VPN_FIREWALL_RUN_DIR=tempfile.mkdtemp(prefix="vpnfw-bench-run-"),
                          VPN_FIREWALL_STATE_DIR=statedir)
        os.environ["VPN_FIREWALL_LOCK"] = os.path.join(os.environ["VPN_FIREWALL_RUN_DIR"], "lock")
        result = timed([([loader, "--config-dir", confdir, "start"], None)])  # as the unit runs it
        subprocess.run(["rm", "-rf", os.environ["VPN_FIREWALL_RUN_DIR"]])
    elif mode == "restore":
        result = timed([(["iptables-restore", "--noflush"], sys.argv[2]),
                        (["ip6tables-restore", "--noflush"], sys.argv[3])])
    elif mode == "save":
        result = timed([(["iptables-save"], None)])
    elif mode == "ferm":
        result = timed([(["ferm", sys.argv[2]], None)])
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(result))
