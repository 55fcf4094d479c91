"""The config language: what it accepts, the rules it means, every error with file:line:col."""

import os
import re

import pytest

from conftest import said, write_config
from vpnfw.pipeline import compile_config
from vpnfw.errors import ConfigError
from vpnfw.render import rule_line


def compile_text(tmp_path, text, name="30_user.conf", extra=None):
    files = {name: text}
    files.update(extra or {})
    d = write_config(tmp_path / "c", files)
    return compile_config(d)


def user_lines(tmp_path, text, family="ip"):
    """Rule lines of the user's rules only (those not in a config without them)."""
    base = {rule_line(r) for r in compile_text(tmp_path / "base", "").ruleset[family]}
    # with an OUTPUT rule of the user's the tunnel's rules stand in OUTPUT itself, not in a
    # chain of their own that comes first (policy.TUNNEL_OUT_CHAIN): both shapes are the base
    sentinel = "-A VPNFW-OUTPUT -p udp -m udp --dport 9 -j ACCEPT"
    base |= {rule_line(r) for r in compile_text(tmp_path / "sentinel", "chain OUTPUT proto udp dport 9 ACCEPT;"
                                                ).ruleset[family]}
    base.discard(sentinel)
    return [rule_line(r) for r in compile_text(tmp_path, text).ruleset[family] if rule_line(r) not in base]


