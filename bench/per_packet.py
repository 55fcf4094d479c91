#!/usr/bin/python3
"""What the kill switch costs every packet: the kernel's CPU time per 64-byte UDP send, in
network namespaces made for it, against the bare stack and against connection tracking alone
(the floor: the kill switch needs conntrack), for packets into the tunnel and for the VPN
client's own packets to a listed server, at 1, 1,000 and 10,000 mixed IPv4/IPv6 servers, on
both iptables backends. Nothing leaves a namespace: the "LAN" is a veth whose peer is down,
the "tunnel" another such veth named tun0 (the kill switch tells the tunnel by its name).

    per_packet.py [ROUNDS] [SENDS]     prints a table and the ratios; JSON on the last line
    (make bench runs it too)

Measured as the system time of the sending process around its loop of send() calls (its own
Python work is user time), each figure the median of ROUNDS rounds, the variants interleaved
within each round so that the machine's noise falls on all of them alike.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADER = os.path.join(ROOT, "usr", "lib", "vpn-firewall", "vpn-firewall")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from bench import endpoints  # noqa: E402  the same mixed lists as the start benchmark
from testbed import backend_bin  # noqa: E402  iptables* of one backend, first on PATH

SIZES = [1, 1000, 10000]
GOAL = 1.2  # the kill switch's cost over connection tracking alone (issue 21)
TUNNEL = {"ip": ("203.0.113.9", 9), "ip6": ("2001:db8:cafe::9", 9)}

# Runs inside the namespace: sends to each destination, prints system ns per send for each.
SENDER = r"""
import json, resource, socket, sys
sends, out = int(sys.argv[1]), {}
for spec in sys.argv[2:]:
    name, addr, port = spec.split(",")
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, int(port)))
    data, send = b"x" * 64, s.send
    for _ in range(1000):  # warm: the flow's conntrack entry, caches
        try: send(data)
        except OSError: pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(sends):
        try: send(data)
        except OSError: pass
    out[name] = (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) * 1e9 / sends
    s.close()
