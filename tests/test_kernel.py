"""Loading into a real kernel, in namespaces of our own: iptables-save and real packets."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import BACKENDS, backend_path, needs_root, rules_of, run_loader, write_config

pytestmark = needs_root
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netprobe.py")

EXAMPLE = """\
@def $VPN_SERVERS = (198.51.100.7:1194/udp  203.0.113.9:443/tcp  [2001:db8::7]:1194/udp);
@def $VPN_INTERFACES = (tun+);
@def $ALLOW_LAN = yes;
@def $LAN_NETS = (192.168.1.0/24);
chain OUTPUT outerface eth0 daddr 192.168.1.20 proto tcp dport 631 ACCEPT;
table nat chain POSTROUTING outerface tun+ MASQUERADE;
"""


def shown_rules(config_dir, env):
    """family -> the -A lines `show` prints (what the kernel must hold), each after its *table."""
    out = run_loader(["--config-dir", config_dir, "show"], env=env)
    assert out.returncode == 0, out.stderr
    text, family = {}, None
    for line in out.stdout.splitlines():
        if line.startswith("# ip"):
            family = line.split(":")[0][2:]
            text[family] = []
        elif line.startswith(("-A", "*")):
            text[family].append(line)
    return text


def by_chain(lines):
    """(table, chain) -> its lines in order (iptables-save sorts tables and chains itself)."""
    out, table = {}, None
    for line in lines:
        if line.startswith("*"):
            table = line[1:]
        else:
            out.setdefault((table, line.split()[1]), []).append(line)
    return out


def table_lines(save_text: str, table: str) -> list:
    """The rule lines of one table of an iptables-save text."""
    lines, inside = [], False
    for line in save_text.splitlines():
        if line.startswith("*"):
            inside = line == f"*{table}"
        elif inside and line.startswith("-A"):
            lines.append(line)
    return lines


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_loads_exactly_what_show_prints(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("load")
    out = run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    expected = shown_rules(conf, env)
    for family, tool in (("ip", f"iptables-{backend}-save"), ("ip6", f"ip6tables-{backend}-save")):
        save = ns.save(tool=tool)
        got = [line for line in rules_of(save) if line.startswith(("-A VPNFW-", "*"))]
        assert by_chain(got) == by_chain(expected[family])
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            assert f":{chain} DROP" in save
            for table in ("filter", "security"):
                assert [l for l in table_lines(save, table) if l.startswith(f"-A {chain} ")] == \
                    [f"-A {chain} -j VPNFW-{chain}"]
    assert "-A POSTROUTING -j VPNFW-POSTROUTING" in ns.save(tool=f"iptables-{backend}-save")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reload_keeps_other_tools_rules_and_one_jump(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("others")
    ns.sh(f"iptables-{backend} -N DOCKER-USER && iptables-{backend} -A DOCKER-USER -j RETURN"
          f" && iptables-{backend} -A FORWARD -j DOCKER-USER && iptables-{backend} -A OUTPUT -d 192.0.2.99 -j ACCEPT"
          f" && iptables-{backend} -t nat -A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE")
    for _ in range(3):
        out = run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name)
        assert out.returncode == 0, out.stderr
    lines = table_lines(ns.save(tool=f"iptables-{backend}-save"), "filter")
    assert "-A DOCKER-USER -j RETURN" in lines
    assert "-A OUTPUT -d 192.0.2.99/32 -j ACCEPT" in lines
    assert "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE" in table_lines(ns.save(tool=f"iptables-{backend}-save"), "nat")
    # ours first, once, ahead of the other tool's rules
    assert [l for l in lines if l.startswith("-A FORWARD ")] == ["-A FORWARD -j VPNFW-FORWARD", "-A FORWARD -j DOCKER-USER"]
    assert [l for l in lines if l.startswith("-A OUTPUT ")][0] == "-A OUTPUT -j VPNFW-OUTPUT"
    assert lines.count("-A OUTPUT -j VPNFW-OUTPUT") == 1

    out = run_loader(["unload", "--force"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "NOT protected" in out.stderr
    lines = rules_of(ns.save(tool=f"iptables-{backend}-save"))
    assert not [l for l in lines if "VPNFW" in l]
    assert ":OUTPUT ACCEPT" in " ".join(lines) and ":INPUT ACCEPT" in " ".join(lines)
    assert "-A DOCKER-USER -j RETURN" in lines and "-A OUTPUT -d 192.0.2.99/32 -j ACCEPT" in lines
    assert "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE" in lines


def test_unload_needs_force(tmp_path, netns):
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("force")
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    out = run_loader(["unload"], netns=ns.name)
    assert out.returncode == 1 and "--force" in out.stderr
    assert "VPNFW-OUTPUT" in ns.save()


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_reports_loaded_changed_and_not_loaded(tmp_path, netns, backend):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("status")
    out = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert out.returncode == 3 and "ip: NOT LOADED" in out.stdout
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name).returncode == 0
    out = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"backend: iptables-{backend}" in out.stdout
    assert "ip: loaded, the same as the config compiles to" in out.stdout
    assert "ip6: loaded, the same as the config compiles to" in out.stdout
    ns.sh("ip link add tun7 type veth peer name tun7p")
    # a blocked packet is counted
    ns.sh("ip link add eth9 type veth peer name eth9p && ip addr add 198.18.0.1/24 dev eth9"
          " && ip link set eth9 up && ip link set eth9p up && ip route add default via 198.18.0.2")
    assert ns.sh(f"{sys.executable} {PROBE} tcp 192.0.2.1 80", check=False).stdout.strip() == "refused"
    write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE + "chain OUTPUT daddr 192.0.2.7 DROP;\n"})
    out = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert out.returncode == 1
    assert "ip: loaded, but not what the config compiles to (filter chain VPNFW-OUTPUT differs at rule " in out.stdout
    assert "expected '-A VPNFW-OUTPUT -d 192.0.2.7/32 -j DROP'" in out.stdout
    assert "tun7 (down)" in out.stdout
    assert "ip: blocked packets: INPUT 0, FORWARD 0, OUTPUT 1" in out.stdout


# -- real packets -------------------------------------------------------------------
PACKET_CONFIG = """\
@def $VPN_SERVERS = (198.18.0.2:1194/tcp [2001:db8:1::2]:1194/tcp);
@def $VPN_INTERFACES = (tun+);
"""

# (probe, expected with vpn-firewall loaded); without it every one is "ok".
FLOWS = [
    ("tcp 198.18.0.2 1194", "ok"),               # the VPN server, outside the tunnel
    ("tcp 2001:db8:1::2 1194", "ok"),
    ("tcp 198.18.0.2 80", "refused"),            # anything else there: refused at once
    ("tcp 2001:db8:1::2 80", "refused"),
    ("udp 198.18.0.2 1194", "error:EPERM"),      # the server's port, but the wrong protocol
    ("udp 198.18.0.2 53", "error:EPERM"),        # DNS outside the tunnel: refused at send
    ("tcp 192.0.2.10 80", "ok"),                 # "the internet", through the tunnel
    ("tcp 2001:db8:2::10 80", "ok"),
    ("udp 192.0.2.10 53", "ok"),                 # DNS through the tunnel
    ("tcp 192.0.2.10 80 eth0", "refused"),       # a socket bound to the physical device
    ("tcp 2001:db8:2::10 80 eth0", "refused"),
]


@pytest.fixture
def testbed(netns):
    """client (firewalled) and net (server, "internet" on lo), linked by eth0 and a stand-in tun0."""
    client, net = netns("client"), netns("net")
    subprocess.run(["ip", "link", "add", "eth0", "netns", client.name, "type", "veth", "peer", "name", "peer0",
                    "netns", net.name], check=True)
    subprocess.run(["ip", "link", "add", "tun0", "netns", client.name, "type", "veth", "peer", "name", "tunpeer",
                    "netns", net.name], check=True)
    client.sh("ip addr add 198.18.0.1/24 dev eth0 && ip addr add 2001:db8:1::1/64 dev eth0 nodad"
              " && ip addr add 10.8.0.2/24 dev tun0 && ip addr add 2001:db8:8::2/64 dev tun0 nodad"
              " && ip link set eth0 up && ip link set tun0 up"
              " && ip route add default via 198.18.0.2 && ip -6 route add default via 2001:db8:1::2"
              " && ip route add 192.0.2.0/24 via 10.8.0.1 && ip -6 route add 2001:db8:2::/64 via 2001:db8:8::1")
    net.sh("ip addr add 198.18.0.2/24 dev peer0 && ip addr add 2001:db8:1::2/64 dev peer0 nodad"
           " && ip addr add 10.8.0.1/24 dev tunpeer && ip addr add 2001:db8:8::1/64 dev tunpeer nodad"
           " && ip addr add 192.0.2.10/32 dev lo && ip addr add 2001:db8:2::10/128 dev lo"
           " && ip link set peer0 up && ip link set tunpeer up")
    server = subprocess.Popen(["ip", "netns", "exec", net.name, sys.executable, PROBE, "serve", "80", "1194", "53",
                               "198.18.0.2", "192.0.2.10", "2001:db8:1::2", "2001:db8:2::10"],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    yield client, net
    server.kill()
    server.wait()


def probe(ns, flow):
    return ns.sh(f"{sys.executable} {PROBE} {flow}", check=False).stdout.strip()


@pytest.mark.parametrize("backend", BACKENDS)
def test_packets_pass_or_not_as_the_policy_says(tmp_path, testbed, backend):
    client, net = testbed
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": PACKET_CONFIG})
    without = {flow: probe(client, flow) for flow, _ in FLOWS}
    assert without == {flow: "ok" for flow, _ in FLOWS}, "negative control: the test bed must let everything through"

    out = run_loader(["--config-dir", conf, "start"], env=env, netns=client.name)
    assert out.returncode == 0, out.stderr
    got = {flow: probe(client, flow) for flow, _ in FLOWS}
    assert got == dict(FLOWS)

    # the tunnel goes down: what went through it falls back to eth0, and is stopped there
    client.sh("ip link set tun0 down")
    assert probe(client, "tcp 192.0.2.10 80") in ("refused", "error:ENETUNREACH")
    client.sh("ip route add 192.0.2.0/24 via 198.18.0.2 dev eth0 metric 50")
    assert probe(client, "tcp 192.0.2.10 80") == "refused"
    assert probe(client, "tcp 198.18.0.2 1194") == "ok"


def test_status_json_for_scripts(tmp_path, netns):
    import json
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("json")
    log = tmp_path / "kern.log"
    log.write_text(
        "Nov 25 kernel: [1.0] vpn-firewall blocked out: IN= OUT=eth0 SRC=198.19.0.1 DST=198.18.0.10 LEN=60 "
        "TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=40000 DPT=443 WINDOW=64240 RES=0x00 SYN URGP=0\n"
        "Nov 25 kernel: [2.0] something else\n"
        "Nov 25 kernel: [3.0] vpn-firewall blocked in: IN=eth0 OUT= MAC=x SRC=192.0.2.1 DST=198.19.0.1 LEN=84 "
        "PROTO=ICMP TYPE=8 CODE=0\n")
    env = {"VPN_FIREWALL_KERN_LOG": str(log)}
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    ns.sh("ip link add eth9 type veth peer name eth9p && ip addr add 198.18.0.1/24 dev eth9"
          " && ip link set eth9 up && ip link set eth9p up && ip route add default via 198.18.0.2")
    assert ns.sh(f"{sys.executable} {PROBE} tcp 192.0.2.1 80", check=False).stdout.strip() == "refused"
    out = run_loader(["--config-dir", conf, "status", "--json"], env=env, netns=ns.name)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["families"]["ip"]["state"] == "loaded" and facts["families"]["ip"]["in_sync"] is True
    assert facts["families"]["ip"]["blocked"]["OUTPUT"] == 1
    assert facts["families"]["ip"]["blocked_rules"] == [
        {"chain": "OUTPUT", "rule": "-A VPNFW-OUTPUT -p tcp -j REJECT --reject-with tcp-reset", "packets": 1}]
    assert facts["recent_blocked"] == [
        {"direction": "out", "interface": "eth0", "destination": "198.18.0.10", "protocol": "TCP", "port": 443},
        {"direction": "in", "interface": None, "destination": "198.19.0.1", "protocol": "ICMP", "port": None}]
    human = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name).stdout
    assert "  out  TCP 198.18.0.10:443 via eth0" in human
    assert "-A VPNFW-OUTPUT -p tcp -j REJECT --reject-with tcp-reset" in human
    unreadable = run_loader(["--config-dir", conf, "status"], env={"VPN_FIREWALL_KERN_LOG": str(tmp_path / "nope")},
                            netns=ns.name).stdout
    assert "recently blocked: the kernel log is not readable here" in unreadable


def test_unwritable_lock_file_is_said_and_not_fatal(tmp_path, netns):
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("lock")
    out = run_loader(["--config-dir", conf, "start"], env={"VPN_FIREWALL_LOCK": str(tmp_path / "no" / "lock")},
                     netns=ns.name)
    assert out.returncode == 0
    assert "cannot open the lock file" in out.stderr and "going on without it" in out.stderr


@pytest.mark.parametrize("backend,other", [("nft", "legacy"), ("legacy", "nft")])
def test_rules_of_the_other_backend_are_warned_about(tmp_path, netns, backend, other):
    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("other")
    out = run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name)
    assert out.returncode == 0 and "holds rules too" not in out.stderr
    ns.sh(f"iptables-{other} -A OUTPUT -d 192.0.2.50 -j ACCEPT")
    out = run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name)
    assert out.returncode == 0
    assert f"iptables-{other} holds rules too (ip)" in out.stderr
    status = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert "the other iptables backend holds rules too (ip)" in status.stdout


def test_nat_rules_removed_on_reload_leave_nothing_of_ours_in_nat(tmp_path, netns):
    """Turning gateway mode (or any nat rule) off: our nat chain and its jump go, another
    tool's rule stays."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    ns = netns("natoff")
    ns.sh("iptables -t nat -A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE")
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    assert "-A VPNFW-POSTROUTING -o tun+ -j MASQUERADE" in ns.save("ip")
    write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE.replace("table nat chain POSTROUTING outerface tun+ MASQUERADE;\n", "")})
    out = run_loader(["--config-dir", conf, "reload"], netns=ns.name)
    assert out.returncode == 0, out.stderr
    nat = [line for line in rules_of(ns.sh("iptables-save -t nat").stdout) if line.startswith("-A")]
    assert nat == ["-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE"]
    assert "VPNFW" not in ns.sh("iptables-save -t nat").stdout
    status = run_loader(["--config-dir", conf, "status"], netns=ns.name)
    assert status.returncode == 0 and "ip: loaded, the same as the config compiles to" in status.stdout


