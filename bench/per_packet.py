#!/usr/bin/python3
"""What the kill switch costs every packet: the kernel's CPU time per 64-byte UDP send, in
network namespaces made for it, against the bare stack and against connection tracking alone
(the floor: the kill switch needs conntrack), for packets into the tunnel and for the VPN
client's own packets to a listed server, at 1, 1,000 and 10,000 mixed IPv4/IPv6 servers, on
both iptables backends. Nothing leaves a namespace: the "LAN" is a veth whose peer is down,
the "tunnel" another such veth named tun0 (the kill switch tells the tunnel by its name).

    per_packet.py [TURNS]     prints a table and the ratios; JSON on the last line
    (make bench runs it too; BENCH_PACKET_ROTATIONS sets the turns, 100 by default)

One C process (send_probe.c, built here with cc) holds a connected socket in every bed's
namespace and sends 2,000 datagrams through each in turn, a hundred times round, timing each
turn by the thread's CPU clock: nearly all of it is the kernel's (the loop's own work is a
few nanoseconds), exactly counted (getrusage's system time is sampled at the tick, 250 Hz
here), and every variant's turn is milliseconds from its floor's, so that the machine's
swings fall on both. Each ratio is the median of the turns' own ratios, with its 95 %
interval; the goal counts as met only when the whole interval is within it.
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
BLOCK = 2000  # sends per turn: a few milliseconds
ROTATIONS = int(os.environ.get("BENCH_PACKET_ROTATIONS", "100"))
GOAL = 1.2  # the kill switch's cost over connection tracking alone (issue 21)
TUNNEL = {"ip": ("203.0.113.9", 9), "ip6": ("2001:db8:cafe::9", 9)}

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

    def delete(self):
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def _address_key(addr):
    import ipaddress

    return int(ipaddress.ip_address(addr))


def main():
    rotations = int(sys.argv[1]) if len(sys.argv) > 1 else ROTATIONS
    print(json.dumps(measure(rotations)))


def build_probe(workdir) -> str:
    """The sender, compiled for this machine (a C loop: the time measured is the kernel's)."""
    binary = os.path.join(workdir, "send_probe")
    sh(["cc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, "send_probe.c")])
    return binary


def measure(rotations=None, block=BLOCK) -> dict:
    """Prints the table; returns ns per send, the ratios with their intervals, and whether the
    goal is met."""
    rotations = rotations or ROTATIONS
    workdir = tempfile.mkdtemp(prefix="vpnfw-per-packet-")
    os.chmod(workdir, 0o755)
    beds = []
    try:
        probe = build_probe(workdir)
        beds.append(("-", "none", Bed(workdir, None, "none")))
        for backend in ("nft", "legacy"):
            beds.append((backend, "conntrack alone", Bed(workdir, backend, "conntrack")))
            # the same rules again: what the probe tells apart (its ratio should be 1.00)
            beds.append((backend, "control: conntrack again", Bed(workdir, backend, "conntrack")))
            for n in SIZES:
                beds.append((backend, f"kill switch, {n} servers", Bed(workdir, backend, "kill switch", n)))
        specs = []
        for i, (_, _, bed) in enumerate(beds):
            for dest in bed.destinations():
                name, addr, port = dest.split(",")
                specs.append(f"{i}:{name},{bed.name},{addr},{port}")
        # one process, every socket in its own bed's namespace, the beds taken in turn
        got = json.loads(sh([probe, str(block), str(rotations), *specs]))
        samples = {(b, r): {} for b, r, _ in beds}
        for label, series in got.items():
            i, name = label.split(":", 1)
            backend, rules, _ = beds[int(i)]
            samples[(backend, rules)][name] = series
        return report(samples, rotations, block)
    finally:
        for _, _, bed in beds:
            bed.delete()
        shutil.rmtree(workdir, ignore_errors=True)


def median_interval(values) -> tuple:
    """The median and its 95 % interval from the order statistics (no assumption of a shape)."""
    ordered, n = sorted(values), len(values)
    half = 1.96 * n ** 0.5 / 2
    low, high = max(0, int(n / 2 - half)), min(n - 1, int(n / 2 + half + 0.5))
    return statistics.median(ordered), ordered[low], ordered[high]


def report(samples, rotations, block):
    columns = ["tunnel ip", "tunnel ip6", "server ip", "server ip6"]
    med = {key: {c: statistics.median(v) for c, v in got.items()} for key, got in samples.items()}
    print(f"per packet: kernel CPU ns per 64-byte UDP send (median of {rotations} turns of {block:,} "
          f"sends each), and the ratio to connection tracking alone (the median of the turns' own "
          f"ratios, its 95 % interval in brackets)")
    print(f"{'backend':8} {'rules':27}" + "".join(f"{c:>24}" for c in columns))
    verdicts, results, intervals, controls = [], {}, {}, {}
    for (backend, rules), got in med.items():
        floor = samples.get((backend, "conntrack alone"))
        cells = []
        for c in columns:
            if c not in got:
                cells.append(f"{'-':>24}")
                continue
            text = f"{got[c]:.0f}"
            if floor and rules.startswith(("kill switch", "control")) and c in floor:
                # each turn against the floor's turn just before it: the machine's swings fall on both
                ratios = [k / f for k, f in zip(samples[(backend, rules)][c], floor[c])]
                ratio, low, high = median_interval(ratios)
                text += f" {ratio:.2f}x [{low:.2f}-{high:.2f}]"
                if rules.startswith("control"):
                    controls[f"{backend} {c}"] = round(ratio, 3)
                else:
                    verdicts.append(high <= GOAL)
                    results[f"{backend} {rules} {c}"] = round(ratio, 3)
                    intervals[f"{backend} {rules} {c}"] = [round(low, 3), round(high, 3)]
            cells.append(f"{text:>24}")
        print(f"{backend:8} {rules:27}" + "".join(cells))
    met = all(verdicts)
    worst = max(results.values())
    worst_high = max(high for _, high in intervals.values())
    print(f"goal: the kill switch within {GOAL}x of connection tracking alone, both directions, every size, "
          f"both backends, the whole interval below it: {'met' if met else 'NOT met'} "
          f"(worst median {worst:.2f}x, worst interval's top {worst_high:.2f}x)")
    print(f"control: the same rules in two beds differ by {max(abs(r - 1) for r in controls.values()):.1%} "
          f"at most (what the probe can tell apart)")
    return {"ns": {f"{b} {r}": v for (b, r), v in med.items()}, "ratios": results,
            "intervals": intervals, "controls": controls, "met": met, "worst": worst}


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("per_packet.py needs root (network namespaces)")
    main()
