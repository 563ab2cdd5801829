"""TRex STL profile: dialtone phones' UDP traffic through the gateway, both directions.

The same traffic as the lab's dialtone-gen, for bare metal: 64-byte UDP frames (60 + FCS) from
`phones` phones of one class, each from `flows` ports inside its own port block (outbound, port
0 of the TRex pair, facing the gateway's LAN), and from the far end to those phones' public
address and port (inbound, port 1, facing the WAN). The payload carries the phone id (class << 24 |
offset) and the port, as dialtone-gen's does, so a capture can be checked the same way.

The port block is the gateway's function (config/src/portblock.rs), with B = ports_per_phone,
R = max(1024, B), per_ip = (65536 - R) // B and o the phone's offset in the class's LAN pool:

    public_ip = public_base + o // per_ip
    port_lo   = R + (o % per_ip) * B        port_hi = port_lo + B - 1

Tunables (TRex >= 2.80: `start -f dialtone_phones.py -t phones=1000,flows=4,...`):
    phones           phones of the class (offsets 0..phones-1 leased)      default 1000
    flows            ports per phone, spread evenly over its block           default 4
    ports_per_phone  B, the class's block size                               default 64
    lan_pool         the class's LAN pool                         default 100.64.128.0/17
    public_pool      the class's public pool                      default 198.51.100.0/26
    class_index      the class's index in the gateway configuration         default 0
    far              far-end address                              default 203.0.113.10
    gateway_lan_mac, gateway_wan_mac, phone_mac_base, far_mac   MACs of the setup
Every offset 0..phones-1 must hold a lease on the gateway (lease them with DHCP first, in
offset order, for example with dialtone-gen lease, or pre-provision sticky bindings).

Run outside TRex (`python3 dialtone_phones.py --list ...`) it prints the flows it would send,
one `direction class offset private public port` line each: the test suite checks them against
the Rust port-block function.
"""

import argparse
import ipaddress
import struct

FAR_PORT = 9
PAYLOAD_MAGIC = b"\xd7\x01"


def plan(ports_per_phone, lan_pool, public_pool):
    """The class's port-block plan: (R, per_ip, lan network, public network)."""
    if ports_per_phone & (ports_per_phone - 1) or not 16 <= ports_per_phone <= 32768:
        raise ValueError("ports_per_phone must be a power of two in 16..32768")
    reserved = max(1024, ports_per_phone)
    per_ip = (65536 - reserved) // ports_per_phone
    lan = ipaddress.ip_network(lan_pool)
    public = ipaddress.ip_network(public_pool)
    return reserved, per_ip, lan, public


def port_block(offset, ports_per_phone, lan_pool, public_pool):
    """(private address, public address, port_lo, port_hi) of the phone at `offset`."""
    reserved, per_ip, lan, public = plan(ports_per_phone, lan_pool, public_pool)
    if offset >= lan.num_addresses or offset // per_ip >= public.num_addresses:
        raise ValueError("offset %d does not fit the pools" % offset)
    port_lo = reserved + (offset % per_ip) * ports_per_phone
    return (lan.network_address + offset, public.network_address + offset // per_ip,
            port_lo, port_lo + ports_per_phone - 1)


def phone_flows(phones, flows, ports_per_phone, lan_pool, public_pool):
    """Every (offset, private, public, port) the profile sends, phone-major."""
    flows = max(1, min(flows, ports_per_phone))
    step = ports_per_phone // flows
    out = []
    for offset in range(phones):
        private, public, port_lo, _ = port_block(offset, ports_per_phone, lan_pool, public_pool)
        for k in range(flows):
            out.append((offset, private, public, port_lo + k * step))
    return out


def payload(class_index, offset, port):
    """dialtone-gen's 18-byte payload with a zero timestamp and sequence."""
    return PAYLOAD_MAGIC + struct.pack("!IHQH", (class_index << 24) | offset, port, 0, 0)


def mac_bytes(text):
    return bytes(int(part, 16) for part in text.split(":"))


