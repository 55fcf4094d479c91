"""$VPN_CLIENT_CONFIGS: the servers that OpenVPN and WireGuard configs name become VPN
servers; errors carry the VPN config's own file:line; keys are never printed; and a real
OpenVPN client, whose only server is the one its config names, connects through the kill
switch."""

import os
import shutil
import sys

import pytest

from conftest import needs_root, said, write_config
from vpnfw.pipeline import compile_config
from vpnfw.errors import ConfigError
from vpnfw.render import rule_line

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

SECRET = "cGxlYXNlIGRvIG5vdCBwcmludCBtZQ=="
PROVIDER_OVPN = f"""\
# a provider's file, as they ship them
client
dev tun
proto udp
port 1196
remote nl1.vpn.example.net
remote 198.51.100.20 443 tcp
remote-random
resolv-retry infinite
<connection>
remote 198.51.100.30 1195
proto tcp-client
</connection>
<connection>
remote 2001:db8::30
</connection>
<ca>
-----BEGIN CERTIFICATE-----
remote 192.0.2.66 66
-----END CERTIFICATE-----
</ca>
<key>
{SECRET}
</key>
"""
WIREGUARD = f"""\
[Interface]
PrivateKey = {SECRET}
Address = 10.64.0.2/32

[Peer]
PublicKey = {SECRET}
Endpoint = 203.0.113.5:51820
AllowedIPs = 0.0.0.0/0

[Peer]
Endpoint = [2001:db8::5]:51821

[Peer]
endpoint = wg.example.net:51822
"""


def vpn_config(directory, name, text, mode=0o600):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def compile_with(tmp_path, patterns, **kw):
    listed = " ".join(f'"{p}"' for p in patterns)
    conf = write_config(tmp_path / "conf", {"30_user.conf": f"@def $VPN_CLIENT_CONFIGS = ({listed});\n"})
    return compile_config(conf, **kw)


def server_rules(compiled, family):
    return [rule_line(r) for r in compiled.ruleset[family] if r.chain == "OUTPUT" and "-d " in rule_line(r)
            and " -o " not in rule_line(r) and "--dport 53 " not in rule_line(r) and "--sport" not in rule_line(r)
            and "icmp" not in rule_line(r) and "/8 " not in rule_line(r) and "/16 " not in rule_line(r)
            and "/12 " not in rule_line(r) and "/10 " not in rule_line(r)]


def test_openvpn_and_wireguard_endpoints_become_vpn_servers(tmp_path, monkeypatch):
    d = str(tmp_path / "vpn")
    vpn_config(d, "provider-nl.ovpn", PROVIDER_OVPN)
    vpn_config(d, "wg0.conf", WIREGUARD)
    state = tmp_path / "state"
    state.mkdir()
    (state / "pinned.json").write_text('{"nl1.vpn.example.net": {"addresses": ["198.51.100.10"], "resolved": 1}}')
    monkeypatch.setenv("VPN_FIREWALL_STATE_DIR", str(state))
    compiled = compile_with(tmp_path, [f"{d}/*.ovpn", f"{d}/wg*.conf"])
    assert server_rules(compiled, "ip") == [
        "-A VPNFW-OUTPUT -d 198.51.100.10/32 -p udp -m udp --dport 1196 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.20/32 -p tcp -m tcp --dport 443 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.30/32 -p tcp -m tcp --dport 1195 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 203.0.113.5/32 -p udp -m udp --dport 51820 -j VPNFW-SERVER-FLOW",
    ]
    assert server_rules(compiled, "ip6") == [
        "-A VPNFW-OUTPUT -d 2001:db8::30/128 -p udp -m udp --dport 1196 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 2001:db8::5/128 -p udp -m udp --dport 51821 -j VPNFW-SERVER-FLOW",
    ]
    # the host names are for refresh to pin, as in $VPN_SERVERS
    hosts = sorted(ep.host for ep in compiled.settings.vpn_servers if ep.host)
    assert hosts == ["nl1.vpn.example.net", "wg.example.net"]


