"""Test helper run inside a namespace: a tiny echo server, or one probe of reachability.

    netprobe.py serve PORT... ADDR...    echo on tcp (any address) and udp (bound to each ADDR,
                                         so that replies come from the address asked)
    netprobe.py tcp ADDR PORT [DEVICE]   prints ok, refused, timeout or error:NAME
    netprobe.py udp ADDR PORT [DEVICE]   prints ok (an echo came back), refused, timeout or error:NAME
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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:] if p.isdigit()], [a for a in sys.argv[2:] if not a.isdigit()])
    else:
        print(probe(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