class DialtonePhones(object):
    """Two streams: outbound on port 0 (even), inbound on port 1 (odd)."""

    def __init__(self):
        self.defaults = {
            "phones": 1000, "flows": 4, "ports_per_phone": 64,
            "lan_pool": "100.64.128.0/17", "public_pool": "198.51.100.0/26", "class_index": 0,
            "far": "203.0.113.10", "gateway_lan_mac": "02:00:00:00:00:01",
            "gateway_wan_mac": "02:00:00:00:01:01", "phone_mac_base": "02:64:01:00:00:00",
            "far_mac": "02:00:00:00:01:fe",
        }

    def settings(self, tunables, kwargs):
        values = dict(self.defaults)
        values.update({k: v for k, v in kwargs.items() if k in values})
        if tunables:
            parser = argparse.ArgumentParser(prog="dialtone_phones.py")
            for key, default in self.defaults.items():
                parser.add_argument("--" + key, type=type(default), default=values[key])
            values.update(vars(parser.parse_args(tunables)))
        for key in ("phones", "flows", "ports_per_phone", "class_index"):
            values[key] = int(values[key])
        return values

    def get_streams(self, tunables=None, direction=0, port_id=0, **kwargs):
        # Imported here so that the flow arithmetic above runs (and is tested) without TRex.
        from trex_stl_lib.api import (Ether, IP, UDP, STLPktBuilder, STLStream, STLTXCont,
                                      STLScVmRaw, STLVmFlowVar, STLVmWrFlowVar, STLVmFixIpv4,
                                      STLVmFixChecksumHw, CTRexVmInsFixHwCs)
        s = self.settings(tunables if isinstance(tunables, list) else None, kwargs)
        flows = phone_flows(s["phones"], s["flows"], s["ports_per_phone"], s["lan_pool"], s["public_pool"])
        ids = [(s["class_index"] << 24) | offset for offset, _, _, _ in flows]
        ports = [port for _, _, _, port in flows]
        privates = [int(private) for _, private, _, _ in flows]
        publics = [int(public) for _, _, public, _ in flows]
        base_mac = int.from_bytes(mac_bytes(s["phone_mac_base"]), "big")
        macs_low = [(base_mac + offset) & 0xFFFFFFFF for offset, _, _, _ in flows]
        inbound = (port_id % 2 == 1) if kwargs.get("port_id") is not None else direction == 1
        pad = payload(s["class_index"], 0, 0)
        if not inbound:
            base = (Ether(src=s["phone_mac_base"], dst=s["gateway_lan_mac"]) /
                    IP(src=str(flows[0][1]), dst=s["far"], ttl=64, flags="DF") /
                    UDP(sport=ports[0], dport=FAR_PORT) / pad)
            vm = STLScVmRaw([
                STLVmFlowVar(name="ip", value_list=privates, op="inc", size=4),
                STLVmFlowVar(name="port", value_list=ports, op="inc", size=2),
                STLVmFlowVar(name="id", value_list=ids, op="inc", size=4),
                STLVmFlowVar(name="mac", value_list=macs_low, op="inc", size=4),
                STLVmWrFlowVar(fv_name="ip", pkt_offset="IP.src"),
                STLVmWrFlowVar(fv_name="port", pkt_offset="UDP.sport"),
                STLVmWrFlowVar(fv_name="port", pkt_offset=42 + 6),
                STLVmWrFlowVar(fv_name="id", pkt_offset=42 + 2),
                STLVmWrFlowVar(fv_name="mac", pkt_offset=8),
                STLVmFixIpv4(offset="IP"),
                STLVmFixChecksumHw(l3_offset="IP", l4_offset="UDP", l4_type=CTRexVmInsFixHwCs.L4_TYPE_UDP),
            ])
        else:
            base = (Ether(src=s["far_mac"], dst=s["gateway_wan_mac"]) /
                    IP(src=s["far"], dst=str(flows[0][2]), ttl=64, flags="DF") /
                    UDP(sport=FAR_PORT, dport=ports[0]) / pad)
            vm = STLScVmRaw([
                STLVmFlowVar(name="ip", value_list=publics, op="inc", size=4),
                STLVmFlowVar(name="port", value_list=ports, op="inc", size=2),
                STLVmFlowVar(name="id", value_list=ids, op="inc", size=4),
                STLVmWrFlowVar(fv_name="ip", pkt_offset="IP.dst"),
                STLVmWrFlowVar(fv_name="port", pkt_offset="UDP.dport"),
                STLVmWrFlowVar(fv_name="port", pkt_offset=42 + 6),
                STLVmWrFlowVar(fv_name="id", pkt_offset=42 + 2),
                STLVmFixIpv4(offset="IP"),
                STLVmFixChecksumHw(l3_offset="IP", l4_offset="UDP", l4_type=CTRexVmInsFixHwCs.L4_TYPE_UDP),
            ])
        return [STLStream(packet=STLPktBuilder(pkt=base, vm=vm), mode=STLTXCont())]


def register():
    return DialtonePhones()


def main():
    profile = DialtonePhones()
    parser = argparse.ArgumentParser(description="List the flows of the dialtone phones profile")
    parser.add_argument("--list", action="store_true", required=True)
    for key, default in profile.defaults.items():
        parser.add_argument("--" + key, type=type(default), default=default)
    args = vars(parser.parse_args())
    args.pop("list")
    s = profile.settings(None, args)
    for offset, private, public, port in phone_flows(s["phones"], s["flows"], s["ports_per_phone"],
                                                     s["lan_pool"], s["public_pool"]):
        for direction in ("outbound", "inbound"):
            print(direction, s["class_index"], offset, private, public, port)


if __name__ == "__main__":
    main()