def error_of(tmp_path, text, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        compile_text(tmp_path, text, **kw)
    return str(info.value)


# -- what rules mean -----------------------------------------------------------------
def test_example_printer_rule(tmp_path):
    assert user_lines(tmp_path, "chain OUTPUT outerface eth0 daddr 192.168.1.20 proto tcp dport 631 ACCEPT;") == [
        "-A VPNFW-OUTPUT -d 192.168.1.20/32 -o eth0 -p tcp -m tcp --dport 631 -j ACCEPT"
    ]


def test_lists_multiply_in_ferm_order(tmp_path):
    lines = user_lines(tmp_path, "chain OUTPUT daddr (192.0.2.1 192.0.2.2) proto (tcp udp) dport 53 DROP;")
    assert lines == [
        "-A VPNFW-OUTPUT -d 192.0.2.1/32 -p tcp -m tcp --dport 53 -j DROP",
        "-A VPNFW-OUTPUT -d 192.0.2.1/32 -p udp -m udp --dport 53 -j DROP",
        "-A VPNFW-OUTPUT -d 192.0.2.2/32 -p tcp -m tcp --dport 53 -j DROP",
        "-A VPNFW-OUTPUT -d 192.0.2.2/32 -p udp -m udp --dport 53 -j DROP",
    ]


def test_mixed_address_list_goes_to_each_family(tmp_path):
    text = "@def $HOSTS = (192.0.2.1 2001:db8::1);\nchain OUTPUT daddr $HOSTS proto tcp dport https ACCEPT;"
    assert user_lines(tmp_path, text, "ip") == ["-A VPNFW-OUTPUT -d 192.0.2.1/32 -p tcp -m tcp --dport 443 -j ACCEPT"]
    assert user_lines(tmp_path, text, "ip6") == ["-A VPNFW-OUTPUT -d 2001:db8::1/128 -p tcp -m tcp --dport 443 -j ACCEPT"]


def test_rule_without_address_goes_to_both_families(tmp_path):
    text = "chain OUTPUT proto tcp dport 25 REJECT;"
    assert user_lines(tmp_path, text, "ip") == ["-A VPNFW-OUTPUT -p tcp -m tcp --dport 25 -j REJECT --reject-with icmp-port-unreachable"]
    assert user_lines(tmp_path, text, "ip6") == ["-A VPNFW-OUTPUT -p tcp -m tcp --dport 25 -j REJECT --reject-with icmp6-port-unreachable"]


def test_blocks_negation_modules_and_targets(tmp_path):
    text = """
domain ip table filter chain INPUT {
    interface ! eth1 mod conntrack ctstate (NEW ESTABLISHED) proto tcp sport 1000:2000 ACCEPT;
    proto icmp icmp-type echo-request mod comment comment "ping me" ACCEPT;
    saddr !10.0.0.0/8 proto tcp dport ! ssh REJECT reject-with tcp-reset;
    proto udp LOG log-prefix "in udp: " log-level info;
}
domain ip6 chain OUTPUT mod owner uid-owner 0 { proto icmpv6 icmpv6-type neighbour-solicitation RETURN; }
"""
    assert user_lines(tmp_path, text, "ip") == [
        "-A VPNFW-INPUT ! -i eth1 -p tcp -m conntrack --ctstate NEW,ESTABLISHED -m tcp --sport 1000:2000 -j ACCEPT",
        '-A VPNFW-INPUT -p icmp -m icmp --icmp-type 8 -m comment --comment "ping me" -j ACCEPT',
        "-A VPNFW-INPUT ! -s 10.0.0.0/8 -p tcp -m tcp ! --dport 22 -j REJECT --reject-with tcp-reset",
        '-A VPNFW-INPUT -p udp -j LOG --log-prefix "in udp: " --log-level 6',
    ]
    assert user_lines(tmp_path, text, "ip6") == [
        "-A VPNFW-OUTPUT -p ipv6-icmp -m owner --uid-owner 0 -m icmp6 --icmpv6-type 135 -j RETURN",
    ]


def test_user_rules_come_after_loopback_and_the_tunnel_flow_marks_and_before_the_policy(tmp_path):
    text = "@def $VPN_INTERFACES = (tun+);\nchain (INPUT OUTPUT) daddr 192.0.2.9 DROP;"
    rules = compile_text(tmp_path, text).ruleset["ip"]
    out = [rule_line(r) for r in rules if r.chain == "OUTPUT" and r.table == "filter"]
    assert out[:4] == ["-A VPNFW-OUTPUT -j MARK --set-xmark 0x10000000/0x10000000",
                       "-A VPNFW-OUTPUT -o lo -j ACCEPT",
                       "-A VPNFW-OUTPUT -o tun+ -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000000/0x20000000",
                       "-A VPNFW-OUTPUT -d 192.0.2.9/32 -j DROP"]
    # a spoofed reply to a tunnel flow is dropped before an ESTABLISHED accept of the user's could take it
    out = [rule_line(r) for r in rules if r.chain == "INPUT" and r.table == "filter"]
    assert out[:5] == ["-A VPNFW-INPUT -j MARK --set-xmark 0x10000000/0x10000000",
                       "-A VPNFW-INPUT -i lo -j ACCEPT",
                       "-A VPNFW-INPUT -i tun+ -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x20000000/0x20000000",
                       "-A VPNFW-INPUT -m connmark --mark 0x20000000/0x20000000 -j VPNFW-TUNNEL-FLOWS",
                       "-A VPNFW-INPUT -d 192.0.2.9/32 -j DROP"]


def test_nat_rules_go_to_our_nat_chain(tmp_path):
    rules = compile_text(tmp_path, "table nat chain POSTROUTING outerface tun0 MASQUERADE;").ruleset["ip"]
    nat = [rule_line(r) for r in rules if r.table == "nat"]
    assert nat == ["-A VPNFW-POSTROUTING -o tun0 -j MASQUERADE"]


def test_later_file_overrides_and_can_extend(tmp_path):
    files = {
        "40_more.conf": "@def $LAN_NETS = ($LAN_NETS 10.9.0.0/16);\n",
    }
    settings = compile_text(tmp_path, "@def $ALLOW_LAN = yes;\n@def $LAN_NETS = (192.168.1.0/24);\n", extra=files).settings
    assert settings.allow_lan is True
    assert [n for _, n in settings.lan_nets] == ["192.168.1.0/24", "10.9.0.0/16"]


def test_rules_see_the_final_value(tmp_path):
    files = {"20_a.conf": "chain OUTPUT daddr $PRINTER proto tcp dport 631 ACCEPT;\n@def $PRINTER = 192.0.2.1;\n",
             "40_b.conf": "@def $PRINTER = 192.0.2.2;\n"}
    d = write_config(tmp_path / "c", files)
    lines = [rule_line(r) for r in compile_config(d).ruleset["ip"]]
    assert "-A VPNFW-OUTPUT -d 192.0.2.2/32 -p tcp -m tcp --dport 631 -j ACCEPT" in lines
    assert not any("192.0.2.1/" in line for line in lines)


def test_endpoint_forms(tmp_path):
    text = "@def $VPN_SERVERS = (198.51.100.7:1194/udp 203.0.113.9:443/tcp [2001:db8::7]:1194/udp 192.0.2.5 192.0.2.6:1723 2001:db8::8/udp 198.51.100.0/28:51820/udp);"
    eps = compile_text(tmp_path, text).settings.vpn_servers
    assert [(e.family, e.net, e.port, e.proto) for e in eps] == [
        ("ip", "198.51.100.7/32", "1194", "udp"),
        ("ip", "203.0.113.9/32", "443", "tcp"),
        ("ip6", "2001:db8::7/128", "1194", "udp"),
        ("ip", "192.0.2.5/32", None, None),
        ("ip", "192.0.2.6/32", "1723", None),
        ("ip6", "2001:db8::8/128", None, "udp"),
        ("ip", "198.51.100.0/28", "51820", "udp"),
    ]
    lines = [rule_line(r) for r in compile_text(tmp_path / "x", text).ruleset["ip"]]
    assert "-A VPNFW-OUTPUT -d 192.0.2.5/32 -j VPNFW-SERVER-FLOW" in lines
    assert "-A VPNFW-OUTPUT -d 192.0.2.6/32 -p udp -m udp --dport 1723 -j VPNFW-SERVER-FLOW" in lines
    assert "-A VPNFW-OUTPUT -d 192.0.2.6/32 -p tcp -m tcp --dport 1723 -j VPNFW-SERVER-FLOW" in lines


def test_vpn_user_restricts_endpoints(tmp_path):
    text = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n@def $VPN_USER = root;\n@def $VPN_GROUP = 0;"
    lines = [rule_line(r) for r in compile_text(tmp_path, text).ruleset["ip"]]
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -m owner --uid-owner 0 -j VPNFW-SERVER-FLOW" in lines
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 1194 -m owner --gid-owner 0 -j VPNFW-SERVER-FLOW" in lines
    assert not any("--dport 1194 -j ACCEPT" in line for line in lines)


def test_several_vpn_users_and_a_fwmark_may_reach_the_servers(tmp_path):
    """A client whose socket changes owner (NetworkManager's OpenVPN: root, then nm-openvpn),
    and kernel WireGuard, whose socket no process owns: its packets carry wg-quick's mark."""
    text = ("@def $VPN_SERVERS = (198.51.100.7:51820/udp);\n@def $VPN_USER = (root 65534);\n"
            "@def $VPN_FWMARK = 51820;\n")
    lines = [rule_line(r) for r in compile_text(tmp_path, text).ruleset["ip"] if "--dport 51820" in rule_line(r)]
    assert lines == [
        "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 51820 -m owner --uid-owner 0 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 51820 -m owner --uid-owner 65534 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 51820 -m mark --mark 0xca6c/0xefffffff -j VPNFW-SERVER-FLOW",
    ]
    # without an owner the mark changes nothing: anyone may reach the servers anyway
    plain = [rule_line(r) for r in compile_text(tmp_path / "b", "@def $VPN_SERVERS = (198.51.100.7:51820/udp);\n"
                                                "@def $VPN_FWMARK = 51820;\n").ruleset["ip"] if "--dport 51820" in rule_line(r)]
    assert plain == ["-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 51820 -j VPNFW-SERVER-FLOW"]


@pytest.mark.parametrize("mark, says", [("0x10000001", "uses bit 0x10000000 or 0x20000000"), ("0", "expected a mark"),
                                        ("wg", "expected a mark"), ("(1 2)", "takes one value")])
def test_a_fwmark_that_cannot_be_is_refused(tmp_path, mark, says):
    assert says in error_of(tmp_path, f"@def $VPN_FWMARK = {mark};\n")


def test_an_owner_with_a_wireguard_tunnel_and_no_fwmark_is_a_warning(tmp_path):
    wg = tmp_path / "wg0.conf"
    wg.write_text("[Interface]\nPrivateKey = x\n[Peer]\nEndpoint = 198.51.100.9:51820\n")
    os.chmod(wg, 0o600)
    text = f"@def $VPN_CLIENT_CONFIGS = (\"{wg}\");\n@def $VPN_USER = root;\n"
    assert "set $VPN_FWMARK to the tunnel's fwmark (wg-quick: 51820)" in said(compile_text(tmp_path / "a", text))
    fixed = said(compile_text(tmp_path / "b", text + "@def $VPN_FWMARK = 51820;\n"))
    assert "VPN_FWMARK" not in fixed


def test_dns_servers_only_through_the_tunnel(tmp_path):
    text = "@def $DNS_SERVERS = (10.8.0.1 2001:db8:8::1);\n@def $VPN_INTERFACES = tun0;\n@def $ALLOW_LAN = yes;"
    lines = [rule_line(r) for r in compile_text(tmp_path, text).ruleset["ip"]]
    # the tunnel's packets go to its chain first (no rules of the user's come before)
    into = "-A VPNFW-OUTPUT -o tun0 -j VPNFW-TUNNEL-OUT"
    accept = "-A VPNFW-TUNNEL-OUT -d 10.8.0.1/32 -p udp -m udp --dport 53 -j ACCEPT"
    in_tunnel = "-A VPNFW-TUNNEL-OUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"
    reject = "-A VPNFW-OUTPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"
    lan = "-A VPNFW-OUTPUT -d 10.0.0.0/8 -j ACCEPT"
    assert lines.index(into) < lines.index(reject) < lines.index(lan)
    assert lines.index(accept) < lines.index(in_tunnel)
    assert not any("2001:db8:8::1" in line for line in lines)


def test_output_never_accepts_established_outside_the_tunnel(tmp_path):
    text = "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n@def $ALLOW_LAN = yes;"
    for family in ("ip", "ip6"):
        for r in compile_text(tmp_path / family, text).ruleset[family]:
            if r.chain == "OUTPUT":
                assert "ESTABLISHED" not in rule_line(r)


def test_port_names_come_from_the_services_file(tmp_path, monkeypatch):
    services = tmp_path / "services"
    services.write_text("myproto\t4242/tcp\t\talias42  # comment\n")
    monkeypatch.setenv("VPN_FIREWALL_SERVICES", str(services))
    assert user_lines(tmp_path, "chain OUTPUT proto tcp dport (myproto alias42) ACCEPT;") == [
        "-A VPNFW-OUTPUT -p tcp -m tcp --dport 4242 -j ACCEPT"] * 2


def test_defaults_file_equals_builtin_defaults(tmp_path):
    from conftest import SHIPPED_CONFIG
    with open(f"{SHIPPED_CONFIG}/10_default.conf") as f:
        shipped = compile_text(tmp_path / "a", f.read(), name="10_default.conf")
    empty = compile_text(tmp_path / "b", "")
    assert shipped.settings == empty.settings
    assert shipped.ruleset == empty.ruleset


@pytest.mark.parametrize("name, meant", [("VPN_SERVER", "VPN_SERVERS"), ("ALOW_LAN", "ALLOW_LAN"),
                                         ("allow_lan", "ALLOW_LAN"), ("DNS_SERVER", "DNS_SERVERS")])
def test_a_misspelt_setting_is_an_error_with_did_you_mean(tmp_path, name, meant):
    """Left alone it would silently keep the setting's default: no VPN server, no LAN."""
    message = error_of(tmp_path, f"@def ${name} = yes;\n")
    assert message.endswith(f"30_user.conf:1:1: ${name} is not a setting: did you mean ${meant}? "
                            "(a variable of your own by that name must be used in a rule)"), message


def test_a_variable_named_like_a_setting_but_used_is_no_error(tmp_path):
    lines = user_lines(tmp_path, "@def $VPN_SERVER = 192.0.2.9;\nchain OUTPUT daddr $VPN_SERVER ACCEPT;\n")
    assert any("192.0.2.9" in line for line in lines)


def test_unused_variable_far_from_any_setting_warns_with_a_suggestion(tmp_path):
    err = said(compile_text(tmp_path, "@def $MY_LAN = 192.0.2.0/24;\n@def $SERVERS = 192.0.2.1;\n"))
    assert "30_user.conf:1:1: warning: $MY_LAN is defined but never used\n" in err
    assert "30_user.conf:2:1: warning: $SERVERS is defined but never used; did you mean $VPN_SERVERS?" in err


def test_a_byte_order_mark_is_accepted(tmp_path):
    """Notepad and some editors begin a UTF-8 file with one; Windows line endings too."""
    text = "\ufeff@def $VPN_SERVERS = (198.51.100.7:1194/udp);\r\n"
    ruleset = compile_text(tmp_path / "good", text).ruleset
    assert any("198.51.100.7" in rule_line(r) for r in ruleset["ip"])
    assert error_of(tmp_path / "bad", "\ufeff@def $VPN_SERVERS = (198.51.100.);\n").endswith(
        "30_user.conf:1:22: expected an address, got '198.51.100.'")


# -- every error, with its place ----------------------------------------------------
ERRORS = [
    # syntax
    ("@def $VPN_SERVERS = (198.51.100.7:1194/udp", "1:21: this '(' is never closed"),
    ("chain OUTPUT ACCEPT", "1:20: expected ';' or '{' to end the statement, got end of file"),
    ("chain OUTPUT { ACCEPT;", "1:23: expected '}' to close the block, got end of file"),
    ("}", "1:1: unexpected '}': no block is open"),
    ("chain OUTPUT ACCEPT }", "1:21: expected ';' or '{' to end the statement, got '}'"),
    ('chain OUTPUT mod comment comment "open', "1:34: unterminated string"),
    ("chain OUTPUT daddr 1.2.3.4 = ACCEPT;", "1:28: unexpected '='"),
    ("@include 'x';", "1:10: cannot include"),
    ('@include "/usr/bin/make-rules|";', "1:10: '@include \"command|\"' runs a program"),
    ("@hook pre 'echo hi';", "1:1: '@hook' runs shell commands"),
    ("chain OUTPUT @preserve;", "1:14: '@preserve' is not needed"),
    ("@def $X = `cat /etc/hosts`;", "1:11: backticks run a shell command"),
    ("@def &F = proto tcp;", "1:9: expected '(' and the parameters after '&F'"),
    ("@def &F(x) = proto tcp;", "1:9: expected a parameter such as '$port'"),
    ("@def &F($a, $a) = proto tcp;", "1:13: parameter '$a' given twice"),
    ("@def &F($a) proto tcp;", "1:13: expected '=' after the parameters of '&F'"),
    ("@def &F() = chain OUTPUT { ACCEPT; }", "1:36: the body of '&F' is a block"),
    ("chain OUTPUT daddr @cat(192.0.2.1, ) ACCEPT;", "1:36: an argument of @cat is missing before ')'"),
    ("chain OUTPUT daddr @cat(192.0.2.1", "1:20: the '(' of @cat is never closed"),
    ("@def $X = (a, (b));", "1:13: unexpected ',' in a list"),
    ("chain OUTPUT ACCEPT ,;", "1:21: unexpected ',' in a rule"),
    ("@def VPN = 1;", "1:6: expected a variable name"),
    ("@def $VPN 1;", "1:11: expected '=' after '$VPN'"),
    ("@def $VPN = 1 2;", "1:15: expected ';' after the value of '$VPN'"),
    ("@def $VPN = ;", "1:13: expected a value, got ';'"),
    ("@def $VPN = (1 ;);", "1:16: expected a list item or ')'"),
    ("chain OUTPUT daddr 1.2.3.4 ACCEPT; \x01", "1:36: unexpected character"),
    # settings
    ("@def $VPN_SERVERS = (198.51.100.7:1194/udp 198.51.100.);", "1:44: expected an address, got '198.51.100.'"),
    ("@def $VPN_SERVERS = (198.51.100.7:99999/udp);", "1:22: expected a port from 1 to 65535"),
    ("@def $VPN_SERVERS = ([2001:db8::7:1194/udp);", "1:22: expected ']' to close the IPv6 address"),
    ("@def $VPN_SERVERS = ([2001:db8::7]1194);", "1:22: expected ':PORT' after ']'"),
    ("@def $VPN_SERVERS = (vpn_1.example.net:1194/udp);", "1:22: expected an address, got 'vpn_1.example.net'"),
    ("@def $VPN_SERVERS = (vpn.example.net:0/udp);", "1:22: expected a port from 1 to 65535"),
    ("@def $VPN_INTERFACES = (tun+ eth0/1);", "1:30: expected an interface name"),
    ("@def $VPN_INTERFACES = (averyveryverylongname);", "1:25: expected an interface name"),
    ("@def $VPN_INTERFACES = ();", "1:1: $VPN_INTERFACES is empty"),
    ("@def $ALLOW_LAN = maybe;", "1:19: expected yes or no, got 'maybe'"),
    ("@def $ALLOW_LAN = (yes no);", "1:24: $ALLOW_LAN takes yes or no, not a list"),
    ("@def $ALLOW_DHCP = ();", "1:1: $ALLOW_DHCP takes yes or no, not an empty list"),
    ("@def $LAN_NETS = (192.168.1.0/33);", "1:19: expected an address, got '192.168.1.0/33'"),
    ("@def $DNS_SERVERS = (10.8.0.1 dns.example);", "1:31: expected an address, got 'dns.example'"),
    ("@def $VPN_USER = (root no-such-user-here);", "1:24: no such user 'no-such-user-here' on this system"),
    ("@def $VPN_USER = no-such-user-here;", "1:18: no such user 'no-such-user-here'"),
    ("@def $VPN_GROUP = 'bad group';", "1:19: expected a group name or number"),
    # rules
    ("chain OUTPUT;", "1:13: expected a target"),
    ("daddr 192.0.2.1 ACCEPT;", "1:17: no chain for this rule"),
    ("chain OUTPUT daddr 192.0.2.300 ACCEPT;", "1:20: expected an address, got '192.0.2.300'"),
    ("chain OUTPUT daddr host.example ACCEPT;", "1:20: expected an address, got 'host.example'"),
    ("chain OUTPUT daddr $NOPE ACCEPT;", "1:20: undefined variable '$NOPE'"),
    ("chain OUTPUT frobnicate 1 ACCEPT;", "1:14: unknown keyword 'frobnicate'"),
    ("policy DROP;", "1:1: 'policy' belongs to a built-in chain"),
    ("chain mine policy DROP;", "1:12: 'policy' belongs to a built-in chain"),
    ("chain OUTPUT policy REJECT;", "1:21: expected policy ACCEPT or DROP"),
    ("chain OUTPUT policy DROP ACCEPT;", "1:26: 'policy' ends its statement"),
    ("table nat chain PREROUTING policy DROP;", "1:35: policy DROP is not possible in table nat"),
    ("chain OUTPUT jump FOO;", "1:19: chain 'FOO' is jumped to but has no rules"),
    ("chain OUTPUT jump INPUT;", "1:19: cannot jump to the built-in chain INPUT"),
    ("chain FOO ACCEPT; chain OUTPUT jump FOO ACCEPT;", "1:41: 'jump CHAIN' ends its rule"),
    ("jump FOO;", "1:1: no chain for this rule"),
    ("chain my/chain ACCEPT;", "1:7: expected a chain name"),
    ("chain a_chain_name_far_too_long_for_it ACCEPT;", "1:7: chain name 'a_chain_name_far_too_long_for_it' is too long"),
    ("table nat chain FORWARD ACCEPT;", "1:17: table nat has no chain FORWARD"),
    ("table bogus chain OUTPUT ACCEPT;", "1:7: expected table filter, nat, mangle, raw"),
    ("domain arp chain INPUT ACCEPT;", "1:8: domain arp is out of scope"),
    ("&NOPE();", "1:1: undefined function '&NOPE'"),
    ("@def &F($p) = proto tcp dport $p;\nchain OUTPUT &F() ACCEPT;", "2:14: &F takes 1 argument(s), not 0"),
    ("@def &F() = { chain OUTPUT ACCEPT; }\nchain OUTPUT &F() ACCEPT;", "2:14: &F holds a block: it must end its rule"),
    ("@def &F() = { &F(); }\n&F();", "1:15: &F: functions call each other more than 32 deep"),
    ("@def &F() = proto tcp;\nchain OUTPUT daddr &F() ACCEPT;", "2:20: '&F' gives rules, not a value"),
    ("chain OUTPUT @cat(a) ACCEPT;", "1:14: @cat gives a value: put it after a keyword"),
    ("chain OUTPUT daddr @nope(1) ACCEPT;", "1:20: unknown function @nope"),
    ("chain OUTPUT mod comment comment @substr(abc, x, 1) ACCEPT;", "1:34: @substr: the offset and the length are numbers"),
    ("chain OUTPUT mod comment comment @eq(a) ACCEPT;", "1:34: @eq takes 2 arguments, not 1"),
    ("chain OUTPUT daddr @resolve(a, b, c) ACCEPT;", "1:20: @resolve takes the names and at most a record type"),
    ("chain OUTPUT daddr @resolve(host.example, MX) ACCEPT;", "1:20: @resolve: record type MX is not supported"),
    ("@if;", "1:1: expected a condition after '@if'"),
    ("@else chain OUTPUT ACCEPT;", "1:1: '@else' without an '@if'"),
    ("chain OUTPUT @else ACCEPT;", "1:14: '@else' must begin the statement after an '@if'"),
    ("@subchain { ACCEPT; }", "1:1: no chain for '@subchain'"),
    ("chain OUTPUT @subchain;", "1:14: '@subchain' is followed by a block"),
    ("chain OUTPUT @subchain 'a b' { ACCEPT; }", "1:24: expected a chain name"),
    ("chain OUTPUT @unknown ACCEPT;", "1:14: unknown directive '@unknown'"),
    ("domain ip7 chain OUTPUT ACCEPT;", "1:8: expected domain ip or ip6"),
    ("chain OUTPUT dport 53 ACCEPT;", "1:14: 'dport' needs 'proto tcp'"),
    ("chain OUTPUT proto ! tcp dport 53 ACCEPT;", "1:26: 'dport' needs 'proto tcp'"),
    ("chain OUTPUT proto tcp dport 70000 ACCEPT;", "1:30: port '70000' is out of range"),
    ("chain OUTPUT proto tcp dport 200:100 ACCEPT;", "1:30: port range '200:100' runs backwards"),
    ("chain OUTPUT proto tcp dport nosuchservice ACCEPT;", "1:30: unknown service name 'nosuchservice'"),
    ("chain OUTPUT proto tcp dport 1:2:3 ACCEPT;", "1:30: expected a port or a range"),
    ("chain OUTPUT proto carrier-pigeon ACCEPT;", "1:20: expected a protocol"),
    ("chain OUTPUT proto tcp proto udp ACCEPT;", "1:24: 'proto' given twice"),
    ("chain OUTPUT daddr 192.0.2.1 daddr 192.0.2.2 ACCEPT;", "1:30: 'daddr' given twice"),
    ("chain OUTPUT icmp-type echo-request ACCEPT;", "1:14: 'icmp-type' needs 'proto icmp'"),
    ("chain OUTPUT proto icmp icmp-type flying ACCEPT;", "1:35: expected an icmp-type name or number"),
    ("chain OUTPUT proto icmpv6 icmpv6-type 999 ACCEPT;", "1:39: expected an icmpv6-type name or number"),
    ("chain OUTPUT mod frobnicate x 1 ACCEPT;", "1:18: unknown module 'frobnicate'"),
    ("chain OUTPUT mod conntrak ctstate NEW ACCEPT;", "1:18: unknown module 'conntrak': did you mean 'conntrack'?"),
    ("chain OUTPUT mod geoip src-cc DE ACCEPT;", "1:18: module 'geoip' is not supported: it comes from "
                                                "xtables-addons, which Debian's kernel does not have"),
    ("chain OUTPUT mod frag fragid 1 ACCEPT;", "1:18: module 'frag' is not supported: IPv6 extension headers"),
    ("chain OUTPUT mod set match-set bad src DROP;", "1:18: module 'set' is not supported: ipset sets"),
    ("chain OUTPUT mod u32 u32 '6&0xFF=1' DROP;", "1:18: module 'u32' is not supported"),
    ("chain OUTPUT ctstate NEW ACCEPT;", "1:14: 'ctstate' needs 'mod conntrack'"),
    ("chain OUTPUT mod state state BORED ACCEPT;", "1:30: expected a state"),
    ("chain OUTPUT mod limit limit 5/fortnight ACCEPT;", "1:30: expected a rate such as 5/minute"),
    ("chain OUTPUT mod mark mark 1/2/3 ACCEPT;", "1:28: expected a mark"),
    ("chain OUTPUT mod mac mac-source 00:11 ACCEPT;", "1:33: expected a MAC address"),
    ("chain OUTPUT mod iprange dst-range 192.0.2.1-2001:db8::1 ACCEPT;", "1:36: the two ends of an address range"),
    ("chain OUTPUT mod iprange dst-range 192.0.2.1 ACCEPT;", "1:36: expected an address range"),
    ("chain OUTPUT proto tcp dports (1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16) ACCEPT;", "1:32: multiport takes at most 15"),
    ("chain OUTPUT dports (1 2) ACCEPT;", "1:14: multiport needs 'proto tcp'"),
    ("chain OUTPUT mod recent seconds 5 ACCEPT;", "1:14: 'mod recent' needs one of set, rcheck, update, remove"),
    ("chain OUTPUT mod hashlimit hashlimit 5/sec ACCEPT;", "1:14: 'mod hashlimit' needs hashlimit-name"),
    ("chain OUTPUT mod time timestart 25:00 ACCEPT;", "1:33: expected a time of day"),
    ("chain OUTPUT mod time datestart yesterday ACCEPT;", "1:33: expected a date"),
    ("chain OUTPUT mod time weekdays (Mon Funday) ACCEPT;", "1:37: expected a weekday"),
    ("chain OUTPUT mod dscp dscp 99 ACCEPT;", "1:28: expected a DSCP value"),
    ("chain OUTPUT mod tos tos Fastest ACCEPT;", "1:26: expected a TOS value"),
    ("chain OUTPUT mod length length 70000 ACCEPT;", "1:32: expected a length"),
    ("chain OUTPUT mod policy dir sideways pol ipsec ACCEPT;", "1:29: expected a direction"),
    ("chain OUTPUT mod policy dir out ACCEPT;", "1:14: 'mod policy' needs pol ipsec or pol none"),
    ("chain OUTPUT proto udp syn ACCEPT;", "1:24: 'syn' needs 'proto tcp'"),
    ("chain OUTPUT proto tcp tcp-flags (SYN BOGUS) SYN ACCEPT;", "1:39: expected TCP flags"),
    ("domain ip6 chain OUTPUT fragment DROP;", "1:25: fragment (IPv4's -f) does not fit a rule for IPv6"),
    ("chain OUTPUT mod recent ! name x ACCEPT;", "1:25: '!' must follow a keyword"),
    ("table nat chain PREROUTING DNAT;", "1:28: expected 'to' and an address"),
    ("table nat chain PREROUTING DNAT to somewhere;", "1:36: expected ADDRESS[-ADDRESS][:PORT[-PORT]]"),
    ("chain OUTPUT DNAT to 192.0.2.1;", "1:14: target DNAT is not allowed in table filter"),
    ("table nat chain POSTROUTING DNAT to 192.0.2.1;", "1:29: DNAT belongs in chain PREROUTING or OUTPUT"),
    ("table nat chain PREROUTING REDIRECT to-ports http;", "1:46: expected a port or PORT-PORT"),
    ("table mangle chain OUTPUT MARK;", "1:27: expected one of set-mark"),
    ("table mangle chain OUTPUT MARK set-mark 1/2/3;", "1:41: expected VALUE or VALUE/MASK"),
    ("table mangle chain OUTPUT TTL ttl-set 300;", "1:39: expected a number from 0 to 255"),
    ("table mangle chain OUTPUT TCPMSS;", "1:27: expected one of set-mss, clamp-mss-to-pmtu"),
    ("table mangle chain OUTPUT CLASSIFY set-class x;", "1:46: expected set-class MAJOR:MINOR"),
    ("table raw chain OUTPUT CT;", "1:24: expected notrack or zone N"),
    ("table raw chain OUTPUT MARK set-mark 1 set-mark 2;", "1:40: 'set-mark' given twice"),
    ("chain OUTPUT mod conntrack ctstate BORED ACCEPT;", "1:36: expected a ctstate"),
    ("chain OUTPUT mod conntrack ACCEPT;", "1:14: 'mod conntrack' needs an option"),
    ("chain INPUT mod owner uid-owner 0 ACCEPT;", "1:35: 'mod owner' works only in chain OUTPUT"),
    ("chain OUTPUT interface eth0 ACCEPT;", "1:14: 'interface' cannot match in chain OUTPUT"),
    ("chain INPUT outerface eth0 ACCEPT;", "1:13: 'outerface' cannot match in chain INPUT"),
    ("chain OUTPUT mod comment comment 'a\\b' ACCEPT;", "1:34: a comment may hold only"),
    ("chain OUTPUT mod comment comment 'x\" -j ACCEPT' ACCEPT;", "1:34: a comment may hold only"),
    ("chain OUTPUT LOG log-prefix 'this prefix is far too long for LOG';", "1:29: a log-prefix is longer than 29"),
    ("chain OUTPUT LOG log-level loud;", "1:28: expected a log-level"),
    ("chain OUTPUT REJECT reject-with icmp-bogus;", "1:33: unknown reject-with type 'icmp-bogus'"),
    ("chain OUTPUT REJECT reject-with tcp-reset;", "1:33: reject-with tcp-reset needs 'proto tcp'"),
    ("chain OUTPUT ACCEPT log-prefix x;", "1:21: unexpected 'log-prefix' after target ACCEPT"),
    ("chain OUTPUT ACCEPT { }", "1:21: a target (ACCEPT) ends a rule"),
    ("table nat chain POSTROUTING DROP;", "1:29: target DROP is not allowed in table nat"),
    ("table nat chain PREROUTING MASQUERADE;", "1:28: MASQUERADE belongs in chain POSTROUTING"),
    ("chain OUTPUT daddr ! (192.0.2.1 192.0.2.2) ACCEPT;", "1:22: a negated list"),
    ("chain OUTPUT daddr () ACCEPT;", "1:20: 'daddr' needs at least one value"),
    ("chain OUTPUT ! daddr 192.0.2.1 ACCEPT;", "1:14: '!' must follow a keyword"),
    ("chain OUTPUT daddr ! ! 192.0.2.1 ACCEPT;", "1:22: '!' given twice"),
    ('chain OUTPUT "daddr" 192.0.2.1 ACCEPT;', "1:14: expected a keyword"),
    ("domain ip6 chain OUTPUT daddr 192.0.2.1 ACCEPT;", "1:31: address 192.0.2.1 does not fit a rule for IPv6"),
    ("chain OUTPUT saddr 192.0.2.1 daddr 2001:db8::1 ACCEPT;", "1:36: address 2001:db8::1 does not fit"),
    ("domain ip6 chain OUTPUT proto icmp ACCEPT;", "1:31: proto icmp does not fit a rule for IPv6"),
    ("domain ip chain OUTPUT REJECT reject-with icmp6-no-route;", "1:43: reject-with icmp6-no-route does not fit"),
    ("domain ip chain INPUT { domain ip6 chain OUTPUT ACCEPT; }", "1:25: domain ip6 inside a block for another domain"),
    ("chain OUTPUT mod owner uid-owner nosuchuserhere ACCEPT;", "1:34: no such user 'nosuchuserhere'"),
]


@pytest.mark.parametrize("text,expected", ERRORS, ids=[e[1].split(": ", 1)[1][:40] for e in ERRORS])
def test_error_names_file_line_col(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "c" / "30_user.conf") + ":"), message
    assert f"30_user.conf:{expected}" in message, message