print(json.dumps(out))
"""

SETUP = """
ip link set lo up
ip link add v0 type veth peer name v1
ip link set v0 up
ip addr add 192.0.2.1/24 dev v0
ip -6 addr add 2001:db8:ffff::1/64 dev v0 nodad
ip route add default via 192.0.2.254 dev v0 onlink
ip -6 route add default via 2001:db8:ffff::254 dev v0 onlink
ip neigh replace 192.0.2.254 lladdr 02:00:00:00:00:fe dev v0 nud permanent
ip -6 neigh replace 2001:db8:ffff::254 lladdr 02:00:00:00:00:fe dev v0 nud permanent
ip link add tun0 type veth peer name tunp
ip link set tun0 arp off up
ip addr add 10.8.0.2/24 dev tun0
ip -6 addr add 2001:db8:8::2/64 dev tun0 nodad
ip route add 203.0.113.0/24 dev tun0
ip -6 route add 2001:db8:cafe::/48 dev tun0
"""


def sh(argv, **kw):
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")
    return out.stdout


def tools_path(workdir, backend):
    return backend_bin(workdir, backend) + ":" + os.environ["PATH"]


class Bed:
    """One namespace with the cable, the tunnel device and one set of rules."""

    def __init__(self, workdir, backend, rules, servers=0):
        self.name = f"vpnfw-pp-{uuid.uuid4().hex[:8]}"
        self.backend, self.rules, self.servers = backend, rules, servers
        sh(["ip", "netns", "add", self.name])
        self.env = dict(os.environ, PATH=tools_path(workdir, backend) if backend else os.environ["PATH"])
        sh(["ip", "netns", "exec", self.name, "sh", "-ec", SETUP])
        if rules == "conntrack":  # one rule that needs connection tracking, in each family
            for tool in ("iptables", "ip6tables"):
                self.run(tool, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        elif rules == "kill switch":
            conf = os.path.join(workdir, f"conf-{servers}")
            if not os.path.isdir(conf):
                os.makedirs(conf)
                os.chmod(conf, 0o755)
                items = [f"{a}:{p}/{proto}" if fam == "ip" else f"[{a}]:{p}/{proto}"
                         for fam, a, p, proto in endpoints(servers)]
                path = os.path.join(conf, "30_user.conf")
                with open(path, "w") as f:
                    f.write("@def $VPN_SERVERS = (\n    " + "\n    ".join(items) + "\n);\n")
                os.chmod(path, 0o644)
            state = tempfile.mkdtemp(prefix="vpnfw-pp-state-", dir=workdir)
            self.env.update(VPN_FIREWALL_RUN_DIR=os.path.join(state, "run"),
                            VPN_FIREWALL_STATE_DIR=os.path.join(state, "state"),
                            VPN_FIREWALL_LOCK=os.path.join(state, "lock"))
            self.env.pop("JOURNAL_STREAM", None)
            self.run(sys.executable, LOADER, "--config-dir", conf, "start")

    def run(self, *argv):
        return sh(["ip", "netns", "exec", self.name, *argv], env=self.env)

    def destinations(self) -> list:
        """'name,addr,port' for the sender: the tunnel in both families; the last listed
        udp server of each family (the end of the sorted list: the deepest in any tree)."""
        out = [f"tunnel {fam},{addr},{port}" for fam, (addr, port) in TUNNEL.items()]
        # the listed ones (one server: an IPv4 one only); without the kill switch any address does
        listed = endpoints(self.servers if self.rules == "kill switch" else 2)
        for family in ("ip", "ip6"):
            udp = [(a, p) for fam, a, p, proto in listed if fam == family and proto == "udp"]
            if udp:
                addr, port = max(udp, key=lambda ap: _address_key(ap[0]))
                out.append(f"server {family},{addr},{port}")
        return out

    def measure(self, sends) -> dict:
        return json.loads(self.run(sys.executable, "-c", SENDER, str(sends), *self.destinations()))

    def delete(self):
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def _address_key(addr):
    import ipaddress

    return int(ipaddress.ip_address(addr))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("BENCH_PACKET_ROUNDS", "9"))
    sends = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("BENCH_PACKET_SENDS", "100000"))
    print(json.dumps(measure(rounds, sends)))


def measure(rounds, sends) -> dict:
    """Prints the table; returns ns per send, the ratios and whether the goal is met."""
    workdir = tempfile.mkdtemp(prefix="vpnfw-per-packet-")
    os.chmod(workdir, 0o755)
    beds = []
    try:
        beds.append(("-", "none", Bed(workdir, None, "none")))
        for backend in ("nft", "legacy"):
            beds.append((backend, "conntrack alone", Bed(workdir, backend, "conntrack")))
            for n in SIZES:
                beds.append((backend, f"kill switch, {n} servers", Bed(workdir, backend, "kill switch", n)))
        samples = {(b, r): {} for b, r, _ in beds}
        for _ in range(rounds):
            for backend, rules, bed in beds:
                for name, ns in bed.measure(sends).items():
                    samples[(backend, rules)].setdefault(name, []).append(ns)
        return report(samples, rounds, sends)
    finally:
        for _, _, bed in beds:
            bed.delete()
        shutil.rmtree(workdir, ignore_errors=True)


def report(samples, rounds, sends):
    columns = ["tunnel ip", "tunnel ip6", "server ip", "server ip6"]
    med = {key: {c: statistics.median(v) for c, v in got.items()} for key, got in samples.items()}
    print(f"per packet: kernel CPU ns per 64-byte UDP send (median of {rounds} rounds of {sends:,}), "
          f"and the ratio to connection tracking alone (the median of each round's ratio)")
    print(f"{'backend':8} {'rules':28}" + "".join(f"{c:>18}" for c in columns))
    verdicts, results = [], {}
    for (backend, rules), got in med.items():
        floor = med.get((backend, "conntrack alone"))
        cells = []
        for c in columns:
            if c not in got:
                cells.append(f"{'-':>18}")
                continue
            text = f"{got[c]:.0f}"
            if floor and rules.startswith("kill switch") and c in floor:
                # within each round, then the median: the machine's slow swings fall on both
                pairs = zip(samples[(backend, rules)][c], samples[(backend, "conntrack alone")][c])
                ratio = statistics.median(k / f for k, f in pairs)
                text += f" ({ratio:.2f}x)"
                verdicts.append(ratio <= GOAL)
                results[f"{backend} {rules} {c}"] = round(ratio, 3)
            cells.append(f"{text:>18}")
        print(f"{backend:8} {rules:28}" + "".join(cells))
    met = all(verdicts)
    print(f"goal: the kill switch within {GOAL}x of connection tracking alone, both directions, every size, "
          f"both backends: {'met' if met else 'NOT met'} (worst {max(results.values()):.2f}x)")
    return {"ns": {f"{b} {r}": v for (b, r), v in med.items()}, "ratios": results, "met": met,
            "worst": max(results.values())}


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("per_packet.py needs root (network namespaces)")
    main()
