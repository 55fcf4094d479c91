"""Other programs change the firewall: the kill switch holds (issue 11).

In the e2e test bed (tests/e2e/testbed.py), VPN down, a UDP flood from the client and from a
machine behind it (the container or VM), counting the frames that reach the far side. Where
the real tool runs here (nft with Debian's nftables.conf, iptables-restore as
netfilter-persistent calls it) it is used; dockerd and libvirtd cannot run here, so the exact
rules their sources write are applied (see ../shared/notes/other-tools.md):
  Docker 20.10-27.x libnetwork/drivers/bridge/setup_ip_tables.go and iptables.go (bridge lan0)
  libvirt src/network/network_iptables.c (iptablesAddRule with --insert, LIBVIRT_* chains)
Each static case has a negative control: the same change with the fence taken away leaks.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BACKENDS, alone, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = needs_root
NET = "10.99.0.0/24"  # the "container" network behind lan0

DOCKER = [  # per bridge network, in the order the daemon runs them (each -I goes to the top)
    "-N DOCKER", "-N DOCKER-ISOLATION-STAGE-1", "-N DOCKER-ISOLATION-STAGE-2", "-N DOCKER-USER",
    "-A DOCKER-USER -j RETURN",
    "-I FORWARD -o lan0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-I FORWARD -o lan0 -j DOCKER",
    "-I FORWARD -i lan0 ! -o lan0 -j ACCEPT",
    "-I FORWARD -i lan0 -o lan0 -j ACCEPT",
    "-A DOCKER-ISOLATION-STAGE-1 -i lan0 ! -o lan0 -j DOCKER-ISOLATION-STAGE-2",
    "-A DOCKER-ISOLATION-STAGE-1 -j RETURN", "-A DOCKER-ISOLATION-STAGE-2 -o lan0 -j DROP",
    "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
    "-I FORWARD -j DOCKER-ISOLATION-STAGE-1",  # EnsureJumpRule: deleted and put back on top
    "-I FORWARD -j DOCKER-USER",
    f"-t nat -A POSTROUTING -s {NET} ! -o lan0 -j MASQUERADE",
]
LIBVIRT = [
    "-N LIBVIRT_INP", "-N LIBVIRT_OUT", "-N LIBVIRT_FWO", "-N LIBVIRT_FWI", "-N LIBVIRT_FWX",
    "-I INPUT -j LIBVIRT_INP", "-I OUTPUT -j LIBVIRT_OUT",
    "-I FORWARD -j LIBVIRT_FWX", "-I FORWARD -j LIBVIRT_FWI", "-I FORWARD -j LIBVIRT_FWO",
    "-A LIBVIRT_INP -i lan0 -p udp --dport 67 -j ACCEPT", "-A LIBVIRT_OUT -o lan0 -p udp --dport 68 -j ACCEPT",
    f"-A LIBVIRT_FWO -s {NET} -i lan0 -j ACCEPT", "-A LIBVIRT_FWO -i lan0 -j REJECT",
    f"-A LIBVIRT_FWI -d {NET} -o lan0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A LIBVIRT_FWX -i lan0 -o lan0 -j ACCEPT",
    f"-t nat -A POSTROUTING -s {NET} ! -d {NET} -j MASQUERADE",
]
SCRIPT = ["-I OUTPUT 1 -j ACCEPT"]
JUMP_DELETED = ["-D OUTPUT -j VPNFW-OUTPUT", "-P OUTPUT ACCEPT", "-D FORWARD -j VPNFW-FORWARD", "-P FORWARD ACCEPT"]
UFW_DISABLE = ["-P INPUT ACCEPT", "-P OUTPUT ACCEPT", "-P FORWARD ACCEPT"]
# firewalld 1.3 (src/firewall/core/ipXtables.py build_flush_rules, set_policy): one
# iptables-restore -n of -F -X -Z in every table, and the built-in policies ACCEPT
FIREWALLD_FLUSH = "".join(f"*{t}\n-F\n-X\n-Z\n" + (":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                                     if t == "filter" else "") + "COMMIT\n"
                          for t in ("filter", "nat", "mangle", "raw", "security"))
# netfilter-persistent's restore: iptables-restore WITHOUT --noflush of a rules.v4 saved before
RULES_V4 = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
NFTABLES_CONF = "/etc/nftables.conf"  # Debian's, as the nftables package installs it: "flush ruleset" first


def _bed(tmp_path, backend, config=T.BASE_CONFIG, pki=None):
    bed = T.Testbed(str(tmp_path), pki, backend=backend, config=config, gateway=True)
    bed.up(vpn=pki is not None)
    return bed


def apply(bed, commands, family="ip"):
    tool = f"{'iptables' if family == 'ip' else 'ip6tables'}-{bed.backend}"
    for command in commands:
        bed.in_ns(bed.client, [tool, *command.split()])


def flood_leaks(bed, seconds=0.6):
    """Frames that reach the far side while the client and the machine behind it flood."""
    since = bed.frames_so_far()
    floods = [bed.spawn(f"flood-{i}", ns, [sys.executable, T.PROBE, "flood", addr, "9", "100000", str(seconds)],
                        stdout=subprocess.DEVNULL)
              for i, (ns, addr) in enumerate([(bed.client, T.WEB_V4), (bed.client, T.WEB_V6), (bed.lan, T.WEB_V4)])]
    for proc in floods:
        proc.wait(timeout=30)
    return bed.leaks(since=since)


def take_the_fence_away(bed):
    for family in ("ip", "ip6"):
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            apply(bed, [f"-t security -D {chain} -j VPNFW-{chain}"], family)


STATIC = {  # case -> (changes, whether it leaks without the fence)
    "docker": ([(DOCKER, "ip")], True),
    "libvirt": ([(LIBVIRT, "ip")], True),
    "script -I OUTPUT 1 -j ACCEPT": ([(SCRIPT, "ip"), (SCRIPT, "ip6")], True),
    "our jumps deleted, policies ACCEPT": ([(JUMP_DELETED, "ip"), (JUMP_DELETED, "ip6")], True),
    # held before the fence too: our filter chains end in a refusal, whatever the policy
    "ufw disable": ([(UFW_DISABLE, "ip"), (UFW_DISABLE, "ip6")], False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(STATIC))
def test_other_tools_accepts_let_nothing_out(tmp_path, backend, case):
    """No repair needed, no window: the fence drops what another tool accepted first."""
    bed = _bed(tmp_path, backend)
    try:
        changes, leaks_without_fence = STATIC[case]
        for commands, family in changes:
            apply(bed, commands, family)
        leaked = flood_leaks(bed)
        assert leaked == [], f"{case}: {len(leaked)} frames left: {leaked[:5]}"
        take_the_fence_away(bed)  # the negative control: the same change without the fence
        assert bool(flood_leaks(bed)) == leaks_without_fence
    finally:
        bed.down()


@pytest.mark.parametrize("backend", BACKENDS)
def test_netfilter_persistent_restore_lets_nothing_out(tmp_path, backend):
    """Its flushing restore empties filter; the fence, in a table it does not name, holds."""
    bed = _bed(tmp_path, backend)
    try:
        for tool in ("iptables", "ip6tables"):
            bed.in_ns(bed.client, [f"{tool}-{backend}-restore"], stdin=RULES_V4)
        assert flood_leaks(bed) == []
        take_the_fence_away(bed)
        assert flood_leaks(bed), "the probe must leak without the fence"
    finally:
        bed.down()


class Guarded:
    """A guard started in the client namespace, stopped by its PID."""

    def __init__(self, bed):
        self.bed = bed
        self.proc = bed.spawn("guard", bed.client, [sys.executable, T.LOADER, "--config-dir", bed.confdir, "guard"],
                              stderr=subprocess.PIPE, text=True)
        lines = []
        while not lines or "guarding the rules in force" not in lines[-1]:
            lines.append(self.proc.stderr.readline())
            assert lines[-1], "".join(lines)
        self.started = lines[-1]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err
        return err


def _last_leak_after(bed, change, seconds=1.3):
    """(frames left, seconds from the change to the last one) with a flood running across it."""
    since = bed.frames_so_far()
    flood = bed.spawn("flood", bed.client, [sys.executable, T.PROBE, "flood", T.WEB_V4, "9", "100000", str(seconds)],
                      stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    at = time.time()
    change()
    flood.wait(timeout=30)
    leaked = bed.leaks(since=since)
    return leaked, (max(f.time for f in leaked) - at if leaked else 0.0)


def _nft_flush(bed):
    bed.in_ns(bed.client, ["nft", "flush", "ruleset"])


def _firewalld_flush(bed):
    for tool in ("iptables", "ip6tables"):
        bed.in_ns(bed.client, [f"{tool}-{bed.backend}-restore", "-n"], stdin=FIREWALLD_FLUSH)


@pytest.mark.parametrize("backend,change,limit", [
    ("nft", _nft_flush, 0.25),  # the goal is 50 ms (make bench measures it); CI machines are busy
    ("nft", _firewalld_flush, 0.25),
    ("legacy", _firewalld_flush, 0.25),  # the legacy tables' sizes are looked at 40 times a second
])
@alone
def test_guard_repairs_a_flush_on_the_wire(tmp_path, backend, change, limit):
    bed = _bed(tmp_path, backend)
    try:
        guard = Guarded(bed)
        how = "nf_tables commits" if backend == "nft" else "table sizes every 0.025 s, rules every 1 s"
        assert how in guard.started, guard.started
        leaked, late = _last_leak_after(bed, lambda: change(bed))
        assert late <= limit, f"frames left until {late * 1000:.0f} ms after the change: {leaked[-3:]}"
        assert flood_leaks(bed) == []
        log = guard.stop()
        assert "repaired" in log
        assert "VPNFW-OUTPUT" in bed.in_ns(bed.client, [f"iptables-{backend}-save"]).stdout
        # the negative control: the same change without the guard leaks for good
        change(bed)
        assert flood_leaks(bed), "the change must open the machine when nothing repairs it"
    finally:
        bed.down()


@alone
def test_nftables_service_start_is_repaired(tmp_path):
    """nftables.service runs 'nft -f /etc/nftables.conf', which begins with 'flush ruleset'."""
    if not os.path.exists(NFTABLES_CONF):
        pytest.skip("nftables' example configuration is not installed")
    bed = _bed(tmp_path, "nft")
    try:
        guard = Guarded(bed)
        leaked, late = _last_leak_after(bed, lambda: bed.in_ns(bed.client, ["nft", "-f", NFTABLES_CONF]))
        assert late <= 0.25, f"frames left until {late * 1000:.0f} ms after nftables started: {leaked[-3:]}"
        assert "by nft" in guard.stop()
    finally:
        bed.down()


@alone
def test_guard_keeps_closed_and_quiet_under_a_program_that_keeps_flushing(tmp_path):
    bed = _bed(tmp_path, "nft")
    try:
        guard = Guarded(bed)
        stormer = bed.spawn("stormer", bed.client, ["sh", "-c", "for i in $(seq 40); do nft flush ruleset; "
                                                                "sleep 0.05; done"])
        since = bed.frames_so_far()
        start_cpu = _cpu_seconds(guard.proc.pid)
        stormer.wait(timeout=60)
        time.sleep(0.5)
        cpu = _cpu_seconds(guard.proc.pid) - start_cpu
        assert flood_leaks(bed) == []
        log = guard.stop()
        repairs = log.count("repaired in")
        assert repairs <= 12, f"the log is limited (10 a minute, then a count): {repairs} lines"
        assert cpu < 10, "the guard does not spin"
        assert "VPNFW-OUTPUT" in bed.in_ns(bed.client, ["iptables-nft-save"]).stdout
        assert since <= bed.frames_so_far()
    finally:
        bed.down()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_guard_follows_a_reload_and_unload_stops_it(tmp_path):
    bed = _bed(tmp_path, "nft")
    try:
        guard = Guarded(bed)
        bed.write_config(T.BASE_CONFIG + "@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (192.0.2.0/24);\n")
        assert bed.loader("reload").returncode == 0
        _nft_flush(bed)
        time.sleep(0.5)
        assert "-d 192.0.2.0/24 -j ACCEPT" in bed.in_ns(bed.client, ["iptables-save"]).stdout, \
            "the guard puts back the rules of the reload, not the ones it started with"
        out = bed.loader("unload", "--force")
        assert out.returncode == 0 and "guard" in out.stderr
        guard.proc.wait(timeout=10)
        time.sleep(0.3)
        assert "VPNFW" not in bed.in_ns(bed.client, ["iptables-save"]).stdout
    finally:
        bed.down()


@pytest.mark.parametrize("broken", ["ip", "ip6"])
def test_guard_repairs_a_change_to_one_family(tmp_path, broken):
    """nf_tables names the family of each change, and the guard reads back only that one
    (test_pure.py): a change to either family alone is repaired."""
    bed = _bed(tmp_path, "nft")
    try:
        guard = Guarded(bed)
        tool = "iptables" if broken == "ip" else "ip6tables"
        bed.in_ns(bed.client, [tool, "-F", "VPNFW-OUTPUT"])
        deadline = time.time() + 5
        while "-A VPNFW-OUTPUT -j MARK" not in bed.in_ns(bed.client, [f"{tool}-save"]).stdout and time.time() < deadline:
            time.sleep(0.02)
        status = json.loads(bed.loader("status", "--json").stdout)
        assert status["guard"]["recent"][-1]["family"] == broken, status["guard"]
        log = guard.stop()
        assert f"{broken}: rules changed by another program" in log and "repaired" in log, log
        other = "ip6" if broken == "ip" else "ip"
        assert f"{other}: rules changed" not in log
    finally:
        bed.down()


def test_guard_adopts_the_configs_rules_when_nothing_was_recorded(tmp_path):
    """After an upgrade from a version that recorded nothing: the guard takes the config's
    rules, as they are in force, for what to keep, records them, and repairs a flush."""
    bed = _bed(tmp_path, "nft")
    try:
        os.unlink(os.path.join(bed.env["VPN_FIREWALL_RUN_DIR"], "ruleset"))
        guard = Guarded(bed)
        assert os.path.exists(os.path.join(bed.env["VPN_FIREWALL_RUN_DIR"], "ruleset")), "adopted and recorded"
        _nft_flush(bed)
        time.sleep(0.5)
        assert "-A OUTPUT -j VPNFW-OUTPUT" in bed.in_ns(bed.client, ["iptables-save"]).stdout
        assert flood_leaks(bed) == []
        assert "repaired" in guard.stop()
    finally:
        bed.down()


def test_rules_that_cannot_be_recorded_load_all_the_same_and_say_so(tmp_path):
    bed = _bed(tmp_path, "nft")
    try:
        run = bed.env["VPN_FIREWALL_RUN_DIR"]
        shutil.rmtree(run)
        with open(run, "w") as f:  # a file where the directory should be: nothing can be written there
            f.write("in the way\n")
        out = bed.loader("reload")
        assert out.returncode == 0, out.stderr
        assert "cannot record the rules in force for the guard" in out.stderr
        assert "-A OUTPUT -j VPNFW-OUTPUT" in bed.in_ns(bed.client, ["iptables-save"]).stdout
        os.unlink(run)
    finally:
        bed.down()


def test_guard_without_rules_to_guard_exits(tmp_path):
    bed = T.Testbed(str(tmp_path), None, firewall=False)
    try:
        bed.up(vpn=False)
        out = bed.loader("guard")
        assert out.returncode == 0 and "nothing to guard" in out.stderr
    finally:
        bed.down()


def test_status_tells_a_harmless_reordering_from_a_hole_and_shows_the_guard(tmp_path):
    bed = _bed(tmp_path, "nft")
    try:
        out = bed.loader("status")
        assert "guard: NOT running" in out.stdout
        apply(bed, DOCKER)
        out = bed.loader("status")
        assert out.returncode == 0, out.stdout
        assert "ip: loaded, the same as the config compiles to" in out.stdout
        assert "harmless" in out.stdout and "FORWARD has other rules before its jump" in out.stdout
        guard = Guarded(bed)
        apply(bed, ["-t security -F VPNFW-OUTPUT"])  # a real hole: repaired
        time.sleep(0.5)
        out = bed.loader("status")
        assert f"guard: running (pid {guard.proc.pid}, netlink), 1 repair(s)" in out.stdout, out.stdout
        assert "security chain VPNFW-OUTPUT" in out.stdout and "repaired" in out.stdout
        guard.stop()
    finally:
        bed.down()


RECIPE = T.BASE_CONFIG + "@def $GATEWAY_INTERFACES = (lan+);\n@def $GATEWAY_MASQUERADE = no;\n"  # Docker masquerades


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_reach_the_world_only_through_the_tunnel(tmp_path, pki, backend):
    """The recipe of the man page: the bridge as an internal interface ($GATEWAY_INTERFACES, a
    pattern), Docker's rules above ours. VPN up: through the tunnel; VPN killed: nothing out."""
    bed = _bed(tmp_path, backend, config=RECIPE, pki=pki[1])
    try:
        apply(bed, DOCKER)
        seen = bed.probe("http", T.WEB_V4, 80, ns=bed.lan)
        assert seen.startswith("10.8.0."), f"the container's fetch went through the tunnel: {seen}"
        bed.stop("vpn-client", signal.SIGKILL)
        time.sleep(0.3)
        assert bed.probe("http", T.WEB_V4, 80, ns=bed.lan).startswith(("error:", "timeout"))
        assert flood_leaks(bed) == [], "VPN down: nothing of the container's leaves"
    finally:
        bed.down()


