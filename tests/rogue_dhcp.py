"""Test helper: a rogue DHCP server, as on a hotel's LAN. It leases one address and names
whatever host it is told as its server identifier, so that the client sends its renewals
there (an internet host, outside the tunnel).

    rogue_dhcp.py IFACE SERVER_ID LEASED_ADDR ROUTER

Prints "ready", then one line per message it answers.
"""

import socket
import struct
import sys

DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
COOKIE = b"\x63\x82\x53\x63"


def options(packet: bytes) -> dict:
    found, i = {}, 240
    while i < len(packet) and packet[i] != 255:
        if packet[i] == 0:
            i += 1
            continue
        code, length = packet[i], packet[i + 1]
        found[code] = packet[i + 2:i + 2 + length]
        i += 2 + length
    return found


def reply(request: bytes, kind: int, server_id: str, leased: str, router: str) -> bytes:
    xid, flags, chaddr = request[4:8], request[10:12], request[28:44]
    header = struct.pack("!BBBB", 2, 1, 6, 0) + xid + b"\0\0" + flags + b"\0" * 4
    header += socket.inet_aton(leased) + b"\0" * 8 + chaddr + b"\0" * 192
    opts = bytes([53, 1, kind]) + bytes([54, 4]) + socket.inet_aton(server_id)
    opts += bytes([51, 4]) + struct.pack("!I", 120) + bytes([1, 4]) + socket.inet_aton("255.255.255.0")
    opts += bytes([3, 4]) + socket.inet_aton(router) + b"\xff"
    return header + COOKIE + opts


def main(iface, server_id, leased, router):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("0.0.0.0", 67))
    print("ready", flush=True)
    while True:
        packet, peer = s.recvfrom(4096)
        if len(packet) < 240 or packet[236:240] != COOKIE:
            continue
        kind = options(packet).get(53, b"\0")[0]
        if kind not in (DISCOVER, REQUEST):
            continue
        answer = reply(packet, OFFER if kind == DISCOVER else ACK, server_id, leased, router)
        s.sendto(answer, ("255.255.255.255", 68))
        print(f"{'offer' if kind == DISCOVER else 'ack'} to {peer[0]}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
