#!/usr/bin/python3
"""make demo: the seed project's test, made concrete and safe.

In network namespaces only (this machine's own firewall is never touched): a client
connects through a real OpenVPN to an "internet"; we fetch a page through the tunnel,
kill the VPN client, and count what leaves the client on the wire. Then the same
without vpn-firewall.
"""

import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402


def story(workdir, pki, firewall):
    bed = T.Testbed(workdir, pki, firewall=firewall)
    beds.append(bed)
    try:
        bed.up()
        via = bed.fetch(T.WEB_V4)
        connecting = bed.leaks()
        mark = bed.frames_so_far()
        bed.stop("vpn-client", signal.SIGKILL)
        time.sleep(0.3)
        after = bed.fetch(T.WEB_V4)
        time.sleep(2)  # the server's keepalives keep coming: the kernel's answers must not leave
        return via, len(connecting), after, len(bed.leaks(since=mark))
    finally:
        bed.down()


def describe(result):
    if result.startswith("10.8.0."):
        return f"through the tunnel (server saw {result})"
    if result.startswith("198.19.0."):
        return f"LEFT OUTSIDE THE TUNNEL (server saw {result})"
    return f"blocked ({result.replace('error:', '')})"


beds = []


def main():
    if os.geteuid() != 0:
        sys.exit("make demo needs root: it builds network namespaces (this machine's firewall is not touched)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = tempfile.mkdtemp(prefix="vpn-firewall-demo-")
    try:
        print("vpn-firewall demo: a real OpenVPN between two network namespaces; "
              "the host's own firewall is not touched.\n")
        pki = T.PKI(workdir)
        rows = []
        for firewall in (True, False):
            via, connecting, after, leaked = story(workdir, pki, firewall)
            who = "with vpn-firewall" if firewall else "WITHOUT vpn-firewall"
            rows.append((who, "VPN up: fetch a page", describe(via), f"{connecting} frame(s) leaked"))
            rows.append((who, "VPN client killed: fetch again", describe(after), f"{leaked} frame(s) leaked"))
        width = max(len(r[2]) for r in rows)
        for who, step, result, leaks in rows:
            print(f"{who:22} {step:32} {result:{width}}  {leaks}")
        ok = all(r[3].startswith("0 ") for r in rows[:2]) and not rows[3][3].startswith("0 ")
        print("\nframes leaked: what the client sent on its physical link that was neither ARP nor the VPN")
        print("connection itself, counted by tcpdump on the other end of the link.")
        print("\n" + ("OK: with vpn-firewall nothing leaked when the VPN died; without it, traffic leaked."
                      if ok else "UNEXPECTED: see the table above."))
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up")
        return 130
    finally:
        for bed in beds:
            bed.down()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
