#!/bin/sh
# Runs inside the booted guest (systemd as PID 1), after multi-user.target: records what
# the unit did and when, then, for the "install" scenario, installs, configures, upgrades,
# removes and purges the package in the running system. Results go to /root/results/.
set -u
R=/root/results
mkdir -p $R
show() { systemctl show -P "$2" "$1"; }

{
    echo "result=$(show vpn-firewall.service Result)"
    echo "active=$(systemctl is-active vpn-firewall.service)"
    echo "exit_status=$(show vpn-firewall.service ExecMainStatus)"
    echo "fw_exit=$(show vpn-firewall.service ExecMainExitTimestampMonotonic)"
    echo "netpre=$(show network-pre.target ActiveEnterTimestampMonotonic)"
    echo "networking_start=$(show networking.service ExecMainStartTimestampMonotonic)"
    echo "fw_start=$(show vpn-firewall.service ExecMainStartTimestampMonotonic)"
    echo "nft_exit=$(show nftables.service ExecMainExitTimestampMonotonic)"
    echo "nft_result=$(show nftables.service Result)"
    echo "guard_active=$(systemctl is-active vpn-firewall-guard.service)"
    echo "guard_result=$(show vpn-firewall-guard.service Result)"
    echo "guard_ready=$(show vpn-firewall-guard.service ActiveEnterTimestampMonotonic)"
    echo "guard_restarts=$(show vpn-firewall-guard.service NRestarts)"
    echo "fw_inactive=$(show vpn-firewall.service InactiveEnterTimestampMonotonic)"
    echo "tmpfiles_start=$(show systemd-tmpfiles-setup.service InactiveExitTimestampMonotonic)"
    echo "tmpfiles_exit=$(show systemd-tmpfiles-setup.service ExecMainExitTimestampMonotonic)"
    echo "system=$(systemctl is-system-running)"
    echo "failed_units=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
} > $R/boot
iptables-save > $R/boot-ip.save 2>&1
ip6tables-save > $R/boot-ip6.save 2>&1
ip -o addr show > $R/addr 2>&1
journalctl -b -u vpn-firewall.service -u vpn-firewall-guard.service --no-pager -o cat > $R/journal 2>&1

if [ "$(cat /root/scenario)" = install ]; then
    dpkg -i /root/vpn-firewall.deb > $R/install.log 2>&1
    echo "install_active=$(systemctl is-active vpn-firewall.service)" >> $R/boot
    echo "install_enabled=$(systemctl is-enabled vpn-firewall.service)" >> $R/boot
    echo "timer_enabled=$(systemctl is-enabled vpn-firewall-refresh.timer)" >> $R/boot
    echo "watcher_enabled=$(systemctl is-enabled vpn-firewall-client-configs.path)" >> $R/boot
    iptables-save > $R/install.save 2>&1
    vpn-firewall status > $R/install-status 2>&1
    systemctl start vpn-firewall-guard.service > $R/guard-unconfigured.log 2>&1
    echo "guard_start_unconfigured=$?" >> $R/boot
    sleep 1  # ready, then it ends
    echo "guard_unconfigured=$(systemctl is-active vpn-firewall-guard.service) $(show vpn-firewall-guard.service Result)" >> $R/boot
    printf '@def $VPN_SERVERS = (198.51.100.7:1194/udp);\n' > /etc/vpn-firewall/30_user.conf
    systemctl restart vpn-firewall.service
    echo "restart_active=$(systemctl is-active vpn-firewall.service)" >> $R/boot
    iptables-save > $R/restart.save 2>&1
    dpkg -i /root/vpn-firewall.deb > $R/upgrade.log 2>&1
    echo "upgrade_active=$(systemctl is-active vpn-firewall.service)" >> $R/boot
    iptables-save > $R/upgrade.save 2>&1
    dpkg -r vpn-firewall > $R/remove.log 2>&1
    echo "guard_after_remove=$(systemctl is-active vpn-firewall-guard.service)" >> $R/boot
    iptables-save > $R/remove.save 2>&1
    dpkg -P vpn-firewall > $R/purge.log 2>&1
    echo "purged_etc=$(ls -A /etc/vpn-firewall 2>&1)" >> $R/boot
fi
if [ "$(cat /root/scenario)" = keyfile ]; then
    # a VPN connection saved by NetworkManager (as nmcli or the desktop's settings write it),
    # then edited: the kill switch follows by itself (the path unit)
    K=/etc/NetworkManager/system-connections/work.nmconnection
    systemctl enable --now vpn-firewall-client-configs.path > $R/enable.log 2>&1
    printf '[connection]\nid=work\ntype=vpn\n\n[vpn]\nremote=198.51.100.44:1194\nservice-type=org.freedesktop.NetworkManager.openvpn\n' > $K.tmp
    chmod 600 $K.tmp && mv $K.tmp $K
    for i in $(seq 50); do iptables-save | grep -q 198.51.100.44 && break; sleep 0.1; done
    iptables-save > $R/keyfile-1.save 2>&1
    sleep 1.5  # a person's second edit; one made while a reload runs is caught by reload itself
    sed 's/198.51.100.44:1194/198.51.100.45:443:tcp/' $K > $K.tmp && chmod 600 $K.tmp && mv $K.tmp $K
    for i in $(seq 50); do iptables-save | grep -q 198.51.100.45 && break; sleep 0.1; done
    iptables-save > $R/keyfile-2.save 2>&1
    journalctl -b -u vpn-firewall-client-configs.service --no-pager -o cat > $R/keyfile.journal 2>&1
