#!/usr/bin/python3
"""Golden vectors for dialtone's NAPPT engine, built with scapy, independently of the Rust code.

Writes nappt_vectors.json next to this script: a fixed table state (configuration, leases,
MACs) and named cases applied IN ORDER to one worker (echo slots and the fragment table carry
over from case to case). Each case: side the frame arrives on, input frame hex, verdict, and
the expected output frame hex (null for drops; the input itself for to_kernel).

Every expected frame is built here from its fields with scapy computing all checksums from
scratch; nothing is derived from the translator's output.

Run: /usr/bin/python3 tests/vectors/make_nappt_vectors.py   (needs python3-scapy)
"""
import json
import os

from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPOption_NOP, IPOption_Router_Alert, IPv6, Raw  # noqa

CONFIG_TOML = """
[lan]
interface = "lan0"
address = "100.64.0.1/16"

[wan]
interface = "wan0"
address = "192.0.2.1/24"
next_hop = "192.0.2.254"

[store]
path = "/tmp/dialtone-vectors.redb"

[dataplane]
cpus = [0]
fragment_slots = 64
fragment_timeout = "2s"

[management]
listen = "127.0.0.1:9000"
token = "golden-vectors-token"

[[class]]
name = "desk"
vendor_class = { prefix = "Desk" }
ports_per_phone = 1024
lan_pool = "100.64.16.0/24"
public_pool = "198.51.100.0/28"
lease_time = "1h"
tftp_root = "/tmp"

[[class]]
name = "conference"
vendor_class = { prefix = "Conf" }
ports_per_phone = 4096
lan_pool = "100.64.32.0/26"
public_pool = "198.51.100.128/28"
lease_time = "1h"
tftp_root = "/tmp"
"""

GW_LAN_MAC = "02:00:00:00:00:01"
GW_WAN_MAC = "02:00:00:00:01:01"
NEXT_HOP_MAC = "02:00:00:00:01:fe"
GW_LAN_IP = "100.64.0.1"
GW_WAN_IP = "192.0.2.1"
REMOTE = "203.0.113.10"
REMOTE2 = "203.0.113.77"

# Leased phones: (class, offset, private, MAC, public, port_lo, ports), computed by hand from
# DESIGN.md's formula: public = base + o / per_ip, port_lo = R + (o % per_ip) * B.
#   desk: B=1024, R=1024, per_ip=63.  conference: B=4096, R=4096, per_ip=15.
P5 = dict(cls=0, off=5, ip="100.64.16.5", mac="80:5e:c0:00:00:05", pub="198.51.100.0", lo=1024 + 5 * 1024, n=1024)
P70 = dict(cls=0, off=70, ip="100.64.16.70", mac="80:5e:c0:00:00:46", pub="198.51.100.1", lo=1024 + 7 * 1024, n=1024)
C3 = dict(cls=1, off=3, ip="100.64.32.3", mac="00:04:f2:00:00:03", pub="198.51.100.128", lo=4096 + 3 * 4096, n=4096)
# Not leased: desk offset 6 (100.64.16.6, 198.51.100.0 ports 7168..8191).
P6 = dict(cls=0, off=6, ip="100.64.16.6", mac="80:5e:c0:00:00:06", pub="198.51.100.0", lo=1024 + 6 * 1024, n=1024)

assert P5["lo"] == 6144 and P70["lo"] == 8192 and C3["lo"] == 16384

cases = []


def hexof(pkt):
    return bytes(pkt).hex()


def add(name, side, frame, verdict, expected=None, now_ms=0):
    if verdict == "to_kernel":
        expected = frame
    cases.append(
        {
            "name": name,
            "side": side,
            "now_ms": now_ms,
            "input": hexof(frame),
            "verdict": verdict,
            "expected": None if expected is None else hexof(expected),
        }
    )


def lan_eth(phone):
    return Ether(src=phone["mac"], dst=GW_LAN_MAC)


def wan_in_eth():
    return Ether(src=NEXT_HOP_MAC, dst=GW_WAN_MAC)


def wan_out_eth():
    return Ether(src=GW_WAN_MAC, dst=NEXT_HOP_MAC)


def lan_out_eth(phone):
    return Ether(src=GW_LAN_MAC, dst=phone["mac"])


def ip(src, dst, ttl=64, **kw):
    kw.setdefault("id", 0x1111)
    kw.setdefault("flags", "DF")
    return IP(src=src, dst=dst, ttl=ttl, **kw)


