"""vpn-firewall: compile ferm-style config into a fail-closed VPN kill switch."""

VERSION = "0.2.0"