BAD = [
    ("client\nremote 198.51.100.1 99999\n", "bad.ovpn:2:1: expected a port from 1 to 65535"),
    ("client\nremote 198.51.100.1 1194 quic\n", "bad.ovpn:2:1: expected a protocol"),
    ("client\n  remote\n", "bad.ovpn:2:3: expected 'remote HOST [PORT] [PROTO]'"),
    ("proto tcp-server\n", "bad.ovpn:1:1: 'proto tcp-server' is a server's config"),
    ("port eleven\n", "bad.ovpn:1:1: expected 'port NUMBER'"),
    ("<connection>\nremote 198.51.100.1\n", "bad.ovpn:2:1: a '<connection>' block is never closed"),
    ("remote 198.51.100.\n", "bad.ovpn:1:1: expected an address"),
    ("remote 198.51.100.1\n</connection>\n", "bad.ovpn:2:1: '</connection>' without '<connection>'"),
    ("remote 198.51.100.1 port\n", "bad.ovpn:1:1: expected a port after the host"),
    (f"[Interface]\nPrivateKey = {SECRET}\n[Peer]\nEndpoint = 203.0.113.5\n",
     "bad.ovpn:4:12: expected 'Endpoint = HOST:PORT'"),
]


def test_a_pattern_that_matches_nothing_is_a_warning(tmp_path):
    compiled = compile_with(tmp_path, [str(tmp_path / "none" / "*.conf")])
    assert "30_user.conf:1:29: warning: $VPN_CLIENT_CONFIGS: " in said(compiled)


def test_a_vpn_config_that_cannot_be_read_is_refused(tmp_path):
    d = tmp_path / "vpn"
    d.mkdir()
    (d / "gone.conf").symlink_to(tmp_path / "nowhere.conf")  # the pattern matches it; nothing is there
    with pytest.raises(ConfigError, match=r"gone.conf:1:1: cannot read this VPN client config"):
        compile_with(tmp_path, [f"{d}/*.conf"])


def test_a_vpn_config_others_may_write_is_refused(tmp_path):
    path = vpn_config(str(tmp_path / "vpn"), "open.conf", "remote 198.51.100.1\n", mode=0o666)
    with pytest.raises(ConfigError, match="a VPN client config that others may write"):
        compile_with(tmp_path, [path])


# NetworkManager keyfiles, as 'nmcli connection import' and the GUI write them
NM_OPENVPN = f"""\
[connection]
id=work
uuid=4a8c5a3e-0000-4000-8000-000000000001
type=vpn

[vpn]
ca=/etc/openvpn/ca.crt
connection-type=tls
port=1195
remote=198.51.100.40:1194, 198.51.100.41:443:tcp [2001:db8::40]:1196 nm.vpn.example.net
service-type=org.freedesktop.NetworkManager.openvpn

[vpn-secrets]
cert-pass={SECRET}

[ipv4]
method=auto
"""
NM_WIREGUARD = f"""\
[connection]
id=wg-home
type=wireguard
interface-name=wg1

[wireguard]
private-key={SECRET}

[wireguard-peer.{SECRET}]
endpoint=198.51.100.50:51820
allowed-ips=0.0.0.0/0;::/0;

[wireguard-peer.other]
endpoint=[2001:db8::50]:51821
"""
NM_OPENCONNECT = """\
[connection]
id=corp
type=vpn

[vpn]
gateway=198.51.100.60
protocol=anyconnect
service-type=org.freedesktop.NetworkManager.openconnect
"""
NM_WIFI = f"""\
[connection]
id=home
type=wifi

[wifi-security]
psk={SECRET}
"""
NETDEV = f"""\
[NetDev]
Name=wg2
Kind=wireguard

[WireGuard]
PrivateKey={SECRET}

[WireGuardPeer]
PublicKey={SECRET}
Endpoint=198.51.100.70:51820
AllowedIPs=0.0.0.0/0
"""


def test_networkmanager_and_networkd_keep_the_servers_we_read(tmp_path, monkeypatch):
    """Keyfiles of NetworkManager (OpenVPN: 'remote' with its port and protocol defaults;
    WireGuard peers; OpenConnect's gateway, TLS and DTLS) and .netdev files of
    systemd-networkd; a Wi-Fi connection names none."""
    nm, networkd = str(tmp_path / "nm"), str(tmp_path / "networkd")
    vpn_config(nm, "work.nmconnection", NM_OPENVPN)
    vpn_config(nm, "wg-home.nmconnection", NM_WIREGUARD)
    vpn_config(nm, "corp.nmconnection", NM_OPENCONNECT)
    vpn_config(nm, "home.nmconnection", NM_WIFI)
    vpn_config(networkd, "50-wg2.netdev", NETDEV, mode=0o640)
    compiled = compile_with(tmp_path, [f"{nm}/*.nmconnection", f"{networkd}/*.netdev"])
    assert server_rules(compiled, "ip") == [
        "-A VPNFW-OUTPUT -d 198.51.100.60/32 -p tcp -m tcp --dport 443 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.60/32 -p udp -m udp --dport 443 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.50/32 -p udp -m udp --dport 51820 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.40/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.41/32 -p tcp -m tcp --dport 443 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 198.51.100.70/32 -p udp -m udp --dport 51820 -j VPNFW-SERVER-FLOW",
    ]
    assert server_rules(compiled, "ip6") == [
        "-A VPNFW-OUTPUT -d 2001:db8::50/128 -p udp -m udp --dport 51821 -j VPNFW-SERVER-FLOW",
        "-A VPNFW-OUTPUT -d 2001:db8::40/128 -p udp -m udp --dport 1196 -j VPNFW-SERVER-FLOW",
    ]
    assert [ep.host for ep in compiled.settings.vpn_servers if ep.host] == ["nm.vpn.example.net"]
    assert SECRET not in said(compiled)


