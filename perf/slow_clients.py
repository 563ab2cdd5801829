#!/usr/bin/env python3
"""Hold COUNT HTTP connections to HOST:PORT open with requests that never finish.

Each connection sends a request line and then one more header line every half second, the way a
slowloris client does. Prints "holding N" once every connection is open, then keeps trickling for
SECONDS. Used by tests/preprov.rs and perf/preprov.sh (run inside the lab's phones namespace).

usage: slow_clients.py COUNT SOURCE_ADDRESS HOST PORT PATH SECONDS
"""
import socket
import sys
import time


def main():
    count, source, host, port, path, seconds = sys.argv[1:7]
    socks = []
    for _ in range(int(count)):
        s = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: lab\r\n")
        socks.append(s)
    print("holding", len(socks), flush=True)
    end = time.time() + float(seconds)
    while time.time() < end:
        for s in socks:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
        time.sleep(0.5)


if __name__ == "__main__":
    main()