PAYLOAD = Raw(b"dialtone-nappt-vector")

# ---------------------------------------------------------------- UDP, TCP, both ways
udp_out = lambda ph, ttl=64: ip(ph["ip"], REMOTE, ttl) / UDP(sport=ph["lo"] + 56, dport=5060) / PAYLOAD  # noqa
add("udp_outbound", "lan", lan_eth(P5) / udp_out(P5), "to_wan",
    wan_out_eth() / ip(P5["pub"], REMOTE, 63) / UDP(sport=6200, dport=5060) / PAYLOAD)
add("udp_inbound", "wan", wan_in_eth() / ip(REMOTE, P5["pub"]) / UDP(sport=5060, dport=6200) / PAYLOAD, "to_lan",
    lan_out_eth(P5) / ip(REMOTE, P5["ip"], 63) / UDP(sport=5060, dport=6200) / PAYLOAD)
add("udp_checksum_zero_outbound", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE) / UDP(sport=6201, dport=53, chksum=0) / PAYLOAD,
    "to_wan", wan_out_eth() / ip(P5["pub"], REMOTE, 63) / UDP(sport=6201, dport=53, chksum=0) / PAYLOAD)
add("udp_checksum_zero_inbound", "wan", wan_in_eth() / ip(REMOTE, P5["pub"]) / UDP(sport=53, dport=6201, chksum=0) / PAYLOAD,
    "to_lan", lan_out_eth(P5) / ip(REMOTE, P5["ip"], 63) / UDP(sport=53, dport=6201, chksum=0) / PAYLOAD)
add("udp_outbound_second_public_address", "lan", lan_eth(P70) / ip(P70["ip"], REMOTE) / UDP(sport=9215, dport=5060) / PAYLOAD,
    "to_wan", wan_out_eth() / ip(P70["pub"], REMOTE, 63) / UDP(sport=9215, dport=5060) / PAYLOAD)
add("udp_inbound_second_public_address", "wan", wan_in_eth() / ip(REMOTE, P70["pub"]) / UDP(sport=5060, dport=8192) / PAYLOAD,
    "to_lan", lan_out_eth(P70) / ip(REMOTE, P70["ip"], 63) / UDP(sport=5060, dport=8192) / PAYLOAD)

SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]
add("tcp_outbound_syn", "lan",
    lan_eth(C3) / ip(C3["ip"], REMOTE) / TCP(sport=16400, dport=443, flags="S", seq=1000, options=SYN_OPTS),
    "to_wan", wan_out_eth() / ip(C3["pub"], REMOTE, 63) / TCP(sport=16400, dport=443, flags="S", seq=1000, options=SYN_OPTS))
add("tcp_inbound_synack", "wan",
    wan_in_eth() / ip(REMOTE, C3["pub"]) / TCP(sport=443, dport=16400, flags="SA", seq=5000, ack=1001) / Raw(b"x" * 33),
    "to_lan", lan_out_eth(C3) / ip(REMOTE, C3["ip"], 63) / TCP(sport=443, dport=16400, flags="SA", seq=5000, ack=1001) / Raw(b"x" * 33))

# ---------------------------------------------------------------- anti-spoofing and unknown phones
add("outbound_not_leased", "lan", lan_eth(P6) / ip(P6["ip"], REMOTE) / UDP(sport=7200, dport=5060) / PAYLOAD,
    "drop:source_not_leased")
add("outbound_port_outside_block", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE) / UDP(sport=7168, dport=5060) / PAYLOAD,
    "drop:port_outside_block")
add("outbound_port_below_block", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE) / TCP(sport=6143, dport=443, flags="S"),
    "drop:port_outside_block")
add("outbound_source_not_in_any_pool", "lan",
    Ether(src="02:00:00:00:99:99", dst=GW_LAN_MAC) / ip("100.64.200.9", REMOTE) / UDP(sport=6200, dport=53),
    "drop:source_not_phone")
add("inbound_not_leased", "wan", wan_in_eth() / ip(REMOTE, P6["pub"]) / UDP(sport=5060, dport=7200) / PAYLOAD,
    "drop:destination_not_leased")
add("inbound_reserved_port", "wan", wan_in_eth() / ip(REMOTE, P5["pub"]) / TCP(sport=4444, dport=80, flags="S"),
    "drop:destination_not_phone")
add("outbound_unsupported_protocol", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE, proto=47) / Raw(b"\x00" * 8),
    "drop:unsupported_protocol")

