"""Fail closed: a broken config, a failing or lying iptables-restore, a crash: never an open machine."""

import os
import subprocess
import sys


from conftest import LIBDIR, LOADER, needs_root, rules_of, run_loader, write_config

pytestmark = needs_root

GOOD = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"
BROKEN = "@def $VPN_SERVERS = (198.51.100.7:1194/udp\n  198.51.100.);\n"
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netprobe.py")
BROKEN_AT = "30_user.conf:2:3: expected an address, got '198.51.100.'"


def stand_in(tmp_path, name, script):
    """A PATH whose `name` (both families) is the given shell script, the rest the real tools."""
    bindir = tmp_path / "standin"
    bindir.mkdir(exist_ok=True)
    for family in ("iptables", "ip6tables"):
        path = bindir / f"{family}-{name}"
        path.write_text("#!/bin/sh\n" + script.replace("REAL", f"/usr/sbin/{family}-{name}"))
        path.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def assert_lockdown(ns, family="ip"):
    save = ns.save(family)
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        assert f":{chain} DROP" in save, save
    assert "vpn-firewall lockdown" in save, save


def assert_policies_drop(ns, family="ip"):
    save = ns.save(family)
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        assert f":{chain} DROP" in save, save


def probe(ns, flow):
    return ns.sh(f"{sys.executable} {PROBE} {flow}", check=False).stdout.strip()


def test_broken_config_at_first_start_gives_lockdown(tmp_path, netns):
    ns, peer = netns("boot"), netns("peer")
    subprocess.run(["ip", "link", "add", "eth0", "netns", ns.name, "type", "veth", "peer", "name", "eth0p",
                    "netns", peer.name], check=True)
    ns.sh("ip addr add 198.18.0.1/24 dev eth0 && ip link set eth0 up")
    peer.sh("ip addr add 198.18.0.2/24 dev eth0p && ip link set eth0p up")
    servers = [subprocess.Popen(["ip", "netns", "exec", n.name, sys.executable, PROBE, "serve", "80"],
                                stdout=subprocess.PIPE, text=True) for n in (ns, peer)]
    try:
        for server in servers:
            assert server.stdout.readline().strip() == "ready"
        assert probe(ns, "tcp 198.18.0.2 80") == "ok", "negative control"
        conf = write_config(tmp_path / "conf", {"30_user.conf": BROKEN})
        out = run_loader(["--config-dir", conf, "start"], netns=ns.name)
        assert out.returncode == 11, out.stderr
        assert BROKEN_AT in out.stderr
        assert_lockdown(ns, "ip")
        assert_lockdown(ns, "ip6")
        assert probe(ns, "tcp 127.0.0.1 80") == "ok"
        assert probe(ns, "tcp 198.18.0.2 80") == "timeout"
    finally:
        for server in servers:
            server.kill()
            server.wait()
    status = run_loader(["--config-dir", conf, "status"], netns=ns.name)
    assert status.returncode == 1 and "LOCKDOWN" in status.stdout


def test_broken_config_on_reload_keeps_the_old_rules(tmp_path, netns):
    ns = netns("reload")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    before = (rules_of(ns.save("ip")), rules_of(ns.save("ip6")))
    write_config(tmp_path / "conf", {"30_user.conf": BROKEN})
    out = run_loader(["--config-dir", conf, "reload"], netns=ns.name)
    assert out.returncode == 10
    assert BROKEN_AT in out.stderr and "stay in force" in out.stderr
    assert (rules_of(ns.save("ip")), rules_of(ns.save("ip6"))) == before


def test_failing_iptables_restore_at_first_start_drops_by_policy(tmp_path, netns):
    ns = netns("norestore")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    env = stand_in(tmp_path, "restore", "echo 'stand-in: no' >&2; exit 1\n")
    out = run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name)
    assert out.returncode == 11, out.stderr
    assert "stand-in: no" in out.stderr and "LOCKDOWN by policy" in out.stderr
    assert_policies_drop(ns, "ip")
    assert_policies_drop(ns, "ip6")


def test_failing_iptables_restore_on_reload_keeps_the_old_rules(tmp_path, netns):
    ns = netns("norestore2")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    before = rules_of(ns.save("ip"))
    write_config(tmp_path / "conf", {"30_user.conf": GOOD + "chain OUTPUT daddr 192.0.2.1 ACCEPT;\n"})
    env = stand_in(tmp_path, "restore", "cat >/dev/null; echo 'stand-in: no' >&2; exit 4\n")
    out = run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name)
    assert out.returncode == 10 and "stand-in: no" in out.stderr
    assert rules_of(ns.save("ip")) == before


