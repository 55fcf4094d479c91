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
echo done > $R/done
