"""Long server lists: split into chains reached by address range, same verdicts as one list.

Real packets in a namespace of our own: a TCP connect to an accepted address leaves as a
SYN and waits; one the policy refuses gets our tcp-reset at once.
"""

import ipaddress
import random
import sys

import pytest

from conftest import BACKENDS, backend_path, needs_root, rules_of, run_loader, write_config


# the servers: every third address of two /24s (so that neighbours lie inside the ranges),
# v4 and v6, tcp on a port of their own; and a few udp ones
V4 = [f"198.18.{i // 100}.{3 * (i % 80) + 1}" for i in range(160)]
V6 = [f"2001:db8:5::{3 * i + 1:x}" for i in range(120)]
SERVERS = ([f"{a}:{1000 + i % 5}/tcp" for i, a in enumerate(V4)]
           + [f"[{a}]:{1000 + i % 5}/tcp" for i, a in enumerate(V6)]
           + ["198.18.9.9:1194/udp", "[2001:db8:9::9]:1194/udp"])
SHORT = ["198.18.0.1:1000/tcp"]


def config(servers):
    return "@def $VPN_SERVERS = (\n  " + "\n  ".join(servers) + "\n);\n@def $ALLOW_DHCP = no;\n"


# In the namespace: all connects at once, then each one's fate.
PROBE = r"""
import errno, socket, sys, time
socks = []
for target in sys.argv[1:]:
    addr, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((addr, int(port)))
    socks.append((target, s))
time.sleep(0.5)
for target, s in socks:
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    print(target, "sent" if err == 0 else "refused" if err == errno.ECONNREFUSED else errno.errorcode[err])
"""


def fates(ns, targets):
    out = ns.sh(f"{sys.executable} -c '{PROBE}' " + " ".join(targets))
    return dict(line.split() for line in out.stdout.splitlines())