def test_error_in_second_line_and_later_file(tmp_path):
    message = error_of(tmp_path, "# fine\n", extra={"40_late.conf": "# one\n\n   chain OUTPUT daddr 10.0.0.256 ACCEPT;\n"})
    assert "40_late.conf:3:23: expected an address, got '10.0.0.256'" in message


def test_invalid_utf8_is_refused(tmp_path):
    d = write_config(tmp_path / "c", {})
    (tmp_path / "c" / "30_user.conf").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"30_user.conf:1:1: not valid UTF-8"):
        compile_config(d)


def test_gateway_mode_rules(tmp_path):
    text = ("@def $GATEWAY_INTERFACES = (lan0);\n@def $VPN_INTERFACES = (tun0);\n"
            "@def $DNS_SERVERS = (10.8.0.1);\n")
    ruleset = compile_text(tmp_path, text).ruleset
    v4 = [rule_line(r) for r in ruleset["ip"]]
    v6 = [rule_line(r) for r in ruleset["ip6"]]
    dns = "-A VPNFW-FORWARD -d 10.8.0.1/32 -i lan0 -o tun0 -p udp -m udp --dport 53 -j ACCEPT"
    other_dns = "-A VPNFW-FORWARD -i lan0 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"
    through = "-A VPNFW-FORWARD -i lan0 -o tun0 -j ACCEPT"
    assert v4.index(dns) < v4.index(other_dns) < v4.index(through)
    assert "-A VPNFW-FORWARD -i tun0 -o lan0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in v4
    assert "-A VPNFW-POSTROUTING -o tun0 -j MASQUERADE" in v4
    assert not any("MASQUERADE" in line for line in v6), "no NAT66"
    assert through in v6 and not any("-o eth" in line for line in v4 + v6)
    # nothing forwarded leaves except through the tunnel
    forward_accepts = [line for line in v4 + v6 if line.startswith("-A VPNFW-FORWARD") and line.endswith("-j ACCEPT")]
    assert all("-o tun0" in line or "-o lan0" in line for line in forward_accepts), forward_accepts


