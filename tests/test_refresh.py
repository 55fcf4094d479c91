"""Host-name endpoints: `vpn-firewall refresh` resolves them through a narrow, passing DNS
allowance, pins the addresses, and the VPN can then connect; nothing else leaves."""

import json
import os
import shutil
import sys

import pytest

from conftest import BACKENDS, needs_root

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
import testbed as T  # noqa: E402

pytestmark = [needs_root, pytest.mark.skipif(not shutil.which("openvpn"), reason="needs openvpn")]
CONFIG = T.BASE_CONFIG.replace(f"{T.ROUTER_V4}:{T.VPN_PORT}/udp", f"vpn.example.net:{T.VPN_PORT}/udp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_refresh_pins_and_the_vpn_connects(tmp_path, backend):
    work = str(tmp_path)
    os.chmod(work, 0o755)
    bed = T.Testbed(work, T.PKI(work), backend=backend, config=CONFIG.replace(
        f"@def $DNS_SERVERS = ({T.TUNNEL_DNS});\n", "")
        + "chain OUTPUT daddr @resolve(www.example.net, A) proto tcp dport 8080 ACCEPT;\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {T.ROUTER_V4}\n")
    bed.env.update(VPN_FIREWALL_STATE_DIR=str(tmp_path / "state"), VPN_FIREWALL_RESOLV_CONF=str(resolv))
    try:
        bed.up(vpn=False)
        assert "-A VPNFW-OUTPUT -d 198.19.0.254/32" not in bed.in_ns(bed.client, ["iptables-save"]).stdout
        assert bed.probe("dns", T.ROUTER_V4) == "error:EPERM", "DNS outside the tunnel is closed"
        assert "--dport 8080" not in bed.in_ns(bed.client, ["iptables-save"]).stdout, "@resolve: not yet pinned"
        out = bed.loader("refresh")
        assert out.returncode == 0, out.stderr
        assert "vpn.example.net: 198.19.0.254" in out.stderr
        assert "www.example.net: 198.18.0.10" in out.stderr, "@resolve's names are refreshed too"
        assert "-A VPNFW-OUTPUT -d 198.18.0.10/32 -p tcp -m tcp --dport 8080 -j ACCEPT" in \
            bed.in_ns(bed.client, ["iptables-save"]).stdout
        pins = json.loads((tmp_path / "state" / "pinned.json").read_text())
        assert pins["vpn.example.net"]["addresses"] == ["198.19.0.254"]
        save = bed.in_ns(bed.client, ["iptables-save"]).stdout
        assert "-A VPNFW-OUTPUT -d 198.19.0.254/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" in save
        assert "vpn-firewall refresh" not in save, "the DNS allowance is gone"
        assert bed.probe("dns", T.ROUTER_V4) == "error:EPERM", "and DNS is closed again"
        bed.start_vpn_server()
        bed.start_vpn_client()  # waits for the tunnel
        assert bed.fetch(T.WEB_V4).startswith("10.8.0.")
        # only the refresh's DNS to the resolver and the VPN flow left the client
        refresh_dns = lambda f: f.dst == T.ROUTER_V4 and f.dport == 53  # noqa: E731
        assert bed.leaks(allow=refresh_dns) == []
        assert any(refresh_dns(f) for f in T.read_pcap(bed.pcap)), "the refresh really asked the resolver"
    finally:
        bed.down()


def test_refresh_without_host_names_only_reloads(tmp_path, netns):
    from conftest import run_loader, write_config
    ns = netns("refresh")
    conf = write_config(tmp_path / "c", {"30_user.conf": "@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n"})
    out = run_loader(["--config-dir", conf, "refresh"], env={"VPN_FIREWALL_STATE_DIR": str(tmp_path / "s")},
                     netns=ns.name)
    assert out.returncode == 0, out.stderr
    assert "$VPN_SERVERS and @resolve name no host: nothing to refresh" in out.stderr
    assert not (tmp_path / "s").exists()
    assert "-A VPNFW-OUTPUT -d 198.51.100.7/32" in ns.save("ip")


def test_refresh_with_no_resolver_fails_and_says_why(tmp_path, netns):
    from conftest import run_loader, write_config
    ns = netns("noresolver")
    conf = write_config(tmp_path / "c", {"30_user.conf": "@def $VPN_SERVERS = (vpn.example.net:1194/udp);\n"})
    empty = tmp_path / "resolv.conf"
    empty.write_text("# nothing\n")
    out = run_loader(["--config-dir", conf, "refresh"], netns=ns.name,
                     env={"VPN_FIREWALL_STATE_DIR": str(tmp_path / "s"), "VPN_FIREWALL_RESOLV_CONF": str(empty)})
    assert out.returncode == 1 and "no DNS server to ask" in out.stderr