fi
if [ "$(cat /root/scenario)" = disable ]; then
    systemctl disable vpn-firewall.service > $R/disable.log 2>&1
fi
if [ "$(cat /root/scenario)" = upgrade ]; then
    # a way out for the flood: a router on the other end of the cable (static neighbours:
    # every frame the kill switch lets through reaches the wire)
    ip route add default via 198.18.0.2 dev eth0
    ip neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev eth0
    ip -6 addr add 2001:db8:0:1::1/64 dev eth0 nodad
    ip -6 route add default via 2001:db8:0:1::2 dev eth0
    ip -6 neigh replace 2001:db8:0:1::2 lladdr 02:00:00:00:00:02 dev eth0
    systemctl enable --now vpn-firewall-refresh.timer vpn-firewall-client-configs.path > $R/enable.log 2>&1
    echo "timer_before=$(systemctl is-active vpn-firewall-refresh.timer)" >> $R/boot
    echo "path_before=$(systemctl is-active vpn-firewall-client-configs.path)" >> $R/boot
    echo "guard_pid_before=$(show vpn-firewall-guard.service MainPID)" >> $R/boot
    python3 /root/flood.py &
    sleep 1
    dpkg -i /root/next.deb > $R/upgrade.log 2>&1
    echo "upgrade_status=$?" >> $R/boot
    sleep 1
    touch /root/stop-flood
    wait
    {
        echo "upgraded_active=$(systemctl is-active vpn-firewall.service)"
        echo "upgraded_fw_exit=$(show vpn-firewall.service ExecMainExitTimestampMonotonic)"
        echo "upgraded_guard_active=$(systemctl is-active vpn-firewall-guard.service)"
        echo "guard_pid_after=$(show vpn-firewall-guard.service MainPID)"
        echo "guard_stopping=$(show vpn-firewall-guard.service ActiveExitTimestampMonotonic)"
        echo "guard_ready_again=$(show vpn-firewall-guard.service ActiveEnterTimestampMonotonic)"
        echo "timer_after=$(systemctl is-active vpn-firewall-refresh.timer)"
        echo "path_after=$(systemctl is-active vpn-firewall-client-configs.path)"
        echo "version_after=$(vpn-firewall --version)"
        echo "status_after=$(vpn-firewall status > $R/status-after 2>&1; echo $?)"
        echo "guard_wanted_by=$(cd /etc/systemd/system && ls -d */vpn-firewall-guard.service | tr '\n' ' ')"
    } >> $R/boot
    iptables-save > $R/upgrade.save 2>&1
    journalctl -b -u vpn-firewall.service -u vpn-firewall-guard.service --no-pager -o cat > $R/journal 2>&1
    # control: without the kill switch the same sends reach the wire (to another address)
    vpn-firewall unload --force > $R/unload.log 2>&1
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b"x", ("192.0.2.2", 9)) for _ in range(5)]'
    sleep 0.5
fi
if [ "$(cat /root/scenario)" = bypass ]; then
    # $BYPASS_UNITS (test_bypass.py): the probe units ran at boot; a bystander tries the same
    python3 /root/send5.py bystander > $R/bystander 2>&1
    python3 /root/send5.py bystander-server 198.51.100.7 1194 >> $R/bystander 2>&1
    systemctl cat bypass-probe.service > $R/bypass-drop-in 2>&1
    journalctl -b -u bypass-probe.service -u other-probe.service --no-pager -o cat >> $R/journal 2>&1
    sleep 0.5
fi
if [ "$(cat /root/scenario)" = ansible ]; then
    # the role in contrib/ansible (test_ansible.py): a good drop-in, the same again, a bad one
    play() {
        (cd /root/ansible && ansible-playbook -i localhost, -c local -e ansible_become=false \
            -e @/root/vars-$1.yml site.yml) > $R/ansible-$2.log 2>&1
        echo "ansible_$2=$?" >> $R/boot
    }
    play good first
    play good again
    iptables-save > $R/ansible-good.save 2>&1
    play bad bad
    cat /etc/vpn-firewall/30_user.conf > $R/conf-after-bad 2>&1
    iptables-save > $R/ansible-bad.save 2>&1
    echo "active_after=$(systemctl is-active vpn-firewall.service)" >> $R/boot
fi
case "$(cat /root/scenario)" in
nm*) sh /root/guest-nm.sh ;;  # NetworkManager's OpenVPN (test_networkmanager.py)
esac
echo done > $R/done