def test_gateway_masquerade_can_be_off(tmp_path):
    text = "@def $GATEWAY_INTERFACES = (lan0);\n@def $GATEWAY_MASQUERADE = no;\n"
    assert not any(r.table == "nat" for r in compile_text(tmp_path, text).ruleset["ip"])


def test_host_name_endpoints_use_the_pinned_addresses(tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("VPN_FIREWALL_STATE_DIR", str(tmp_path / "state"))
    text = "@def $VPN_SERVERS = (vpn.example.net:1194/udp 198.51.100.7:443/tcp);"
    compiled = compile_text(tmp_path / "a", text)
    assert compiled.settings.vpn_servers[0].host == "vpn.example.net"
    lines = [rule_line(r) for r in compiled.ruleset["ip"]]
    assert not any("1194" in line for line in lines), "never resolved: nothing may reach it"
    assert "vpn.example.net in $VPN_SERVERS has never been resolved" in said(compiled)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "pinned.json").write_text(json.dumps(
        {"vpn.example.net": {"addresses": ["198.51.100.9", "2001:db8::9"], "resolved": 1}}))
    compiled = compile_text(tmp_path / "b", text)
    assert "-A VPNFW-OUTPUT -d 198.51.100.9/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in [
        rule_line(r) for r in compiled.ruleset["ip"]]
    assert "-A VPNFW-OUTPUT -d 2001:db8::9/128 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in [
        rule_line(r) for r in compiled.ruleset["ip6"]]