@pytest.mark.parametrize("backend", BACKENDS)
def test_containers_on_one_bridge_reach_each_other(tmp_path, netns, backend):
    """Two 'containers' on a bridge docker0 whose frames pass iptables (br_netfilter, as
    Docker turns it on): they reach each other with the recipe, our jump first or Docker's."""
    from conftest import backend_path, run_loader, write_config

    env = {"PATH": backend_path(tmp_path, backend)}
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"
                                                           "@def $GATEWAY_INTERFACES = (docker0 br-+);\n"})
    host, a, b = netns("host"), netns("ca"), netns("cb")
    host.sh("ip link add docker0 type bridge && ip link set docker0 up && sysctl -qw net.bridge.bridge-nf-call-iptables=1")
    for n, ns in enumerate((a, b), 2):
        subprocess.run(["ip", "link", "add", f"veth{n}", "netns", host.name, "type", "veth", "peer", "name", "eth0",
                        "netns", ns.name], check=True)
        host.sh(f"ip link set veth{n} master docker0 && ip link set veth{n} up")
        ns.sh(f"ip addr add 172.17.0.{n}/16 dev eth0 && ip link set eth0 up")
    assert run_loader(["--config-dir", conf, "start"], env=env, netns=host.name).returncode == 0
    serve = subprocess.Popen(["ip", "netns", "exec", b.name, sys.executable, T.PROBE, "serve", "7000", "172.17.0.3"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert serve.stdout.readline().strip() == "ready"
        assert a.sh(f"{sys.executable} {T.PROBE} tcp 172.17.0.3 7000").stdout.strip() == "ok"
        counted = host.sh(f"iptables-{backend}-save -c -t filter").stdout
        assert any("-i docker0 -o docker0 -j ACCEPT" in line and not line.startswith("[0:")
                   for line in counted.splitlines()), "the frames did pass iptables (br_netfilter)"
        # the negative control: without the bridge as an internal interface, nothing passes
        write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"})
        assert run_loader(["--config-dir", conf, "reload"], env=env, netns=host.name).returncode == 0
        assert a.sh(f"{sys.executable} {T.PROBE} tcp 172.17.0.3 7000").stdout.strip() != "ok"
    finally:
        serve.kill()
        serve.wait()
