#!/usr/bin/env python3
"""Print the NAPI threads of network interfaces: one "IFACE NAPI_ID PID" line per NAPI instance
that runs in its own kernel thread (threaded NAPI), from the kernel's netdev generic netlink
family (napi-get, Linux 6.9 and later). Run it in the interfaces' network namespace. A thread's
name (napi/IFACE-NAPI_ID) does not tell one namespace's lan0 from another's; the pid from this
query does. Used by perf/dataplane.sh to pin veth's NAPI threads.

usage: napi_threads.py IFACE...
"""
import os
import socket
import struct
import sys

NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
# include/uapi/linux/netdev.h (stable uapi numbers)
NETDEV_CMD_NAPI_GET = 11
NETDEV_A_NAPI_IFINDEX = 1
NETDEV_A_NAPI_ID = 2
NETDEV_A_NAPI_PID = 4


def attr(kind, payload):
    n = 4 + len(payload)
    return struct.pack("HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def attrs(data):
    out = {}
    while len(data) >= 4:
        n, kind = struct.unpack_from("HH", data)
        if n < 4:
            break
        out[kind & 0x3FFF] = data[4:n]
        data = data[(n + 3) & ~3:]
    return out


def request(sock, family, flags, cmd, payload):
    body = struct.pack("BBH", cmd, 1, 0) + payload
    sock.send(struct.pack("IHHII", 16 + len(body), family, flags | NLM_F_REQUEST, 1, 0) + body)
    replies = []
    while True:
        data = sock.recv(65536)
        while len(data) >= 16:
            n, kind, _, _, _ = struct.unpack_from("IHHII", data)
            if kind == NLMSG_DONE:
                return replies
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("i", data, 16)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return replies
            replies.append(attrs(data[20:n]))
            data = data[(n + 3) & ~3:]
        if not flags & NLM_F_DUMP and replies:
            return replies


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip())
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.bind((0, 0))
    (family,) = request(sock, GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY,
                        attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"))
    netdev = struct.unpack("H", family[CTRL_ATTR_FAMILY_ID][:2])[0]
    for iface in sys.argv[1:]:
        index = socket.if_nametoindex(iface)
        for napi in request(sock, netdev, NLM_F_DUMP, NETDEV_CMD_NAPI_GET,
                            attr(NETDEV_A_NAPI_IFINDEX, struct.pack("I", index))):
            if NETDEV_A_NAPI_PID in napi:
                napi_id = struct.unpack("I", napi[NETDEV_A_NAPI_ID][:4])[0]
                pid = struct.unpack("I", napi[NETDEV_A_NAPI_PID][:4])[0]
                print(iface, napi_id, pid)


if __name__ == "__main__":
    main()