def test_gateway_nat66_only_when_asked(tmp_path):
    text = "@def $GATEWAY_INTERFACES = (lan0);\n@def $VPN_INTERFACES = (tun0);\n@def $GATEWAY_MASQUERADE6 = yes;\n"
    v6 = [rule_line(r) for r in compile_text(tmp_path, text).ruleset["ip6"]]
    assert "-A VPNFW-POSTROUTING -o tun0 -j MASQUERADE" in v6


def test_ctstate_list_is_one_value_and_may_be_negated_whole(tmp_path):
    assert user_lines(tmp_path, "chain INPUT mod conntrack ctstate ! (NEW INVALID) ACCEPT;") == [
        "-A VPNFW-INPUT -m conntrack ! --ctstate INVALID,NEW -j ACCEPT"]


@pytest.mark.parametrize("text", ["198.51.100.7:1194/udp", "[2001:DB8:0::7]:443/tcp", "10.0.0.1:65535/tcp",
                                  "[::1]:1/udp", "0.0.0.0:53/udp", "[2001:db8::]:7/tcp", "1.2.3.4:01/udp"])
def test_endpoint_short_cut_agrees_with_the_general_way(text):
    from vpnfw import values
    from vpnfw.errors import Pos
    from vpnfw.parser import Atom
    atom = Atom("word", text, Pos("f", 1, 1))
    assert values.endpoint(atom) == values._endpoint(atom)