# ---------------------------------------------------------------- kernel traffic
add("arp_to_kernel", "lan", Ether(src=P5["mac"], dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=P5["mac"], psrc=P5["ip"], pdst=GW_LAN_IP),
    "to_kernel")
add("ipv6_to_kernel", "lan", Ether(src=P5["mac"], dst=GW_LAN_MAC) / IPv6(src="fe80::1", dst="ff02::2") / UDP(sport=1, dport=2),
    "to_kernel")
add("tftp_to_gateway_to_kernel", "lan", lan_eth(P5) / ip(P5["ip"], GW_LAN_IP) / UDP(sport=6300, dport=69) / Raw(b"\x00\x01a\x00octet\x00"),
    "to_kernel")
add("dhcp_broadcast_to_kernel", "lan",
    Ether(src=P5["mac"], dst="ff:ff:ff:ff:ff:ff") / ip("0.0.0.0", "255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"\x01" * 12),
    "to_kernel")
add("wan_to_gateway_to_kernel", "wan", wan_in_eth() / ip(REMOTE, GW_WAN_IP) / TCP(sport=5555, dport=22, flags="S"), "to_kernel")

# ---------------------------------------------------------------- ICMP echo
echo = lambda src, dst, t, ident, ttl=64: ip(src, dst, ttl) / ICMP(type=t, id=ident, seq=7) / Raw(b"ping-data")  # noqa
add("echo_request_inside_block", "lan", lan_eth(P5) / echo(P5["ip"], REMOTE, 8, 6500), "to_wan",
    wan_out_eth() / echo(P5["pub"], REMOTE, 8, 6500, 63))
add("echo_reply_inside_block", "wan", wan_in_eth() / echo(REMOTE, P5["pub"], 0, 6500), "to_lan",
    lan_out_eth(P5) / echo(REMOTE, P5["ip"], 0, 6500, 63))
MAPPED = P5["lo"] | (0x1234 & (P5["n"] - 1))
assert MAPPED == 6708
add("echo_request_outside_block_remapped", "lan", lan_eth(P5) / echo(P5["ip"], REMOTE, 8, 0x1234), "to_wan",
    wan_out_eth() / echo(P5["pub"], REMOTE, 8, MAPPED, 63))
add("echo_reply_outside_block_restored", "wan", wan_in_eth() / echo(REMOTE, P5["pub"], 0, MAPPED), "to_lan",
    lan_out_eth(P5) / echo(REMOTE, P5["ip"], 0, 0x1234, 63))
add("echo_reply_from_phone_outside_block", "lan", lan_eth(P5) / echo(P5["ip"], REMOTE, 0, 0x0042),
    "drop:port_outside_block")
add("icmp_timestamp_unsupported", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE) / ICMP(type=13, id=6500, ts_ori=1, ts_rx=2, ts_tx=3),
    "drop:unsupported_icmp")

# ---------------------------------------------------------------- ICMP errors, inbound (RFC 5508)
# The quoted packet is what the phone sent, as it left the gateway (public source); the phone
# must get it back as it sent it (private source), every checksum right.
ERRORS = [
    ("dest_unreachable_port", dict(type=3, code=3)),
    ("fragmentation_needed", dict(type=3, code=4, nexthopmtu=1400)),
    ("time_exceeded", dict(type=11, code=0)),
    ("parameter_problem", dict(type=12, code=0, ptr=20)),
]


def quote(pkt, data_len=8):
    raw = bytes(pkt)
    return raw[: (raw[0] & 0x0F) * 4 + data_len]


for name, fields in ERRORS:
    sent_private = ip(P5["ip"], REMOTE, 63) / UDP(sport=6210, dport=5060) / PAYLOAD
    sent_public = ip(P5["pub"], REMOTE, 63) / UDP(sport=6210, dport=5060) / PAYLOAD
    add(f"icmp_{name}_inbound_udp", "wan",
        wan_in_eth() / ip(REMOTE2, P5["pub"], flags=0) / ICMP(**fields) / Raw(quote(sent_public)),
        "to_lan", lan_out_eth(P5) / ip(REMOTE2, P5["ip"], 63, flags=0) / ICMP(**fields) / Raw(quote(sent_private)))