def with_a_way_out(ns):
    """Routes for both families, into a veth whose far end goes nowhere."""
    ns.sh("ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up"
          " && ip addr add 192.0.2.1/24 dev v0 && ip route add default dev v0"
          " && ip -6 addr add 2001:db8:ffff::1/64 dev v0 nodad && ip -6 route add default dev v0")


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_list_is_split_and_passes_exactly_the_servers(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": config(SERVERS)})
    shown = run_loader(["--config-dir", conf, "show"], env=env).stdout
    assert "-A VPNFW-OUTPUT -m iprange --dst-range 198.18.0.1-" in shown
    assert "-A VPNFW-SERVERS-1 -d 198.18.0.1/32 -p tcp -m tcp --dport 1000 -j VPNFW-SERVER-FLOW" in shown
    ns = netns("split")
    with_a_way_out(ns)
    out = run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    servers = [f"{a}:{1000 + i % 5}" for i, a in enumerate(V4)] + [f"[{a}]:{1000 + i % 5}" for i, a in enumerate(V6)]
    others = ([f"198.18.{i // 100}.{3 * (i % 80) + 2}:1000" for i in range(0, 160, 7)]  # between two servers
              + [f"{a}:{1001 + i % 5}" for i, a in enumerate(V4[::9])]  # a server, the wrong port
              + [f"[2001:db8:5::{3 * i + 2:x}]:1000" for i in range(0, 120, 7)]
              + ["198.18.200.1:1000", "[2001:db8:6::1]:1000", "198.18.9.9:1194"])  # outside; udp-only server
    got = fates(ns, [t.replace("[", "").replace("]", "") for t in servers + others])
    assert got and set(got.values()) <= {"sent", "refused"}
    plain = [t.replace("[", "").replace("]", "") for t in servers]
    assert {t for t, fate in got.items() if fate == "sent"} == set(plain)


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
def test_shorter_list_and_unload_leave_no_server_chain(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    long_conf = write_config(tmp_path / "long", {"30_user.conf": config(SERVERS)})
    short_conf = write_config(tmp_path / "short", {"30_user.conf": config(SHORT)})
    ns = netns("shrink")
    save = f"iptables-{backend}-save"
    assert run_loader(["--config-dir", long_conf, "start"], env=env, netns=ns.name).returncode == 0
    assert ":VPNFW-SERVERS-2 - [0:0]" in ns.save(tool=save)
    out = run_loader(["--config-dir", short_conf, "reload"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "VPNFW-SERVERS" not in ns.save(tool=save) and "VPNFW-SERVERS" not in ns.save(tool=f"ip6{save[2:]}")
    assert "-A VPNFW-OUTPUT -d 198.18.0.1/32 -p tcp -m tcp --dport 1000 -j VPNFW-SERVER-FLOW" in rules_of(ns.save(tool=save))
    assert run_loader(["--config-dir", long_conf, "reload"], env=env, netns=ns.name).returncode == 0
    out = run_loader(["unload", "--force"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "VPNFW" not in ns.save(tool=save) and "VPNFW" not in ns.save(tool=f"ip6{save[2:]}")


@needs_root
def test_a_chain_of_ours_too_many_is_a_difference(tmp_path, netns):
    conf = write_config(tmp_path / "conf", {"30_user.conf": config(SERVERS)})
    ns = netns("extra")
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    ns.sh("iptables -N VPNFW-SERVERS-99")
    out = run_loader(["--config-dir", conf, "status"], netns=ns.name)
    assert out.returncode == 1
    assert ("ip: loaded, but not what the config compiles to (filter chain VPNFW-SERVERS-99 should not be "
            "there): the config changed since, or something else changed the rules") in out.stdout
    # and the next reload removes it
    assert run_loader(["--config-dir", conf, "reload"], netns=ns.name).returncode == 0
    assert "VPNFW-SERVERS-99" not in ns.save()


def random_servers(rng, n):
    """Addresses, networks (some holding others, one holding everything) and duplicates."""
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.45:
            out.append(f"198.{18 + rng.randrange(2)}.{rng.randrange(256)}.{rng.randrange(256)}:{rng.choice([443, 1194])}")
        elif kind < 0.85:
            out.append(f"[2001:db8:{rng.randrange(4):x}::{rng.randrange(1 << 16):x}]:1194/udp")
        elif kind < 0.95:
            out.append(f"198.18.{rng.randrange(256)}.0/{rng.choice([20, 24, 28])}")
        else:
            out.append(rng.choice(["0.0.0.0/0", "2001:db8::/32", "198.18.0.0/15"]))
    return out + out[: n // 10]


def server_lines(config_dir, split):
    """family -> the restore lines printed, with the list split at `split` server rules."""
    from vpnfw import policy
    from vpnfw.pipeline import compile_config
    from vpnfw.render import restore_input

    saved = policy.SERVER_LIST_SPLIT
    policy.SERVER_LIST_SPLIT = split
    try:
        ruleset = compile_config(config_dir).ruleset
    finally:
        policy.SERVER_LIST_SPLIT = saved
    return {family: restore_input(rules, {}).splitlines() for family, rules in ruleset.items()}


@pytest.mark.parametrize("seed, n", [(1, 100), (2, 300), (3, 2000), (4, 6000)])
def test_the_tree_holds_every_server_under_ranges_that_cover_it(tmp_path, seed, n):
    """Whatever the list (networks holding others, one holding everything, duplicates): each
    server rule of the flat list once, inside every range on its way down; no chain longer
    than 16 jumps or 32 servers; chain names iptables accepts."""
    from vpnfw import policy

    conf = write_config(tmp_path / "c", {"30_user.conf": config(random_servers(random.Random(seed), n))})
    flat, tree = server_lines(conf, 10 ** 9), server_lines(conf, policy.SERVER_LIST_SPLIT)
    for family in ("ip", "ip6"):
        chains = {}
        for line in tree[family]:
            if line.startswith("-A VPNFW-"):
                chains.setdefault(line.split()[1], []).append(line)
        found = []

        def walk(chain, covering):
            jumps = [line for line in chains.get(chain, []) if " -j VPNFW-SERVERS-" in line]
            servers = [line for line in chains.get(chain, []) if line.startswith(f"-A {chain} -d ")]
            if chain != "VPNFW-OUTPUT":
                assert len(jumps) <= 16 and len(servers) <= 32 and not (jumps and servers), chain
                assert len(chain) <= 28 and len(chains[chain]) == len(jumps) + len(servers)
            for line in jumps:
                words = line.split()
                first, last = words[words.index("--dst-range") + 1].split("-")
                walk(words[-1], covering + [(ipaddress.ip_address(first), ipaddress.ip_address(last))])
            for line in servers:
                net = ipaddress.ip_network(line.split()[3])
                for first, last in covering:
                    assert first <= net[0] and net[-1] <= last, (line, first, last)
                found.append(line.split(" ", 2)[2])

        walk("VPNFW-OUTPUT", [])
        expected = [line.split(" ", 2)[2] for line in flat[family]
                    if line.startswith("-A VPNFW-OUTPUT -d ") and line.endswith(("-j ACCEPT", "-j VPNFW-SERVER-FLOW"))
                    and " --dport 53 " not in line]
        assert sorted(found) == sorted(expected)
        assert len(expected) > 32  # the case is one the tree is for