@pytest.mark.parametrize("text", ["01.2.3.4:1194/udp", "1.2.3.4:65536/udp", "1.2.3:80/tcp", "[2001:db8::g]:1/udp",
                                  "1.2.3.4:0/udp"])
def test_endpoint_short_cut_leaves_errors_to_the_general_way(text):
    from vpnfw import values
    from vpnfw.errors import Pos
    from vpnfw.parser import Atom
    with pytest.raises(ConfigError):
        values.endpoint(Atom("word", text, Pos("f", 1, 1)))


# -- ferm's language: includes, functions, conditions, @resolve, warnings ------------
def test_include_a_file_and_a_directory_relative_to_the_including_file(tmp_path):
    extra = {"vars.ferm": "@def $WEB = (80 443);\n@def &SSH() = proto tcp dport ssh;\n"}
    d = write_config(tmp_path / "c", {"30_user.conf": "@include 'vars.ferm';\n@include 'rules.d/';\n"
                                                      "chain INPUT { @include 'inner.ferm'; }\n", **extra,
                                      "inner.ferm": "&SSH() ACCEPT;\n"})
    write_config(tmp_path / "c" / "rules.d", {"10-web": "chain INPUT proto tcp dport $WEB ACCEPT;\n",
                                              "20-dns": "chain INPUT proto udp dport 53 ACCEPT;\n",
                                              ".hidden": "this is no rule\n", "20-dns~": "nor this\n"})
    rules = [rule_line(r) for r in compile_config(d).ruleset["ip"]
             if r.chain == "INPUT" and "dport" in rule_line(r) and "sport" not in rule_line(r)]
    assert rules == ["-A VPNFW-INPUT -p tcp -m tcp --dport 80 -j ACCEPT", "-A VPNFW-INPUT -p tcp -m tcp --dport 443 -j ACCEPT",
                     "-A VPNFW-INPUT -p udp -m udp --dport 53 -j ACCEPT", "-A VPNFW-INPUT -p tcp -m tcp --dport 22 -j ACCEPT"]