# A longer quote: the whole TCP header, so the quoted TCP checksum must be fixed too.
tcp_private = ip(C3["ip"], REMOTE, 62) / TCP(sport=17000, dport=443, flags="PA", seq=1, ack=1) / Raw(b"t" * 40)
tcp_public = ip(C3["pub"], REMOTE, 62) / TCP(sport=17000, dport=443, flags="PA", seq=1, ack=1) / Raw(b"t" * 40)
add("icmp_fragmentation_needed_inbound_tcp_full_quote", "wan",
    wan_in_eth() / ip(REMOTE2, C3["pub"], flags=0) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(quote(tcp_public, 28)),
    "to_lan", lan_out_eth(C3) / ip(REMOTE2, C3["ip"], 63, flags=0) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(quote(tcp_private, 28)))
# Quoting a remapped echo request: the identifier comes back as the phone sent it.
add("icmp_time_exceeded_inbound_remapped_echo", "wan",
    wan_in_eth() / ip(REMOTE2, P5["pub"], flags=0) / ICMP(type=11, code=0) / Raw(quote(echo(P5["pub"], REMOTE, 8, MAPPED, 1))),
    "to_lan", lan_out_eth(P5) / ip(REMOTE2, P5["ip"], 63, flags=0) / ICMP(type=11, code=0) / Raw(quote(echo(P5["ip"], REMOTE, 8, 0x1234, 1))))
# A quote whose source is not the outer destination is refused.
add("icmp_error_inbound_quote_mismatch", "wan",
    wan_in_eth() / ip(REMOTE2, P5["pub"], flags=0) / ICMP(type=3, code=3) / Raw(quote(ip("198.51.100.3", REMOTE) / UDP(sport=6210, dport=1))),
    "drop:icmp_quote_mismatch")
# A quote naming a phone without a lease.
add("icmp_error_inbound_not_leased", "wan",
    wan_in_eth() / ip(REMOTE2, P6["pub"], flags=0) / ICMP(type=3, code=3) / Raw(quote(ip(P6["pub"], REMOTE) / UDP(sport=7200, dport=1))),
    "drop:destination_not_leased")

# ---------------------------------------------------------------- ICMP errors, outbound
# The phone answers a packet it received (private destination); the remote host must see it
# about the packet it sent (public destination).
for name, fields in ERRORS:
    got_public = ip(REMOTE, P5["pub"], 60) / UDP(sport=5060, dport=6220) / PAYLOAD
    got_private = ip(REMOTE, P5["ip"], 59) / UDP(sport=5060, dport=6220) / PAYLOAD
    # What the phone received had already been translated (TTL 59, private address).
    add(f"icmp_{name}_outbound_udp", "lan",
        lan_eth(P5) / ip(P5["ip"], REMOTE, flags=0) / ICMP(**fields) / Raw(quote(got_private)),
        "to_wan", wan_out_eth() / ip(P5["pub"], REMOTE, 63, flags=0) / ICMP(**fields) / Raw(quote(ip(REMOTE, P5["pub"], 59) / UDP(sport=5060, dport=6220) / PAYLOAD)))
    del got_public
got_tcp_private = ip(REMOTE, C3["ip"], 50) / TCP(sport=443, dport=17001, flags="A", seq=9, ack=9) / Raw(b"r" * 30)
got_tcp_public = ip(REMOTE, C3["pub"], 50) / TCP(sport=443, dport=17001, flags="A", seq=9, ack=9) / Raw(b"r" * 30)
add("icmp_dest_unreachable_outbound_tcp_full_quote", "lan",
    lan_eth(C3) / ip(C3["ip"], REMOTE, flags=0) / ICMP(type=3, code=1) / Raw(quote(got_tcp_private, 20)),
    "to_wan", wan_out_eth() / ip(C3["pub"], REMOTE, 63, flags=0) / ICMP(type=3, code=1) / Raw(quote(got_tcp_public, 20)))
add("icmp_error_outbound_port_outside_block", "lan",
    lan_eth(P5) / ip(P5["ip"], REMOTE, flags=0) / ICMP(type=3, code=3) / Raw(quote(ip(REMOTE, P5["ip"]) / UDP(sport=1, dport=9000))),
    "drop:port_outside_block")
add("icmp_error_truncated_quote", "lan",
    lan_eth(P5) / ip(P5["ip"], REMOTE, flags=0) / ICMP(type=3, code=3) / Raw(quote(ip(REMOTE, P5["ip"]) / UDP(sport=1, dport=6200))[:24]),
    "drop:malformed")

# ---------------------------------------------------------------- hairpin
add("hairpin_udp", "lan", lan_eth(P5) / ip(P5["ip"], P70["pub"]) / UDP(sport=6230, dport=8300) / PAYLOAD, "to_lan",
    lan_out_eth(P70) / ip(P5["pub"], P70["ip"], 63) / UDP(sport=6230, dport=8300) / PAYLOAD)
