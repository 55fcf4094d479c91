"""Runs inside the booted guest: UDP to "the internet" (IPv4 and IPv6 documentation
addresses, routed out of eth0) as fast as it can, until /root/stop-flood appears; then
writes how many sends the kernel took and refused to /root/results/flood."""

import os
import socket
import time

targets = [(socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET6, ("2001:db8:ffff::1", 9))]
sockets = [(socket.socket(family, socket.SOCK_DGRAM), address) for family, address in targets]
taken = refused = 0
while not os.path.exists("/root/stop-flood"):
    for sock, address in sockets:
        try:
            sock.sendto(b"leak?", address)
            taken += 1
        except OSError:
            refused += 1
    time.sleep(0.0002)
with open("/root/results/flood", "w") as f:
    f.write(f"taken={taken}\nrefused={refused}\n")
