"""The verified cache of the compile: an unchanged config is loaded from it (the same rules,
verified in the kernel as ever); a change of any input, of the files' trust or of the cache
itself, and the config is compiled anew. And the first start after boot, which renders for
an empty kernel at once, still ends right when the kernel held chains of ours already."""

import json
import marshal
import os

import pytest

from conftest import needs_root, rules_of, run_loader, write_config

pytestmark = [needs_root]
CACHED = "the config is unchanged since it was compiled last (cache)"


class Start:
    def __init__(self, tmp_path, netns):
        self.tmp = tmp_path
        self.ns = netns("cache")
        self.runs = 0
        self.env = {"VPN_FIREWALL_STATE_DIR": str(tmp_path / "state"),
                    "VPN_FIREWALL_SERVICES": str(tmp_path / "services")}
        (tmp_path / "services").write_text("http 80/tcp\nwebcache 8080/tcp\n")

    def __call__(self, conf):
        self.runs += 1  # an empty run directory each time, as after a boot
        env = dict(self.env, VPN_FIREWALL_RUN_DIR=str(self.tmp / f"run{self.runs}"))
        return run_loader(["--config-dir", conf, "start"], env=env, netns=self.ns.name)

    def rules(self):
        return [line for fam in ("ip", "ip6") for line in rules_of(self.ns.save(fam)) if line.startswith("-A")]


BASE = "@def $VPN_SERVERS = (198.51.100.7:1194/udp vpn.example.net:1194/udp);\n" \
       "@def $VPN_CLIENT_CONFIGS = (\"{vpn}/*.conf\");\n" \
       "@include 'extra.ferm';\n" \
       "chain OUTPUT outerface eth0 proto tcp dport http ACCEPT;\n"


def config(tmp_path):
    vpn = tmp_path / "vpn"
    vpn.mkdir()
    (vpn / "wg0.conf").write_text("[Peer]\nEndpoint = 203.0.113.5:51820\n")
    os.chmod(vpn / "wg0.conf", 0o600)
    state = tmp_path / "state"
    state.mkdir()
    (state / "pinned.json").write_text('{"vpn.example.net": {"addresses": ["198.51.100.8"], "resolved": 1}}')
    return write_config(tmp_path / "conf", {"30_user.conf": BASE.format(vpn=vpn),
                                            "extra.ferm": "chain INPUT proto tcp dport 22 ACCEPT;\n"})


def test_an_unchanged_config_is_loaded_from_the_cache_with_the_same_rules(tmp_path, netns):
    start, conf = Start(tmp_path, netns), config(tmp_path)
    first = start(conf)
    assert first.returncode == 0 and CACHED not in first.stderr, first.stderr
    compiled = start.rules()
    assert "-A VPNFW-OUTPUT -d 198.51.100.8/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in compiled
    second = start(conf)
    assert second.returncode == 0 and CACHED in second.stderr, second.stderr
    assert start.rules() == compiled
    status = run_loader(["--config-dir", conf, "status"], env=dict(start.env, VPN_FIREWALL_RUN_DIR=str(tmp_path / "run2")),
                        netns=start.ns.name)
    assert status.returncode == 0, status.stdout


def test_a_start_from_the_cache_imports_nothing_of_the_compile(tmp_path, netns):
    """The boot path: no compiler, no portal, no 're' when the cache holds the compile (each
    costs milliseconds before the network comes up). Control: the first start compiles."""
    start = Start(tmp_path, netns)
    # a VPN user by name: its lookup is compared on every start (a glob would need 're': glob's)
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"
                                                            "@def $VPN_USER = root;\n"})
    start.env["PYTHONPROFILEIMPORTTIME"] = "1"  # python3 -X importtime
    imported = lambda out: {line.split("|")[-1].strip() for line in out.stderr.splitlines()  # noqa: E731
                            if line.startswith("import time:")}
    first = start(conf)
    assert {"re", "vpnfw.compiler"} <= imported(first), "the control: a compile imports them"
    second = start(conf)
    assert CACHED in second.stderr, second.stderr
    assert not {"re", "vpnfw.compiler", "vpnfw.portal", "vpnfw.values", "json"} & imported(second), \
        {"re", "vpnfw.compiler", "vpnfw.portal", "vpnfw.values", "json"} & imported(second)


def _edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text
    with open(path, "w") as f:
        f.write(text.replace(old, new))