add("hairpin_tcp_across_classes", "lan", lan_eth(C3) / ip(C3["ip"], P5["pub"]) / TCP(sport=16500, dport=6231, flags="S"), "to_lan",
    lan_out_eth(P5) / ip(C3["pub"], P5["ip"], 63) / TCP(sport=16500, dport=6231, flags="S"))
add("hairpin_to_not_leased", "lan", lan_eth(P5) / ip(P5["ip"], P6["pub"]) / UDP(sport=6230, dport=7300),
    "drop:destination_not_leased")

# ---------------------------------------------------------------- TTL
def time_exceeded(to_eth_dst, from_mac, from_ip, offending):
    return (Ether(src=from_mac, dst=to_eth_dst)
            / IP(src=from_ip, dst=offending[IP].src, ttl=64, tos=0xC0, id=0, flags=0)
            / ICMP(type=11, code=0) / Raw(quote(offending)))


for ttl in (1, 0):
    pkt = udp_out(P5, ttl)
    add(f"ttl_{ttl}_outbound_time_exceeded", "lan", lan_eth(P5) / pkt, "to_lan",
        time_exceeded(P5["mac"], GW_LAN_MAC, GW_LAN_IP, pkt))
    inbound = ip(REMOTE, P5["pub"], ttl) / UDP(sport=5060, dport=6200) / PAYLOAD
    add(f"ttl_{ttl}_inbound_time_exceeded", "wan", wan_in_eth() / inbound, "to_wan",
        time_exceeded(NEXT_HOP_MAC, GW_WAN_MAC, GW_WAN_IP, inbound))
short = ip(P5["ip"], REMOTE, 1) / UDP(sport=6240, dport=9, chksum=0)
add("ttl_1_short_datagram_quotes_what_there_is", "lan", lan_eth(P5) / short, "to_lan",
    time_exceeded(P5["mac"], GW_LAN_MAC, GW_LAN_IP, short))
add("ttl_1_icmp_error_is_not_answered", "wan",
    wan_in_eth() / ip(REMOTE2, P5["pub"], 1, flags=0) / ICMP(type=3, code=3) / Raw(quote(ip(P5["pub"], REMOTE) / UDP(sport=6210, dport=1))),
    "drop:ttl_expired")

# ---------------------------------------------------------------- VLAN and IP options
add("vlan_outbound", "lan", Ether(src=P5["mac"], dst=GW_LAN_MAC) / Dot1Q(vlan=100, prio=5) / udp_out(P5), "to_wan",
    Ether(src=GW_WAN_MAC, dst=NEXT_HOP_MAC) / Dot1Q(vlan=100, prio=5) / ip(P5["pub"], REMOTE, 63) / UDP(sport=6200, dport=5060) / PAYLOAD)
add("vlan_inbound", "wan",
    Ether(src=NEXT_HOP_MAC, dst=GW_WAN_MAC) / Dot1Q(vlan=200) / ip(REMOTE, P5["pub"]) / UDP(sport=5060, dport=6200) / PAYLOAD,
    "to_lan", Ether(src=GW_LAN_MAC, dst=P5["mac"]) / Dot1Q(vlan=200) / ip(REMOTE, P5["ip"], 63) / UDP(sport=5060, dport=6200) / PAYLOAD)
add("vlan_ttl_1_time_exceeded_keeps_tag", "lan", Ether(src=P5["mac"], dst=GW_LAN_MAC) / Dot1Q(vlan=100) / udp_out(P5, 1), "to_lan",
    Ether(src=GW_LAN_MAC, dst=P5["mac"]) / Dot1Q(vlan=100)
    / IP(src=GW_LAN_IP, dst=P5["ip"], ttl=64, tos=0xC0, id=0, flags=0) / ICMP(type=11, code=0) / Raw(quote(udp_out(P5, 1))))
OPTS = [IPOption_Router_Alert(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()]
add("ip_options_outbound", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE, options=OPTS) / UDP(sport=6250, dport=5060) / PAYLOAD,
    "to_wan", wan_out_eth() / ip(P5["pub"], REMOTE, 63, options=OPTS) / UDP(sport=6250, dport=5060) / PAYLOAD)