def test_rules_that_cannot_be_read_back_after_loading_give_the_lockdown(tmp_path, netns):
    ns = netns("noreadback")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    write_config(tmp_path / "conf", {"30_user.conf": GOOD + "chain OUTPUT daddr 192.0.2.1 ACCEPT;\n"})
    # on reload, iptables-save answers once (the state before loading), then fails: the
    # restore went through, but nothing can tell what it left, so "the old rules stay" would
    # be a guess
    env = stand_in(tmp_path, "save", f'count={tmp_path}/$(basename "$0").count\n'
                   'n=$(cat "$count" 2>/dev/null || echo 0); echo $((n + 1)) > "$count"\n'
                   '[ "$n" -ge 1 ] && { echo "stand-in: cannot read" >&2; exit 1; }\nexec REAL "$@"\n')
    out = run_loader(["--config-dir", conf, "reload"], env=env, netns=ns.name)
    assert out.returncode == 11, out.stderr
    assert "ip: cannot read the rules back after loading them: iptables-save failed: stand-in: cannot read" in out.stderr
    assert "ip: LOCKDOWN by policy" in out.stderr
    assert_policies_drop(ns, "ip")
    assert_policies_drop(ns, "ip6")


def test_restore_that_loads_something_else_is_caught_and_locked_down(tmp_path, netns):
    ns = netns("liar")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    # drops one of our rules from the real ruleset; the lockdown ruleset passes untouched
    env = stand_in(tmp_path, "restore", "sed '/blocked out/d' | REAL \"$@\"\n")
    out = run_loader(["--config-dir", conf, "start"], env=env, netns=ns.name)
    assert out.returncode == 11, out.stderr
    assert "not what was loaded" in out.stderr and "differs at rule" in out.stderr
    assert_lockdown(ns, "ip")


def test_missing_iptables_says_so_and_exits_6(tmp_path, netns):
    ns = netns("nobin")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    empty = tmp_path / "emptybin"
    empty.mkdir()
    out = run_loader(["--config-dir", conf, "start"], env={"PATH": str(empty)}, netns=ns.name)
    assert out.returncode == 12, out.stderr
    assert "iptables-restore not found" in out.stderr and "COULD NOT CLOSE" in out.stderr


def test_a_crash_while_compiling_leaves_the_lockdown(tmp_path, netns):
    ns = netns("crash")
    code = (f"import os, sys; sys.path.insert(0, {LIBDIR!r})\n"
            "from vpnfw import load\n"
            "def boom(): raise RuntimeError('bug in the compiler')\n"
            "sys.exit(load.apply(boom, lambda level, msg: print(level, msg, file=sys.stderr)))\n")
    out = ns.sh(f"{sys.executable} -c \"{code}\"", check=False)
    assert out.returncode == 11, out.stderr
    assert "internal error: RuntimeError: bug in the compiler" in out.stderr
    assert_lockdown(ns, "ip")


def test_no_ipv6_in_the_kernel_skips_ip6(tmp_path, netns):
    ns = netns("noipv6")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    out = run_loader(["--config-dir", conf, "start"], env={"VPN_FIREWALL_PROC": str(proc)}, netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "IPv6 rules skipped" in out.stderr
    assert "VPNFW-OUTPUT" in ns.save("ip")
    assert "VPNFW" not in ns.save("ip6")


def test_untrusted_config_is_refused_and_nothing_changes(tmp_path, netns):
    ns = netns("perm")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    before = rules_of(ns.save("ip"))
    path = os.path.join(conf, "30_user.conf")
    os.chmod(path, 0o666)
    out = run_loader(["--config-dir", conf, "reload"], netns=ns.name)
    assert out.returncode == 10
    assert f"{path}:1:1: the config file is writable by group or others (mode 0666)" in out.stderr
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)
    out = run_loader(["--config-dir", conf, "reload"], netns=ns.name)
    assert out.returncode == 10 and f"{path}:1:1: the config file is owned by uid 65534, not root" in out.stderr
    os.chown(path, 0, 0)
    os.chmod(conf, 0o777)
    out = run_loader(["--config-dir", conf, "reload"], netns=ns.name)
    assert out.returncode == 10 and "the config directory is writable by group or others" in out.stderr
    assert rules_of(ns.save("ip")) == before


def test_missing_config_dir_at_first_start_gives_lockdown(tmp_path, netns):
    ns = netns("nodir")
    out = run_loader(["--config-dir", str(tmp_path / "nope"), "start"], netns=ns.name)
    assert out.returncode == 11 and "the config directory does not exist" in out.stderr
    assert_lockdown(ns, "ip")


def _closed(ns, family):
    """Our chains (full or lockdown) are loaded and every built-in policy drops."""
    save = ns.save(family)
    return "-A OUTPUT -j VPNFW-OUTPUT" in save and all(f":{c} DROP" in save for c in ("INPUT", "FORWARD", "OUTPUT"))


