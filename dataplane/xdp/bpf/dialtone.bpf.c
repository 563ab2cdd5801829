// dialtone XDP program: decides, for every frame arriving on the LAN or the WAN interface,
// whether the kernel or dialtone's AF_XDP workers handle it (DESIGN.md "Dataplane").
//
// LAN (phones):  ARP and every non-IPv4 frame, Ethernet broadcast and multicast, IPv4 multicast
//                and broadcast, UDP to port 67 or 68 (DHCP) and anything addressed to one of the
//                gateway's own addresses go to the kernel (XDP_PASS); every other IPv4 frame goes
//                to the AF_XDP socket of the queue it arrived on.
// WAN (carrier): IPv4 addressed to a public pool goes to the queue's AF_XDP socket; everything
//                else (ARP, traffic for the gateway's WAN address) goes to the kernel.
//
// Decisions are made by destination address held in maps the engine fills at start; never by
// TFTP port: TFTP transfers continue on ephemeral ports. A queue without a socket falls back to
// the kernel (bpf_redirect_map's default action), which does not forward (ip_forward=0).
//
// Maps:
//   gateway_addrs  HASH      IPv4 address (network order) -> 1   own addresses, subnet broadcast
//   public_pools   LPM_TRIE  {prefix_len, IPv4 network}  -> class index
//   lan_sockets    XSKMAP    LAN queue index -> AF_XDP socket
//   wan_sockets    XSKMAP    WAN queue index -> AF_XDP socket
//   verdicts       PERCPU_ARRAY  counters: [lan pass, lan redirect, wan pass, wan redirect]
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAX_QUEUES 256
#define IP_OFFSET_MASK 0x1fff

struct pool_key {
	__u32 prefix_len;
	__u32 addr; /* network byte order */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} gateway_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pool_key);
	__type(value, __u32);
} public_pools SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} lan_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} wan_sockets SEC(".maps");

enum verdict_counter {
	LAN_PASS = 0,
	LAN_REDIRECT = 1,
	WAN_PASS = 2,
	WAN_REDIRECT = 3,
	VERDICT_COUNTERS = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VERDICT_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&verdicts, &which);
	if (value)
		*value += 1;
}

/* The frame's IPv4 header, or NULL when the frame is not (whole-header) IPv4. */
static __always_inline struct iphdr *ipv4_header(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > end)
		return NULL;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return NULL;
	return ip;
}

static __always_inline int pass(__u32 counter)
{
	count(counter);
	return XDP_PASS;
}

SEC("xdp")
int dialtone_lan(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 dst;

	if ((void *)(eth + 1) > end)
		return pass(LAN_PASS);
	/* Ethernet broadcast and multicast (group bit of the destination). */
	if (eth->h_dest[0] & 1)
		return pass(LAN_PASS);
	ip = ipv4_header(ctx);
	if (!ip)
		return pass(LAN_PASS); /* ARP, IPv6, VLAN-tagged, runts */
	dst = ip->daddr;
	/* 224.0.0.0/4 multicast, 240.0.0.0/4 reserved and 255.255.255.255 broadcast. */
	if ((bpf_ntohl(dst) >> 28) >= 0xe)
		return pass(LAN_PASS);
	if (bpf_map_lookup_elem(&gateway_addrs, &dst))
		return pass(LAN_PASS);
	/* DHCP (RFC 2131 section 4.1: server port 67, client port 68), whatever the address. */
	if (ip->protocol == IPPROTO_UDP && !(ip->frag_off & bpf_htons(IP_OFFSET_MASK)) && ip->ihl >= 5) {
		struct udphdr *udp = (void *)ip + ip->ihl * 4;
		if ((void *)(udp + 1) <= end &&
		    (udp->dest == bpf_htons(67) || udp->dest == bpf_htons(68)))
			return pass(LAN_PASS);
	}
	count(LAN_REDIRECT);
	return bpf_redirect_map(&lan_sockets, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int dialtone_wan(struct xdp_md *ctx)
{
	struct iphdr *ip = ipv4_header(ctx);
	struct pool_key key;

	if (!ip)
		return pass(WAN_PASS);
	key.prefix_len = 32;
	key.addr = ip->daddr;
	if (!bpf_map_lookup_elem(&public_pools, &key))
		return pass(WAN_PASS);
	count(WAN_REDIRECT);
	return bpf_redirect_map(&wan_sockets, ctx->rx_queue_index, XDP_PASS);
}

/* GPL-compatible so the verifier allows every helper; dialtone itself is Apache-2.0. */
char _license[] SEC("license") = "Dual BSD/GPL";
