"""The "internet" of the test bed, run in its namespace: a web server that answers with the
source address it sees (port 80, both families), a TCP sink (port 9000) and a DNS server
that answers every A query with 198.18.0.10, but vpn.example.net with the VPN server's
address (on 198.18.0.53, on the router and on the VPN server's tunnel address)."""

import socket
import struct
import threading

IP_FREEBIND = 15  # bind before the tunnel address exists


def listener(port: int):
    """A TCP socket on every address of both families."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)
    return s


def web():
    s = listener(80)
    while True:
        conn, peer = s.accept()
        try:
            conn.settimeout(2)
            conn.recv(1024)
            addr = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + addr.encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()


def sink():
    s = listener(9000)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=_drain, args=(conn,), daemon=True).start()


def _drain(conn):
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass


def dns(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    s.bind((addr, 53))
    while True:
        query, peer = s.recvfrom(512)
        if len(query) < 12:
            continue
        question = query[12:]
        end = question.index(b"\x00") + 5
        header = query[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        qname, qtype = question[:end - 4], struct.unpack("!H", question[end - 4:end - 2])[0]
        address = "198.19.0.254" if qname == b"\x03vpn\x07example\x03net\x00" else "198.18.0.10"
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        if qtype != 1:  # only A records here: an empty answer
            header, answer = header[:6] + b"\x00\x00" + header[8:], b""
        try:
            s.sendto(header + question[:end] + answer, peer)
        except OSError:  # no route back to that client: its problem, not the server's
            pass


if __name__ == "__main__":
    threading.Thread(target=web, daemon=True).start()
    threading.Thread(target=sink, daemon=True).start()
    for address in ("198.18.0.53", "198.19.0.254", "10.8.0.1"):
        threading.Thread(target=dns, args=(address,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