def _kill_during(ns, conf, delay):
    import time
    env = dict(os.environ)  # this test's own run and state directories (conftest's own_state)
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, LOADER, "--config-dir", conf, "start"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.kill()
    proc.wait()


def test_loader_killed_at_random_points_of_a_restart_never_opens(tmp_path, netns):
    import random
    rng = random.Random(4242)
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    ns = netns("killrestart")
    assert run_loader(["--config-dir", conf, "start"], netns=ns.name).returncode == 0
    for _ in range(15):
        _kill_during(ns, conf, rng.uniform(0, 0.25))
        assert _closed(ns, "ip") and _closed(ns, "ip6")


def test_loader_killed_at_first_start_is_closed_by_ensure_closed(tmp_path, netns):
    import random
    rng = random.Random(2424)
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    outcomes = set()
    for k in range(10):
        ns = netns(f"killboot{k}")
        _kill_during(ns, conf, 0.0 if k == 0 else rng.uniform(0, 0.25))
        outcomes.add(_closed(ns, "ip"))
        # what the unit's ExecStopPost runs after a start that did not succeed
        out = run_loader(["ensure-closed"], env={"SERVICE_RESULT": "signal"}, netns=ns.name)
        assert out.returncode in (0, 11), out.stderr
        assert _closed(ns, "ip") and _closed(ns, "ip6")
        before = rules_of(ns.save("ip"))
        assert run_loader(["ensure-closed"], env={"SERVICE_RESULT": "signal"}, netns=ns.name).returncode == 0
        assert rules_of(ns.save("ip")) == before, "ensure-closed leaves loaded rules alone"
        ns.delete()
    assert False in outcomes, "some kill came before anything was loaded: the case ensure-closed is for"


def test_ensure_closed_after_success_does_nothing(tmp_path, netns):
    ns = netns("success")
    out = run_loader(["ensure-closed"], env={"SERVICE_RESULT": "success"}, netns=ns.name)
    assert out.returncode == 0
    assert "VPNFW" not in ns.save("ip")


def test_journal_gets_lockdown_as_an_error_and_success_as_info(tmp_path, netns):
    ns = netns("journal")
    conf = write_config(tmp_path / "conf", {"30_user.conf": BROKEN})
    out = run_loader(["--config-dir", conf, "start"], env={"JOURNAL_STREAM": "8:1"}, netns=ns.name)
    lines = out.stderr.splitlines()
    assert f"<3>{conf}/{BROKEN_AT}" in lines
    assert "<3>ip: LOCKDOWN loaded: everything but loopback is dropped" in lines
    write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    out = run_loader(["--config-dir", conf, "reload"], env={"JOURNAL_STREAM": "8:1"}, netns=ns.name)
    assert "<6>rules loaded and verified (ip, ip6)" in out.stderr.splitlines()


def test_backend_that_cannot_be_told_does_not_stop_the_load(tmp_path, netns):
    """The backend is told from where iptables-restore points, else from `iptables -V`;
    with wrappers whose names tell nothing and no `iptables` at all, it still loads."""
    ns = netns("nobackend")
    conf = write_config(tmp_path / "conf", {"30_user.conf": GOOD})
    bindir = tmp_path / "wrappers"
    bindir.mkdir()
    for family in ("iptables", "ip6tables"):
        for suffix in ("-save", "-restore"):
            path = bindir / f"{family}{suffix}"
            path.write_text(f"#!/bin/sh\nexec /usr/sbin/{family}{suffix} \"$@\"\n")
            path.chmod(0o755)
    out = run_loader(["--config-dir", conf, "start"], env={"PATH": f"{bindir}:/bin:/usr/bin"}, netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "VPNFW-OUTPUT" in ns.save("ip")


def test_a_crash_while_loading_still_closes(tmp_path, netns):
    """A bug in reading the kernel's rules (here: table_states raising) must not leave the
    machine open: the load fails closed, down to the DROP policies."""
    ns = netns("crash2")
    code = (f"import os, sys; sys.path.insert(0, {LIBDIR!r})\n"
            "from vpnfw import kernel, load, policy\n"
            "from vpnfw.settings import read_settings\n"
            "from vpnfw.variables import Variables\n"
            "def boom(dump): raise RuntimeError('bug in reading the rules')\n"
            "kernel.table_states = boom\n"
            "ruleset = lambda: policy.build(read_settings(Variables()), [])\n"
            "sys.exit(load.apply(ruleset, lambda level, msg: print(level, msg, file=sys.stderr)))\n")
    out = ns.sh(f"{sys.executable} -c \"{code}\"", check=False)
    assert out.returncode == 11, out.stderr
    assert "internal error while loading: RuntimeError: bug in reading the rules" in out.stderr
    assert "LOCKDOWN by policy" in out.stderr
    assert_policies_drop(ns, "ip")
    assert_policies_drop(ns, "ip6")