NM_BAD = [
    (NM_OPENVPN.replace("198.51.100.41:443:tcp", "198.51.100.41:443:quic"), "work.nmconnection:10:28: expected a protocol"),
    (NM_OPENVPN.replace("198.51.100.41:443:tcp", "198.51.100.41:https"), "work.nmconnection:10:28: expected HOST[:PORT"),
    (NM_OPENVPN.replace("198.51.100.40:1194", "198.51.100.:1194"), "work.nmconnection:10:8: expected an address"),
    (NM_WIREGUARD.replace("endpoint=198.51.100.50:51820", "endpoint=198.51.100.50"),
     "work.nmconnection:10:10: expected HOST:PORT"),
    (NETDEV.replace("Endpoint=198.51.100.70:51820", "Endpoint=198.51.100.70:99999"),
     "work.nmconnection:10:10: expected a port from 1 to 65535"),
]


BAD += NM_BAD  # the OpenVPN and WireGuard files' errors above, the keyfiles' here: one test


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1].split(": ", 1)[1][:40] for b in BAD])
def test_a_line_that_cannot_be_understood_is_refused_with_its_place(tmp_path, text, expected):
    path = vpn_config(str(tmp_path / "vpn"), expected.split(":")[0], text)  # bad.ovpn or a keyfile
    with pytest.raises(ConfigError) as info:
        compile_with(tmp_path, [path])
    message = str(info.value)
    assert message.startswith(path + ":") and expected in message, message
    assert SECRET not in message


def test_files_that_name_no_server_are_a_warning(tmp_path):
    nm = str(tmp_path / "nm")
    vpn_config(nm, "home.nmconnection", NM_WIFI)
    compiled = compile_with(tmp_path, [f"{nm}/*.nmconnection"])
    assert ("30_user.conf:1:29: warning: $VPN_CLIENT_CONFIGS: the files " in said(compiled)
            and "name no VPN server" in said(compiled)), said(compiled)
    assert SECRET not in said(compiled)


@needs_root
@pytest.mark.skipif(not shutil.which("openvpn"), reason="needs openvpn")
def test_the_client_whose_config_names_the_only_server_connects(tmp_path):
    work = str(tmp_path)
    os.chmod(work, 0o755)
    bed = T.Testbed(work, T.PKI(work), config=T.BASE_CONFIG.replace(
        f"@def $VPN_SERVERS = ({T.ROUTER_V4}:{T.VPN_PORT}/udp);", "@def $VPN_SERVERS = ();"))
    try:
        bed.up(vpn=False)
        bed.write_config(bed.config + f'@def $VPN_CLIENT_CONFIGS = ("{bed.workdir}/client.conf");\n')
        bed.start_vpn_server()
        bed.start_vpn_client(wait=False)  # writes client.conf; it cannot connect yet
        assert f"-d {T.ROUTER_V4}/32" not in bed.in_ns(bed.client, ["iptables-save"]).stdout
        out = bed.loader("reload")  # what the path unit does when a client config changes
        assert out.returncode == 0, out.stderr
        assert f"-A VPNFW-OUTPUT -d {T.ROUTER_V4}/32 -p udp -m udp --dport {T.VPN_PORT} -j VPNFW-SERVER-FLOW" in \
            bed.in_ns(bed.client, ["iptables-save"]).stdout
        bed.wait_tunnel()
        assert bed.fetch(T.WEB_V4).startswith("10.8.0.")
        assert bed.leaks() == []
    finally:
        bed.down()
