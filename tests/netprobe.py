"""Test helper run inside a namespace: a tiny echo server, or one probe of reachability.

    netprobe.py serve PORT... ADDR...    echo on tcp (any address) and udp (bound to each ADDR,
                                         so that replies come from the address asked)
    netprobe.py tcp ADDR PORT [DEVICE]   prints ok, refused, timeout or error:NAME
    netprobe.py udp ADDR PORT [DEVICE]   prints ok (an echo came back), refused, timeout or error:NAME
    netprobe.py http ADDR PORT [DEVICE]  prints the body of a GET (the address the server saw)
    netprobe.py dns SERVER               prints ok when an answer comes back
    netprobe.py flood ADDR PORT COUNT SECONDS   UDP sends, bounded by count and time
    netprobe.py stream ADDR PORT SECONDS        a TCP connection that keeps sending
    netprobe.py raw ADDR                 one UDP datagram from a raw socket
    netprobe.py udpfrom SPORT ADDR PORT  one UDP datagram from a given source port
    netprobe.py udpwait ADDR PORT SECONDS  a UDP flow: sends hello, prints "local ADDR PORT", then
                                         "got:DATA" for each datagram that arrives, then "end"
    netprobe.py inject IFACE MAC SRC SPORT DST DPORT DATA   one UDP frame written straight onto
                                         IFACE for MAC, any source: a LAN attacker's spoofed packet
    netprobe.py spoof-ns IFACE SRC TARGET   a neighbour solicitation for TARGET from any source
                                         (hop limit 255, to TARGET's solicited-node group)
"""

import errno
import socket
import sys
import threading

TIMEOUT = 1.5


def serve(ports, udp_addrs):
    def tcp(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(64)
        while True:
            conn, _ = s.accept()
            conn.sendall(b"hello\n")
            conn.close()

    def udp(port, addr):
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)

    for port in ports:
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
        for addr in udp_addrs:
            threading.Thread(target=udp, args=(port, addr), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def probe(kind, addr, port, device=None):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    try:
        if kind == "tcp":
            s.connect((addr, port))
            s.recv(16)
        else:
            s.connect((addr, port))
            s.send(b"ping")
            s.recv(16)
        return "ok"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return "error:" + errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def http(addr, port, device=None):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    if device:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    try:
        s.connect((addr, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].decode().strip()
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:" + errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def dns(server):
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03net\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect((server, 53))
        s.send(query)
        return "ok" if s.recv(512)[:2] == b"\x12\x34" else "bad answer"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:" + errno.errorcode.get(e.errno, str(e.errno))


def flood(addr, port, count, seconds):
    import time
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    deadline, sent = time.time() + float(seconds), 0
    while sent < count and time.time() < deadline:
        try:
            s.sendto(b"flood", (addr, port))
        except OSError:
            pass
        sent += 1
        time.sleep(0.002)
    return f"sent {sent}"


def stream(addr, port, seconds):
    import time
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect((addr, port))
    print("connected", flush=True)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            s.send(b"x" * 100)
        except OSError:
            pass
        time.sleep(0.05)
    return "done"


def udpfrom(sport, addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    try:
        s.sendto(b"hello", (addr, port))
        return "sent"
    except OSError as e:
        return "error:" + errno.errorcode.get(e.errno, str(e.errno))


def raw(addr):
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    payload = b"raw"
    header = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0)
    try:
        s.sendto(header + payload, (addr, 0))
        return "sent"
    except OSError as e:
        return "error:" + errno.errorcode.get(e.errno, str(e.errno))


def udpwait(addr, port, seconds):
    import time
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port))
    s.send(b"hello")
    local = s.getsockname()
    print(f"local {local[0]} {local[1]}", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            print("got:" + s.recv(2048).decode(errors="replace"), flush=True)
        except socket.timeout:
            break
        except OSError:  # an ICMP error for an earlier send: the flow goes on
            continue
    return "end"


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip_packet(src, dst, proto, l4, hop_limit=64):
    """An IPv4 or IPv6 header in front of a layer 4 segment whose checksum field is at
    offset 2 (ICMPv6) or 6 (UDP) and still zero: it is filled in here."""
    import struct
    at = 2 if proto == 58 else 6
    if ":" in src:
        s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        pseudo = s + d + struct.pack("!I3xB", len(l4), proto)
        l4 = l4[:at] + struct.pack("!H", _checksum(pseudo + l4)) + l4[at + 2:]
        return 0x86DD, struct.pack("!IHBB", 6 << 28, len(l4), proto, hop_limit) + s + d + l4
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = s + d + struct.pack("!xBH", proto, len(l4))
    l4 = l4[:at] + struct.pack("!H", _checksum(pseudo + l4)) + l4[at + 2:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, hop_limit, proto, 0, s, d)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return 0x0800, header + l4


def _send_frame(iface, mac, ethertype, packet):
    import struct
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    own = s.getsockname()[4]
    s.send(bytes.fromhex(mac.replace(":", "")) + own + struct.pack("!H", ethertype) + packet)
    return "sent"


def inject(iface, mac, src, sport, dst, dport, data):
    import struct
    payload = data.encode()
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _send_frame(iface, mac, *_ip_packet(src, dst, 17, udp))


def spoof_ns(iface, src, target):
    import struct
    t = socket.inet_pton(socket.AF_INET6, target)
    group = "ff02::1:ff" + t[13:].hex()[:2] + ":" + t[14:].hex()
    group = str(__import__("ipaddress").IPv6Address(group))
    own = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    own.bind((iface, 0))
    lladdr = own.getsockname()[4]
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + t + struct.pack("!BB", 1, 1) + lladdr
    mac = "33:33:" + ":".join(f"{b:02x}" for b in socket.inet_pton(socket.AF_INET6, group)[12:])
    return _send_frame(iface, mac, *_ip_packet(src, group, 58, icmp, hop_limit=255))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    commands = {"http": http, "dns": dns, "flood": flood, "stream": stream, "raw": raw, "udpfrom": udpfrom,
                "udpwait": udpwait, "inject": inject, "spoof-ns": spoof_ns}
    if cmd in commands:
        print(commands[cmd](*[int(a) if a.isdigit() else a for a in args]))
        sys.exit(0)
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:] if p.isdigit()], [a for a in sys.argv[2:] if not a.isdigit()])
    else:
        print(probe(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