CHANGES = {
    "the config file": (lambda t, c: _edit(f"{c}/30_user.conf", "198.51.100.7", "198.51.100.17"),
                        "-A VPNFW-OUTPUT -d 198.51.100.17/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW"),
    "a new file in the directory": (lambda t, c: write_config(c, {"40_more.conf": "chain OUTPUT proto tcp dport 25 REJECT;\n"}),
                                    "-A VPNFW-OUTPUT -p tcp -m tcp --dport 25 -j REJECT --reject-with icmp-port-unreachable"),
    "an included file": (lambda t, c: _edit(f"{c}/extra.ferm", "dport 22", "dport 2222"),
                         "-A VPNFW-INPUT -p tcp -m tcp --dport 2222 -j ACCEPT"),
    "the pinned addresses": (lambda t, c: _edit(f"{t}/state/pinned.json", "198.51.100.8", "198.51.100.9"),
                             "-A VPNFW-OUTPUT -d 198.51.100.9/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW"),
    "/etc/services": (lambda t, c: _edit(f"{t}/services", "http 80/tcp", "http 8000/tcp"),
                      "-A VPNFW-OUTPUT -o eth0 -p tcp -m tcp --dport 8000 -j ACCEPT"),
    "a VPN client config": (lambda t, c: _edit(f"{t}/vpn/wg0.conf", "51820", "51821"),
                            "-A VPNFW-OUTPUT -d 203.0.113.5/32 -p udp -m udp --dport 51821 -j VPNFW-SERVER-FLOW"),
    "a new VPN client config": (lambda t, c: (t / "vpn" / "wg1.conf").write_text("[Peer]\nEndpoint = 203.0.113.6:1\n"),
                                "-A VPNFW-OUTPUT -d 203.0.113.6/32 -p udp -m udp --dport 1 -j VPNFW-SERVER-FLOW"),
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_changed_input_is_compiled_anew(tmp_path, netns, change):
    start, conf = Start(tmp_path, netns), config(tmp_path)
    assert start(conf).returncode == 0
    edit, expected = CHANGES[change]
    edit(tmp_path, conf)
    out = start(conf)
    assert out.returncode == 0 and CACHED not in out.stderr, out.stderr
    assert expected in start.rules()
    again = start(conf)
    assert CACHED in again.stderr, "and the new compile is cached in turn"


def test_a_config_that_others_may_now_write_is_refused_not_taken_from_the_cache(tmp_path, netns):
    start, conf = Start(tmp_path, netns), config(tmp_path)
    assert start(conf).returncode == 0
    os.chmod(f"{conf}/extra.ferm", 0o664)
    out = start(conf)
    assert out.returncode == 10 and "writable by group or others" in out.stderr, out.stderr


@pytest.mark.parametrize("damage", ["garbage", "another version", "a portal session file"])
def test_a_cache_in_doubt_is_not_used(tmp_path, netns, damage):
    start, conf = Start(tmp_path, netns), config(tmp_path)
    assert start(conf).returncode == 0
    compiled = start.rules()
    cache = tmp_path / "state" / "compiled"
    if damage == "garbage":
        cache.write_bytes(b"\x00not marshal")
    elif damage == "another version":
        data = marshal.loads(cache.read_bytes())
        data["key"] = (data["key"][0], "2.7.18 (a Python of long ago)") + data["key"][2:]
        cache.write_bytes(marshal.dumps(data))
    else:  # an expired session left by a killed portal: the compile must look, not the cache
        run = tmp_path / f"run{start.runs + 1}"
        run.mkdir()
        (run / "portal.json").write_text(json.dumps({"until": 1, "cgroup": "x", "dns": [], "command": ["x"], "pid": 1}))
    out = start(conf)
    assert out.returncode == 0 and CACHED not in out.stderr, out.stderr
    assert start.rules() == compiled


def test_the_first_start_after_boot_ends_right_when_chains_of_ours_were_restored_before_it(tmp_path, netns):
    """A ruleset saved while vpn-firewall was loaded, restored by another tool at boot
    (netfilter-persistent): the first start renders for an empty kernel, sees the read-back
    differ, and loads the family again the careful way: one jump each, in sync."""
    conf = write_config(tmp_path / "conf", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"})
    env = {"VPN_FIREWALL_STATE_DIR": str(tmp_path / "state")}
    donor, host = netns("donor"), netns("host")
    assert run_loader(["--config-dir", conf, "start"], env=dict(env, VPN_FIREWALL_RUN_DIR=str(tmp_path / "r0")),
                      netns=donor.name).returncode == 0
    import subprocess
    for family in ("ip", "ip6"):
        tool = "iptables" if family == "ip" else "ip6tables"
        subprocess.run(["ip", "netns", "exec", host.name, f"{tool}-restore"], input=donor.save(family), text=True,
                       check=True)
    out = run_loader(["--config-dir", conf, "start"], env=dict(env, VPN_FIREWALL_RUN_DIR=str(tmp_path / "r1")),
                     netns=host.name)
    assert out.returncode == 0, out.stderr
    for family in ("ip", "ip6"):
        for table in host.save(family).split("\n*")[1:]:  # each table: one jump per built-in chain
            assert table.count("-A OUTPUT -j VPNFW-OUTPUT") <= 1 and table.count("-A INPUT -j VPNFW-INPUT") <= 1, table
    status = run_loader(["--config-dir", conf, "status"], env=dict(env, VPN_FIREWALL_RUN_DIR=str(tmp_path / "r1")),
                        netns=host.name)
    assert status.returncode == 0, status.stdout