def test_an_included_file_others_may_write_is_refused(tmp_path):
    d = write_config(tmp_path / "c", {"30_user.conf": "@include 'open.ferm';\n", "open.ferm": "chain INPUT ACCEPT;\n"})
    os.chmod(os.path.join(d, "open.ferm"), 0o666)
    with pytest.raises(ConfigError, match=r"open.ferm:1:1: the config file is writable by group or others"):
        compile_config(d)


def test_an_include_cycle_is_refused(tmp_path):
    d = write_config(tmp_path / "c", {"30_user.conf": "@include 'a.ferm';\n", "a.ferm": "@include 'b.ferm';\n",
                                      "b.ferm": "@include 'a.ferm';\n"})
    with pytest.raises(ConfigError, match=r"b.ferm:1:1: .*a.ferm includes itself"):
        compile_config(d)


def test_functions_conditions_and_builtins(tmp_path):
    text = """@def &ALLOW($proto, $port) = { chain INPUT proto $proto dport $port ACCEPT; }
&ALLOW(tcp, (ssh 8080));
@def $EXTRA = 0;
@if $EXTRA &ALLOW(udp, 53); @else chain INPUT proto udp dport 54 ACCEPT;
domain (ip ip6) chain OUTPUT @if @eq($DOMAIN, ip6) proto ipv6-icmp ACCEPT;
chain OUTPUT mod comment comment @cat(@substr("abcdef", 1, 3), '-', @length(xyz)) ACCEPT;
"""
    assert user_lines(tmp_path, text, "ip") == [
        "-A VPNFW-INPUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A VPNFW-INPUT -p tcp -m tcp --dport 8080 -j ACCEPT",
        "-A VPNFW-INPUT -p udp -m udp --dport 54 -j ACCEPT", '-A VPNFW-OUTPUT -m comment --comment bcd-3 -j ACCEPT']
    assert "-A VPNFW-OUTPUT -p ipv6-icmp -j ACCEPT" in user_lines(tmp_path / "6", text, "ip6")


