"""PPTP and IPsec: the examples vpn-firewall.conf(5) gives are loaded into a kernel (in a
namespace) and read back. Their traffic needs what this kernel may lack (PPP and GRE for
PPTP, the ESP transform for IPsec): where it does, the test of the traffic skips and says so."""

import os
import re
import subprocess
import textwrap

import pytest

from conftest import ROOT, needs_root, run_loader, write_config

pytestmark = [needs_root]
MAN = os.path.join(ROOT, "man", "vpn-firewall.conf.5.rst")


def man_example(title: str) -> str:
    """The literal block after the man page's paragraph that begins with title."""
    text = open(MAN).read()
    start = text.index("\n" + title)
    block = text[text.index("::\n\n", start) + 4:]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


EXAMPLES = {
    "PPTP": ("PPTP (", ["-A VPNFW-OUTPUT -d 198.51.100.7/32 -p tcp -m tcp --dport 1723 -j VPNFW-SERVER-FLOW",
                        "-d 198.51.100.7/32 -p gre -j ACCEPT", "-o ppp+"]),
    "IPsec": ("IPsec (", ["-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 500 -j VPNFW-SERVER-FLOW",
                          "-A VPNFW-OUTPUT -d 198.51.100.7/32 -p udp -m udp --dport 4500 -j VPNFW-SERVER-FLOW",
                          "-d 198.51.100.7/32 -p esp -j ACCEPT", "-m policy --dir out --pol ipsec -j ACCEPT"]),
}


@pytest.mark.parametrize("client", list(EXAMPLES))
def test_the_man_pages_example_loads(tmp_path, netns, client):
    title, expected = EXAMPLES[client]
    conf = write_config(tmp_path / "conf", {"30_user.conf": man_example(title)})
    ns = netns(client.lower())
    out = run_loader(["--config-dir", conf, "start"], netns=ns.name)
    assert out.returncode == 0, out.stderr
    saved = ns.save()
    for rule in expected:
        assert rule in saved, f"{rule!r} not loaded:\n{saved}"


def kernel_says(*commands) -> str:
    """What a fresh namespace's kernel says to commands (empty when all succeed)."""
    out = subprocess.run(["unshare", "-n", "sh", "-ec", "; ".join(commands)], capture_output=True, text=True)
    return out.stderr.strip() if out.returncode else ""


def test_ipsec_traffic_needs_the_kernels_esp():
    refused = kernel_says("ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode tunnel "
                          "enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff "
                          "auth 'hmac(sha256)' 0x" + "00112233445566778899aabbccddeeff" * 2)
    if refused:
        pytest.skip(f"this kernel cannot run IPsec's traffic (an ESP state: {refused!r}): "
                    "only the rules are tested (test_the_man_pages_example_loads)")
    pytest.skip("this kernel has ESP, but no strongSwan test bed is written yet: only the rules are tested")


def test_pptp_traffic_needs_the_kernels_ppp_and_gre():
    refused = kernel_says("ip link add g type gre remote 192.0.2.2 local 192.0.2.1", "test -c /dev/ppp")
    if refused or not os.path.exists("/dev/ppp"):
        pytest.skip(f"this kernel cannot run PPTP's traffic (GRE and /dev/ppp: {refused or 'no /dev/ppp'!r}): "
                    "only the rules are tested (test_the_man_pages_example_loads)")
    pytest.skip("this kernel has GRE and PPP, but no PPTP test bed is written yet: only the rules are tested")


def test_the_examples_are_found_in_the_man_page():
    for title, _ in EXAMPLES.values():
        assert re.match(r"@def \$VPN_SERVERS", man_example(title)), man_example(title)
