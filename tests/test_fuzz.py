"""Property test of the language: any text gives either a ruleset or a file:line:col error,
never a traceback, and no value can smuggle text into the iptables-restore input."""

import os
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import write_config
from vpnfw.pipeline import compile_config
from vpnfw.errors import ConfigError
from vpnfw.render import restore_input

VALID = [
    "@def $VPN_SERVERS = (198.51.100.7:1194/udp 203.0.113.9:443/tcp [2001:db8::7]:1194/udp);\n"
    "@def $VPN_INTERFACES = (tun+);\n@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (192.168.1.0/24);\n"
    "chain OUTPUT outerface eth0 daddr 192.168.1.20 proto tcp dport 631 ACCEPT;\n",
    "domain (ip ip6) chain INPUT { proto tcp dport (22 80) ACCEPT; mod conntrack ctstate NEW LOG log-prefix 'x: '; }\n",
    "@def $DNS_SERVERS = (10.8.0.1);\n@def $H = (192.0.2.1 2001:db8::1);\n"
    "chain OUTPUT daddr $H proto udp sport 1000:2000 dport ! 53 REJECT;\n"
    "domain ip chain OUTPUT proto icmp icmp-type echo-request mod comment comment \"ok\" ACCEPT;\n",
    "@def &SVC($p, $port) = { chain INPUT proto $p dport $port ACCEPT; }\n&SVC(tcp, ssh); &SVC((tcp udp), 53);\n"
    "chain INPUT mod state state (ESTABLISHED RELATED) ACCEPT;\nchain INPUT proto tcp syn mod limit limit 5/min NOP;\n",
    "@def $A = 1;\n@if @eq($A, 1) chain OUTPUT proto tcp dports (80 443) ACCEPT; @else chain OUTPUT DROP;\n"
    "chain mine { mod recent set name x NOP; RETURN; }\nchain INPUT saddr 192.0.2.0/24 jump mine;\n"
    "chain INPUT proto tcp @subchain 'web' { dport http ACCEPT; }\n",
    "table nat chain PREROUTING proto tcp dport 80 DNAT to 192.0.2.2:8080;\n"
    "table mangle chain OUTPUT MARK set-xmark 0x1/0xff;\ntable raw chain OUTPUT CT notrack;\n"
    "chain INPUT policy DROP;\nchain OUTPUT mod comment comment @cat('a', \"b\") mod mark mark 0x2/0x3 ACCEPT;\n",
    # long enough to be split into server chains
    "@def $VPN_SERVERS = (" + " ".join(f"198.51.100.{i}:1194/udp [2001:db8::{i:x}]:443" for i in range(40)) + ");\n",
]
VOCABULARY = [
    "@def", "$VPN_SERVERS", "$X", "=", ";", "(", ")", "{", "}", "!", "chain", "INPUT", "OUTPUT", "FORWARD",
    "domain", "ip", "ip6", "table", "filter", "nat", "POSTROUTING", "proto", "tcp", "udp", "icmp", "icmpv6",
    "daddr", "saddr", "sport", "dport", "interface", "outerface", "eth0", "tun+", "mod", "conntrack",
    "ctstate", "NEW", "owner", "uid-owner", "comment", "'a b'", '"x"', "icmp-type", "echo-request",
    "ACCEPT", "DROP", "REJECT", "reject-with", "tcp-reset", "LOG", "log-prefix", "log-level", "RETURN",
    "MASQUERADE", "192.0.2.1", "2001:db8::1", "10.0.0.0/8", "198.51.100.7:1194/udp", "[2001:db8::7]:443/tcp",
    "53", "1:2", "ssh", "yes", "no", "$ALLOW_LAN", "$LAN_NETS", "#", "\n", "-j", "--dport", "\"\n", "'",
    ",", "@if", "@else", "@subchain", "@gotosubchain", "@def &F($a) =", "&F(", "&F()", "@cat(", "@eq(", "@not(",
    "@defined(", "@resolve(", "@include", "$DOMAIN", "$CHAIN", "jump", "goto", "mine", "policy", "NOP", "state",
    "ESTABLISHED", "multiport", "dports", "limit", "5/min", "mark", "0x1/0xff", "recent", "set", "name",
    "mangle", "raw", "PREROUTING", "MARK", "set-mark", "CONNMARK", "save-mark", "DNAT", "SNAT", "to",
    "192.0.2.2:80", "REDIRECT", "to-ports", "syn", "tcp-flags", "SYN", "ALL", "fragment", "time", "timestart",
    "12:00", "mac", "mac-source", "01:23:45:67:89:ab", "hashlimit", "hashlimit-name", "CT", "notrack",
]
ERROR = re.compile(r"^/[^:]+\.conf:\d+:\d+: \S")
SAFE_LINE = re.compile(r'^(-[AIDX] [A-Za-z0-9_.-]+( [!\w./:,+-]+| "[\w .,:;/@+=()\[\]-]*")*'
                       r'|:[A-Za-z0-9_.-]+ [A-Z-]+ \[0:0\]|\*(filter|nat|mangle|raw|security)|COMMIT)$')


def check(tmp_path, text):
    d = write_config(tmp_path / "fuzz", {"30_user.conf": text})
    try:
        compiled = compile_config(d)
    except ConfigError as e:
        assert ERROR.match(str(e)), str(e)
        return None
    for family, rules in compiled.ruleset.items():
        for line in restore_input(rules, {}).splitlines():
            assert SAFE_LINE.match(line), line
    return compiled


tokens = st.lists(st.sampled_from(VOCABULARY), max_size=40).map(" ".join)


@st.composite
def mutated(draw):
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(list(";(){}=!$#\"' \n:/[]+-.0123456789abcxyz") + ["\x00", "é", "\t"]))
        if action == "insert":
            text = text[:i] + ch + text[i:]
        elif action == "delete":
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + ch + text[i + 1:]
    return text


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(text=tokens)
def test_random_token_soup(tmp_path_factory, text):
    check(tmp_path_factory.mktemp("t"), text)


@FUZZ
@given(text=mutated())
def test_mutated_valid_configs(tmp_path_factory, text):
    check(tmp_path_factory.mktemp("m"), text)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200))
def test_arbitrary_text(tmp_path_factory, text):
    check(tmp_path_factory.mktemp("a"), text)


@pytest.mark.skipif(os.geteuid() != 0, reason="iptables-restore --test needs root")
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=mutated())
def test_what_compiles_is_accepted_by_iptables_restore(tmp_path_factory, text):
    compiled = check(tmp_path_factory.mktemp("k"), text)
    if compiled is None:
        return
    for family, rules in compiled.ruleset.items():
        tool = "iptables-restore" if family == "ip" else "ip6tables-restore"
        out = subprocess.run(["unshare", "-n", tool, "--test"], input=restore_input(rules, {}),
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