def test_policy_accept_is_a_warning_and_the_rest_loads(tmp_path):
    compiled = compile_text(tmp_path, "chain INPUT policy ACCEPT;\nchain OUTPUT policy DROP;\n"
                                      "chain INPUT proto tcp dport 22 ACCEPT;\n")
    err = said(compiled)
    assert "30_user.conf:1:13: warning: policy ACCEPT for chain INPUT is not applied" in err
    assert "policy ACCEPT for chain OUTPUT" not in err
    assert "-A VPNFW-INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in [rule_line(r) for r in compiled.ruleset["ip"]]


@pytest.mark.parametrize("rule,warned", [
    ("table mangle chain OUTPUT MARK set-mark 0x10000001;", "MARK here sets bit 0x10000000"),
    ("table mangle chain OUTPUT MARK set-mark 5;", None),  # clearing the packet bit weakens nothing
    ("table mangle chain PREROUTING CONNMARK set-mark 7;", "CONNMARK here clears bit 0x20000000"),
    ("table mangle chain PREROUTING CONNMARK set-xmark 7/0xff;", None),
    ("table mangle chain POSTROUTING CONNMARK save-mark;", "CONNMARK here clears bit 0x20000000"),
    ("table mangle chain POSTROUTING CONNMARK save-mark mask 0xffff;", None),
])
def test_marks_that_would_undo_the_kill_switchs_bits_are_warned_of(tmp_path, rule, warned):
    err = said(compile_text(tmp_path, rule))
    if warned:
        assert "30_user.conf:1:" in err and warned in err, err
    else:
        assert "30_user.conf:1:" not in err, err


def test_resolve_uses_the_pinned_addresses_and_never_resolves(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir()
    (state / "pinned.json").write_text('{"www.example.net": {"addresses": ["192.0.2.80", "2001:db8::80"], '
                                       '"resolved": 1}}')
    monkeypatch.setenv("VPN_FIREWALL_STATE_DIR", str(state))
    text = ("chain OUTPUT daddr @resolve(www.example.net) proto tcp dport 443 ACCEPT;\n"
            "chain OUTPUT daddr @resolve(www.example.net, AAAA) proto tcp dport 80 ACCEPT;\n"
            "chain OUTPUT daddr @resolve(new.example.net) proto tcp dport 25 ACCEPT;\n")
    compiled = compile_text(tmp_path, text)
    lines = [rule_line(r) for fam in ("ip", "ip6") for r in compiled.ruleset[fam] if "--dport 443" in rule_line(r)
             or "--dport 80" in rule_line(r) or "--dport 25 " in rule_line(r)]
    assert lines == ["-A VPNFW-OUTPUT -d 192.0.2.80/32 -p tcp -m tcp --dport 443 -j ACCEPT",
                     "-A VPNFW-OUTPUT -d 2001:db8::80/128 -p tcp -m tcp --dport 443 -j ACCEPT",
                     "-A VPNFW-OUTPUT -d 2001:db8::80/128 -p tcp -m tcp --dport 80 -j ACCEPT"]
    assert "30_user.conf:3:29: warning: new.example.net has never been resolved" in said(compiled)
    assert compiled.resolving == ("new.example.net", "www.example.net")


def test_a_function_tree_too_big_to_compile_is_refused_not_waited_for(tmp_path):
    text = "".join(f"@def &F{k}() = {{ &F{k + 1}(); &F{k + 1}(); }}\n" for k in range(16)) + "@def &F16() = { }\n&F0();\n"
    message = error_of(tmp_path, text)
    assert re.search(r"30_user.conf:\d+:\d+: &F\d+: more than 20000 function calls in all", message), message