@pytest.mark.parametrize("config, says", [
    ("", "$VPN_SERVERS is empty"),
    ("@def $VPN_SERVERS = (vpn.example.org:1194/udp);\n", "have never been resolved; run 'vpn-firewall refresh'"),
])
def test_status_fails_and_says_why_when_no_vpn_server_can_be_reached(tmp_path, netns, config, says):
    """Loaded and in sync, but no VPN client can connect: status says so, with what to do,
    and exits 1; start and reload say it on the terminal; is-configured agrees."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": config + "@def $SERVERS = 192.0.2.1;\n"})
    env = {"VPN_FIREWALL_STATE_DIR": str(tmp_path / "state")}
    ns = netns("noserver")
    out = run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name)
    assert out.returncode == 0 and says in out.stderr, out.stderr
    assert "warning: $SERVERS is defined but never used; did you mean $VPN_SERVERS?" in out.stderr
    out = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert out.returncode == 1, out.stdout
    assert "ip: loaded, the same as the config compiles to" in out.stdout
    assert "config: warning: no VPN server can be reached: " in out.stdout and says in out.stdout, out.stdout
    assert f"30_user.conf:{config.count(chr(10)) + 1}:1: warning: $SERVERS is defined but never used" in out.stdout
    assert run_loader(["--config-dir", conf, "is-configured"], env=env).returncode == 1
    # the control: with a server, the same status exits 0 (the unused variable is only a warning)
    write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    assert run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name).returncode == 0
    out = run_loader(["--config-dir", conf, "status"], env=env, netns=ns.name)
    assert out.returncode == 0 and "no VPN server" not in out.stdout, out.stdout


@pytest.mark.parametrize("command, rounds", [("reload", 2), ("start", 1)])
def test_a_reload_whose_config_changed_while_it_ran_runs_again(tmp_path, netns, command, rounds):
    """The path unit's reload after a VPN client's config changed: a second change made while
    the first reload runs is loaded too (systemd merges a path's trigger into the run). The
    change is made by a stand-in iptables-restore, the first time it is run; start (the
    control) loads once, as at boot."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": EXAMPLE})
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "iptables-restore").write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {tmp_path}/changed ]; then touch {tmp_path}/changed; "
        f"printf 'chain OUTPUT daddr 192.0.2.77 proto tcp dport 25 ACCEPT;\\n' >> {conf}/30_user.conf; fi\n"
        f"exec {shutil.which('iptables-restore')} \"$@\"\n")
    os.chmod(bindir / "iptables-restore", 0o755)
    ns = netns("settle")
    out = run_loader(["--config-dir", conf, command], env={"PATH": f"{bindir}:{os.environ['PATH']}"}, netns=ns.name)
    assert out.returncode == 0, out.stderr
    loaded = "-A VPNFW-OUTPUT -d 192.0.2.77/32 -p tcp -m tcp --dport 25 -j ACCEPT" in ns.save()
    assert loaded == (rounds == 2), ns.save()
    assert out.stderr.count("rules loaded and verified") == rounds, out.stderr
    assert ("the config changed while it was loaded: loading it again" in out.stderr) == (rounds == 2)
