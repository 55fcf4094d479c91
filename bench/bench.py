#!/usr/bin/python3
"""make bench: what vpn-firewall costs on the boot path, against its limit and its peer.

For configs of 1 to 10,000 VPN endpoints (mixed IPv4/IPv6, udp/tcp), measured pair by pair
in the same run, each load in a network namespace made for it (this machine's firewall is
never touched), median of several runs:
  (a) vpn-firewall start, as a whole process, as at boot with the config unchanged since the
      last start (its verified cache of the compile is used), and (a') with a config that
      changed (compiled anew)
  (b) compile only: vpn-firewall show
  (c) the limit: bare iptables-restore + ip6tables-restore of exactly the text (b) printed
  (d) the peer: ferm compiling an equivalent file (ferm --remote), and ferm loading it
and the tunnel's throughput through a real OpenVPN against connection tracking alone
(throughput.py), the guard's repair time, and the per-packet cost (per_packet.py).
Prints a table and writes build/bench.json. Ratios are the figures: the machine is shared.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADER = os.path.join(ROOT, "usr", "lib", "vpn-firewall", "vpn-firewall")
HARNESS = os.path.join(HERE, "in_fresh_netns.py")
SIZES = [1, 100, 1000, 5000, 10000]
RUNS = int(os.environ.get("BENCH_RUNS", "9"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, HERE)


def endpoints(n):
    """n endpoints from the documentation ranges: even ones IPv4, odd ones IPv6; udp and tcp."""
    out = []
    for i in range(n):
        proto = "udp" if i % 4 < 2 else "tcp"
        port = 1194 + i % 7
        if i % 2 == 0:
            out.append(("ip", f"198.{18 + (i >> 16) % 2}.{(i >> 8) % 256}.{i % 256}", port, proto))
        else:
            out.append(("ip6", f"2001:db8::{i:x}", port, proto))
    return out


def write_configs(workdir, n):
    eps = endpoints(n)
    confdir = os.path.join(workdir, f"conf-{n}")
    os.makedirs(confdir)
    os.chmod(confdir, 0o755)
    items = [f"{a}:{p}/{proto}" if fam == "ip" else f"[{a}]:{p}/{proto}" for fam, a, p, proto in eps]
    path = os.path.join(confdir, "30_user.conf")
    with open(path, "w") as f:
        f.write("@def $VPN_SERVERS = (\n    " + "\n    ".join(items) + "\n);\n")
    os.chmod(path, 0o644)
    # the peer's equivalent: the same endpoint rules, the same policies, in ferm's language
    ferm = os.path.join(workdir, f"ferm-{n}.conf")
    with open(ferm, "w") as f:
        for family in ("ip", "ip6"):
            f.write(f"domain {family} table filter {{\n  chain (INPUT FORWARD OUTPUT) policy DROP;\n")
            f.write("  chain INPUT { interface lo ACCEPT; mod conntrack ctstate (RELATED ESTABLISHED) ACCEPT; }\n")
            f.write("  chain OUTPUT {\n    outerface lo ACCEPT;\n")
            for fam, a, p, proto in eps:
                if fam == family:
                    f.write(f"    daddr {a} proto {proto} dport {p} ACCEPT;\n")
            f.write("    outerface (tun+ wg+) ACCEPT;\n    proto tcp REJECT reject-with tcp-reset;\n    REJECT;\n  }\n}\n")
    return confdir, ferm


def run(argv, **kw):
    out = subprocess.run(argv, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr}")
    return out.stdout


def time_process(argv):
    start = time.perf_counter()
    run(argv)
    return time.perf_counter() - start


def in_fresh_netns(*args):
    return json.loads(run(["unshare", "-n", sys.executable, HARNESS, *args]))


def measure(workdir, n):
    confdir, ferm = write_configs(workdir, n)
    shown = run([sys.executable, LOADER, "--config-dir", confdir, "show"])
    parts = shown.split("# ip6: ip6tables-restore --noflush\n")
    v4, v6 = os.path.join(workdir, f"v4-{n}"), os.path.join(workdir, f"v6-{n}")
    with open(v4, "w") as f:
        f.write(parts[0])
    with open(v6, "w") as f:
        f.write(parts[1])
    samples = {k: [] for k in ("a", "a_cold", "b", "c", "d_compile", "d_load")}
    rss = []
    warm = os.path.join(workdir, f"state-{n}")
    in_fresh_netns("start", LOADER, confdir, warm)  # the start before: it leaves the cache
    for k in range(RUNS):  # interleaved, so that noise falls on every column alike
        a = in_fresh_netns("start", LOADER, confdir, warm)
        samples["a"].append(a["seconds"])
        rss.append(a["maxrss_kb"])
        cold = in_fresh_netns("start", LOADER, confdir, os.path.join(workdir, f"state-{n}-cold-{k}"))
        samples["a_cold"].append(cold["seconds"])
        rss.append(cold["maxrss_kb"])
        samples["c"].append(in_fresh_netns("restore", v4, v6)["seconds"])
        samples["b"].append(time_process([LOADER, "--config-dir", confdir, "show"]))
        samples["d_compile"].append(time_process(["ferm", "--remote", ferm]))
        samples["d_load"].append(in_fresh_netns("ferm", ferm)["seconds"])
    med = {k: statistics.median(v) for k, v in samples.items()}
    med["rules"] = shown.count("\n-A ")
    med["peak_rss_kb"] = max(rss)
    return med


def fit(xs, ys):
    """Least squares y = c0 + c1 x + c2 x^2 (normal equations, 3x3)."""
    s = [sum(x ** k for x in xs) for k in range(5)]
    t = [sum(y * x ** k for x, y in zip(xs, ys)) for k in range(3)]
    m = [[s[i + j] for j in range(3)] + [t[i]] for i in range(3)]
    for i in range(3):
        p = max(range(i, 3), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        for r in range(3):
            if r != i:
                f = m[r][i] / m[i][i]
                m[r] = [a - f * b for a, b in zip(m[r], m[i])]
    return [m[i][3] / m[i][i] for i in range(3)]


# What every stateful firewall costs: connection tracking on, nothing filtered.
def interpreter_and_read_back():
    """The floor of any python3 loader that reads its rules back: the interpreter's start
    and one iptables-save, each in a fresh namespace, median."""
    python = [time_process(["unshare", "-n", sys.executable, "-IS", "-c", "pass"]) for _ in range(RUNS)]
    unshare = [time_process(["unshare", "-n", "true"]) for _ in range(RUNS)]
    save = [in_fresh_netns("save")["seconds"] for _ in range(RUNS)]
    return max(0.0, statistics.median(python) - statistics.median(unshare)), statistics.median(save)


def main():
    if os.geteuid() != 0:
        sys.exit("make bench needs root: every load happens in a network namespace of its own")
    workdir = tempfile.mkdtemp(prefix="vpn-firewall-bench-")
    rows = {}
    print(f"{'endpoints':>9} {'rules':>6} {'(a) start':>10} {'(c) restore':>12} {'a/c':>5} {'(a′) changed':>13} "
          f"{'a′/c':>5} {'(b) compile':>12} {'(d) ferm -r':>12} {'b/d':>5} {'ferm load':>10} {'peak RSS':>9}")
    for n in SIZES:
        m = measure(workdir, n)
        rows[n] = m
        print(f"{n:>9} {m['rules']:>6} {m['a'] * 1000:>8.1f}ms {m['c'] * 1000:>10.1f}ms {m['a'] / m['c']:>5.2f} "
              f"{m['a_cold'] * 1000:>11.1f}ms {m['a_cold'] / m['c']:>5.2f} {m['b'] * 1000:>10.1f}ms {m['d_compile'] * 1000:>10.1f}ms {m['b'] / m['d_compile']:>5.2f} "
              f"{m['d_load'] * 1000:>8.1f}ms {m['peak_rss_kb'] / 1024:>7.1f}MB", flush=True)
    top = SIZES[-1]
    c0, c1, c2 = fit(SIZES, [rows[n]["a"] for n in SIZES])
    quad_share = c2 * top ** 2 / rows[top]["a"]
    print(f"\nfit of (a): {c0 * 1000:.1f} ms + {c1 * 1e6:.1f} us/endpoint + {c2 * 1e9:.4f} ns/endpoint^2; "
          f"the quadratic term is {quad_share:+.1%} of (a) at {top} endpoints")
    k0, k1, k2 = fit(SIZES, [rows[n]["c"] for n in SIZES])
    kernel_share = k2 * top ** 2 / rows[top]["c"]
    print(f"fit of (c), the kernel's own load: the quadratic term is {kernel_share:+.1%} of (c) at {top}")
    o0, o1, o2 = fit(SIZES, [rows[n]["a"] - rows[n]["c"] for n in SIZES])
    ours = rows[top]["a"] - rows[top]["c"]
    own_share = o2 * top ** 2 / ours
    print(f"fit of (a)-(c), vpn-firewall's own cost: {o0 * 1000:.1f} ms + {o1 * 1e6:.1f} us/endpoint; "
          f"quadratic term {own_share:+.1%} of it at {top} (a difference of noisy medians: a hint only)")
    python_start, read_back = interpreter_and_read_back()
    floor = {n: (rows[n]["c"] + python_start + read_back) / rows[n]["c"] for n in (1, 5000)}
    print(f"floor of (a)/(c) for any python3 loader that reads its rules back (interpreter start "
          f"{python_start * 1000:.1f} ms + one iptables-save {read_back * 1000:.1f} ms): "
          f"{floor[1]:.2f} at 1 endpoint, {floor[5000]:.2f} at 5,000")
    from throughput import BUDGET, measure as throughput

    print()
    tp = throughput(BUDGET)
    from guard_repair import repair_times

    repair = {backend: repair_times(workdir, backend, 7) for backend in ("nft", "legacy")}
    for backend, times in repair.items():
        print(f"guard, {backend}: last frame out after the flush: median {statistics.median(times) * 1000:.0f} ms, "
              f"worst {max(times) * 1000:.0f} ms ({len(times)} rounds)")
    from per_packet import measure as per_packet

    print()
    packets = per_packet()
    goals = {
        "(a)/(c) <= 1.25 at 1 endpoint": rows[1]["a"] / rows[1]["c"] <= 1.25,
        "(a)/(c) <= 1.25 at 5,000 endpoints": rows[5000]["a"] / rows[5000]["c"] <= 1.25,
        "(b)/(d) <= 1.0 at 5,000 endpoints": rows[5000]["b"] / rows[5000]["d_compile"] <= 1.0,
        "10,000 endpoints start in under 0.5 s": rows[10000]["a"] < 0.5,
        "10,000 endpoints start in under 0.5 s with a changed config": rows[10000]["a_cold"] < 0.5,
        "tunnel throughput >= 98% of connection tracking alone at 1 and 5,000 servers, "
        "95% interval within ±1%": tp["all_met"],
        "(a) not superlinear (quadratic term under +10% at 10,000)": quad_share < 0.10,
        "guard: no frame later than 50 ms after 'nft flush ruleset' (worst round)": max(repair["nft"]) <= 0.05,
        "guard: no frame later than 50 ms after a flush with the legacy backend (worst round)":
            max(repair["legacy"]) <= 0.05,
        "per packet: within 1.2x of connection tracking alone, into the tunnel and to a listed server, "
        "1 to 10,000 servers, both backends": packets["met"],
    }
    print()
    for goal, met in goals.items():
        print(f"{'met    ' if met else 'NOT met'}  {goal}")
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    with open(os.path.join(ROOT, "build", "bench.json"), "w") as f:
        json.dump({"runs": RUNS, "sizes": rows, "fit_seconds": [c0, c1, c2], "fit_kernel_seconds": [k0, k1, k2],
                   "fit_own_seconds": [o0, o1, o2], "throughput_mbit": tp,
                   "floor": {"python_start_seconds": python_start, "read_back_seconds": read_back,
                             "a_over_c": floor},
                   "guard_repair_seconds": repair, "per_packet": packets, "goals": goals}, f, indent=2)
    print("\nwritten: build/bench.json")
    subprocess.run(["rm", "-rf", workdir])


if __name__ == "__main__":
    main()
