#!/bin/sh
# NetworkManager's OpenVPN through the kill switch, inside the booted guest (guest-check.sh
# runs this for the nm scenarios). On the other end of the cable, the test's namespace: the
# LAN's router and resolver 198.18.0.2, the VPN server 192.0.2.10:1194/udp, a web server
# 192.0.2.80 and 2001:db8:80::80, and the resolver behind the tunnel 192.0.2.53 (the LAN's
# answers web.example with 198.18.0.66, the tunnel's with 192.0.2.80: a lookup says which
# one answered). What the guest sent is counted there; here each step's outcome is noted.
set -u
R=/root/results
P="python3 /root/netprobe.py"
SCENARIO=$(cat /root/scenario)
note() { echo "$1=$2" >> $R/nm; }
fetches() { echo "$($P tcp 192.0.2.80 80) $($P tcp 2001:db8:80::80 80)"; }
lookup() { getent ahostsv4 web.example | awk 'NR == 1 {print $1}'; }
state() { nmcli -g GENERAL.STATE connection show work 2>/dev/null; }
until_active() {
    for i in $(seq 150); do [ "$(state)" = activated ] && return 0; sleep 0.2; done
    return 1
}
until_fetched() {
    for i in $(seq 50); do [ "$(fetches)" = "ok ok" ] && return 0; sleep 0.2; done
    return 1
}
up() { nmcli --wait 60 connection up work >> $R/nmcli.log 2>&1; echo $?; }
# What programs send while the VPN goes away: UDP to the web server in both families, TCP
# connections and name lookups, for $1 seconds.
traffic() {
    $P flood 192.0.2.80 9 2000 "$1" > /dev/null &
    $P flood 2001:db8:80::80 9 2000 "$1" > /dev/null &
    end=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt $end ]; do
        $P tcp 192.0.2.80 80 > /dev/null
        getent ahostsv4 web.example > /dev/null
        sleep 0.1
    done
    wait
}

nm-online -s -q -t 60
note nm_online $?
case "$SCENARIO" in
nm | nm-control)
    if [ "$SCENARIO" = nm-control ]; then
        vpn-firewall unload --force > $R/unload.log 2>&1
        note unloaded $?
    else
        # the user's one step: the kill switch follows NetworkManager's connections from now on
        systemctl enable --now vpn-firewall-client-configs.path > $R/enable.log 2>&1
    fi
    nmcli connection import type openvpn file /root/work.ovpn > $R/import.log 2>&1
    note imported $?
    for i in $(seq 100); do
        iptables-save | grep -q -- "-d 192.0.2.10/32 -p udp -m udp --dport 1194 -j VPNFW-SERVER-FLOW" && break
        sleep 0.1
    done
    iptables-save > $R/imported.save 2>&1
    note up1 "$(up)"
    until_fetched
    note fetch1 "$(fetches)"
    note dns1 "$(lookup)"
    cp /etc/resolv.conf $R/resolv-up
    ss -Huanpe > $R/sockets-up 2>&1
    note nm_openvpn_uid "$(id -u nm-openvpn)"

    # the client killed: NetworkManager puts the LAN's routes and resolver back
    traffic 4 &
    sleep 1
    kill -9 "$(pidof openvpn)"
    wait
    note after_kill "$(state)"
    ip route > $R/routes-after-kill 2>&1
    cp /etc/resolv.conf $R/resolv-after-kill

    note up2 "$(up)"
    until_fetched
    note fetch2 "$(fetches)"
    # openvpn's own soft restart (as after ping-restart): the new socket is nm-openvpn's
    kill -USR1 "$(pidof openvpn)"
    sleep 2
    until_active
    until_fetched
    note fetch3 "$(fetches)"
    ss -Huanpe > $R/sockets-soft-restart 2>&1

    # brought down in order
    traffic 4 &
    sleep 1
    nmcli connection down work > $R/down.log 2>&1
    note down $?
    wait

    note up3 "$(up)"
    until_fetched
    note fetch4 "$(fetches)"
    note dns4 "$(lookup)"
    # from the next boot on, the VPN comes up with the wired connection
    nmcli connection modify lan connection.secondaries "$(nmcli -g connection.uuid connection show work)" \
        > $R/secondary.log 2>&1
    note secondary $?
    ;;
nm-again)
    until_active
    note at_boot $?
    until_fetched
    note fetch_boot "$(fetches)"
    note dns_boot "$(lookup)"
    journalctl -b -u NetworkManager --no-pager -o short-monotonic > $R/nm-journal 2>&1
    ;;
esac
journalctl -b -u vpn-firewall.service -u vpn-firewall-client-configs.service -u vpn-firewall-guard.service \
    --no-pager -o cat > $R/vpn-firewall-journal 2>&1