add("ip_options_inbound_tcp", "wan", wan_in_eth() / ip(REMOTE, C3["pub"], options=OPTS) / TCP(sport=80, dport=20000, flags="A"),
    "to_lan", lan_out_eth(C3) / ip(REMOTE, C3["ip"], 63, options=OPTS) / TCP(sport=80, dport=20000, flags="A"))
add("ip_options_ttl_1_quote_has_options", "lan", lan_eth(P5) / ip(P5["ip"], REMOTE, 1, options=OPTS) / UDP(sport=6250, dport=5060) / PAYLOAD,
    "to_lan", time_exceeded(P5["mac"], GW_LAN_MAC, GW_LAN_IP, ip(P5["ip"], REMOTE, 1, options=OPTS) / UDP(sport=6250, dport=5060) / PAYLOAD))

# ---------------------------------------------------------------- fragments
# A 1200-byte UDP datagram in three fragments of one datagram (ident 0x4242); the later ones
# carry no ports and follow the first. Scapy computes the UDP checksum over the whole datagram.
BIG = Raw((bytes(range(256)) * 5)[:1200])


def fragments(src, dst, sport, dport, ttl, ident):
    whole = IP(src=src, dst=dst, ttl=ttl, id=ident, flags=0) / UDP(sport=sport, dport=dport) / BIG
    raw = bytes(whole)
    udp_bytes = raw[20:]
    parts = [udp_bytes[0:512], udp_bytes[512:1024], udp_bytes[1024:]]
    out = []
    offset = 0
    for i, part in enumerate(parts):
        more = i < len(parts) - 1
        out.append(IP(src=src, dst=dst, ttl=ttl, id=ident, flags="MF" if more else 0, frag=offset // 8, proto=17) / Raw(part))
        offset += len(part)
    return out


out_in = fragments(P5["ip"], REMOTE, 6260, 5004, 64, 0x4242)
out_ex = fragments(P5["pub"], REMOTE, 6260, 5004, 63, 0x4242)
add("fragment_later_before_first_outbound", "lan", lan_eth(P5) / out_in[1], "drop:fragment_without_first", now_ms=1000)
for i, name in enumerate(["first", "middle", "last"]):
    add(f"fragment_{name}_outbound", "lan", lan_eth(P5) / out_in[i], "to_wan", wan_out_eth() / out_ex[i], now_ms=1000 + i)
in_ex = fragments(REMOTE, P70["pub"], 5004, 8400, 64, 0x7777)
in_in = fragments(REMOTE, P70["ip"], 5004, 8400, 63, 0x7777)
add("fragment_first_inbound", "wan", wan_in_eth() / in_ex[0], "to_lan", lan_out_eth(P70) / in_in[0], now_ms=1100)
add("fragment_last_inbound_out_of_order", "wan", wan_in_eth() / in_ex[2], "to_lan", lan_out_eth(P70) / in_in[2], now_ms=1101)
add("fragment_middle_inbound", "wan", wan_in_eth() / in_ex[1], "to_lan", lan_out_eth(P70) / in_in[1], now_ms=1102)
add("fragment_later_after_timeout", "wan", wan_in_eth() / in_ex[1], "drop:fragment_without_first", now_ms=1100 + 2000)
hp_in = fragments(P5["ip"], P70["pub"], 6261, 8401, 64, 0x5151)
hp_ex = fragments(P5["pub"], P70["ip"], 6261, 8401, 63, 0x5151)
add("fragment_first_hairpin", "lan", lan_eth(P5) / hp_in[0], "to_lan", lan_out_eth(P70) / hp_ex[0], now_ms=5000)
add("fragment_last_hairpin", "lan", lan_eth(P5) / hp_in[2], "to_lan", lan_out_eth(P70) / hp_ex[2], now_ms=5001)
add("fragment_later_not_first_ttl_1", "lan", lan_eth(P5) / fragments(P5["ip"], REMOTE, 6262, 1, 1, 0x6262)[1],
    "drop:fragment_without_first", now_ms=5002)

doc = {
    "about": __doc__.strip().splitlines()[0],
    "generator": "tests/vectors/make_nappt_vectors.py (scapy)",
    "config_toml": CONFIG_TOML,
    "interface_macs": {"lan": GW_LAN_MAC, "wan": GW_WAN_MAC},
    "next_hop_mac": NEXT_HOP_MAC,
    "leases": [{"class": p["cls"], "offset": p["off"], "address": p["ip"], "mac": p["mac"]} for p in (P5, P70, C3)],
    "cases": cases,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nappt_vectors.json")
with open(path, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print(f"wrote {len(cases)} cases to {path}")
