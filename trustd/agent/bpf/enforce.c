// SPDX-License-Identifier: Apache-2.0
// trustd L3/L4 enforcement, IPv4 and IPv6: a tc (clsact) ingress program on the interfaces
// that deliver traffic to local workloads. Identities come from an LPM-trie IP cache,
// verdicts from a policy map keyed by (destination identity, source identity, port,
// protocol), as Cilium's ipcache and policy maps do. An egress program on the same
// interfaces judges what the workloads send to unmanaged destinations (in no entry), which
// no ingress of ours sees: the node's scope (`unmanaged` allow or deny) and its
// always-allowed prefixes decide, and a quarantined identity reaches nothing but those
// prefixes.
//
// Each connection verdict (a TCP SYN; a UDP or ICMP flow at most once a second) is also
// reported to the agent through a ring buffer (`trustd_events`), when FLAG_FLOW_EVENTS is
// set: the agent aggregates them into flows (trustd/agent/flows.py). A full ring buffer
// never holds a packet up: the event is counted lost (`trustd_events_lost`) and the packet
// goes on.
//
// Every map key carries a generation: the agent writes a revision into the inactive
// generation, then flips `config.gen` with one array write. A packet reads the generation
// once, so it sees one revision or the other, never a mix. The agent writes into the old
// generation (bringing it to the next revision by the difference) only after a grace
// period longer than any program run, so no packet finds its generation half-changed (a
// missing destination would read as unmanaged).
//
// Both address families share the maps: an address key is (family, 16 address bytes), an
// IPv4 address in the first 4, so one LPM trie holds IPv4 and IPv6 prefixes, neither able
// to cover the other, and a dual-stack workload's addresses map to its one identity: one
// policy (keyed by identities) judges both families.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MODE_AUDIT 0
#define MODE_ENFORCE 1
// config.flags
#define FLAG_UNMANAGED_DENY 1   // packets to unmanaged destinations are denied
#define FLAG_CUT_ESTABLISHED 2  // a deny also cuts connections admitted before it
#define FLAG_FLOW_EVENTS 4      // connection verdicts are reported on trustd_events

// Counter slots; trustd/agent/enforcement/maps.py names them in the same order.
enum {
	C_ALLOWED,
	C_DENIED,      // policy said no (dropped in enforce mode, passed in audit mode)
	C_DROPPED,     // actually dropped, for any reason
	C_REVOKED,     // source identity quarantined
	C_STALE,       // deny-all: the agent's state is older than its staleness limit
	C_UNMANAGED,   // destination not in the IP cache, passed by the node's scope
	C_ESTABLISHED, // TCP segments of connections already admitted
	C_MAX,
};

struct config {
	__u32 gen;
	__u32 mode;
	__u32 revision;
	// FLAG_*: the node's scope for unmanaged destinations (the always-allowed prefixes
	// pass either way), and whether a deny cuts established connections.
	__u32 flags;
	// CLOCK_MONOTONIC deadline (bpf_ktime_get_ns) after which everything managed is
	// denied: the agent moves it forward on every successful sync, so a node cut off from
	// trustd for longer than the staleness limit fails closed even if the agent died.
	// 0: no limit.
	__u64 valid_until_ns;
};

// An address of either family, network byte order: IPv4 in w[0], the rest zero.
struct addr {
	__u32 w[4];
};

struct ipcache_key {
	__u32 prefixlen; // 64 (generation, family) + the address prefix length
	__u32 gen;
	__u32 family; // 4 or 6
	struct addr addr;
};

struct policy_key {
	__u32 gen;
	__u32 dst;
	__u32 src;
	__u16 port; // host byte order; 0 = any port
	__u8 proto;
	__u8 pad;
};

struct revoked_key {
	__u32 gen;
	__u32 identity;
};

// A TCP connection this program admitted (its SYN), as the segments towards the
// destination carry it.
struct flow_key {
	__u32 family;
	struct addr saddr;
	struct addr daddr;
	__u16 sport;
	__u16 dport;
};

struct allowed_key {
	__u32 prefixlen; // 32 (family) + the address prefix length
	__u32 family;
	struct addr addr;
};

// What happened to one connection, as trustd/agent/enforcement/ebpf.py's FlowEvent reads
// it (64 bytes, no implicit padding).
enum { V_ALLOWED, V_DENIED, V_AUDIT };
enum { R_POLICY, R_REVOKED, R_STALE, R_UNMANAGED, R_AUDIT_WOULD_DENY };
enum { D_EGRESS, D_INGRESS };

struct flow_event {
	__u64 ktime; // bpf_ktime_get_ns
	struct addr saddr;
	struct addr daddr;
	__u32 src; // identities: 0 for an address in no entry
	__u32 dst;
	__u16 sport; // host byte order
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 verdict;   // V_*
	__u8 reason;    // R_*
	__u8 direction; // D_*
	__u8 pad[7];
};

// A UDP or ICMP flow, reported at most once per FLOW_REPORT_NS (it has no SYN to mark its
// start).
struct seen_key {
	__u32 family;
	struct addr saddr;
	struct addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction;
	__u8 pad[2];
};

#define FLOW_REPORT_NS 1000000000ULL
// Below this much unread data the agent is not woken: it reads on its own tick (100 ms),
// so a steady stream of events costs the datapath no wake-up each.
#define EVENTS_WAKEUP_BYTES (64 * 1024)
// An event as the ring buffer holds it: an 8-byte header, then the event.
#define EVENT_RECORD_BYTES (8 + sizeof(struct flow_event))

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} trustd_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} trustd_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct seen_key);
	__type(value, __u64);
} trustd_seen SEC(".maps");

// Flow events the ring buffer had no room for. A map of its own, not a counter slot: maps
// pinned by an earlier version keep their size, and a counters map of another size would
// refuse the load.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} trustd_events_lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, __u32);
} trustd_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct policy_key);
	__type(value, __u32);
} trustd_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct revoked_key);
	__type(value, __u32);
} trustd_revoked SEC(".maps");

// Connections admitted here, so that with FLAG_CUT_ESTABLISHED their later segments are
// judged again by the verdicts in force (a deny cuts them). Least recently used go first:
// a forgotten connection is judged as before, by its SYN only.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, __u32);
} trustd_flows SEC(".maps");

// The node's always-allowed destinations (DNS, the node, trustd): not generational, the
// agent writes it apart from verdict revisions.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct allowed_key);
	__type(value, __u32);
} trustd_allowed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} trustd_counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&trustd_counters, &slot);
	if (value)
		*value += 1;
}

static __always_inline __u32 identity_of(__u32 gen, __u32 family, const struct addr *addr)
{
	struct ipcache_key key = {.prefixlen = 64 + 128, .gen = gen, .family = family, .addr = *addr};
	__u32 *id = bpf_map_lookup_elem(&trustd_ipcache, &key);
	return id ? *id : 0;
}

static __always_inline int quarantined(__u32 gen, __u32 src)
{
	struct revoked_key rk = {.gen = gen, .identity = src};
	return src && bpf_map_lookup_elem(&trustd_revoked, &rk) != 0;
}

#define IPPROTO_ICMPV6_ 58
#define NEXTHDR_HOP_ 0
#define NEXTHDR_ROUTING_ 43
#define NEXTHDR_FRAGMENT_ 44
#define NEXTHDR_DEST_ 60
// Extension headers walked before the L4 header; a packet with more is denied.
#define MAX_EXTENSIONS 4
#define DHCPV6_CLIENT_PORT 546
#define DHCPV6_SERVER_PORT 547

// A packet as both programs judge it, read once (`read_packet`).
struct packet {
	__u32 family; // 4 or 6
	struct addr saddr;
	struct addr daddr;
	// The L4 protocol as the policy keys it: the IPv4 protocol or IPv6 next header, with
	// ICMPv6 judged as ICMP (one policy for both families). A non-first IPv6 fragment
	// carries no L4 header: NEXTHDR_FRAGMENT_, which no verdict allows.
	__u8 proto;
	__u8 syn;       // TCP SYN without ACK: a connection's first segment
	__u8 icmp_type; // ICMPv6 only
	__u8 hop_limit; // IPv6 only
	__u16 sport;    // TCP, UDP: network byte order
	__u16 dport;
};

// Report a connection verdict when FLAG_FLOW_EVENTS is set: a TCP SYN, or a UDP or ICMP
// flow not reported within the last FLOW_REPORT_NS. Later segments and other protocols are
// not reported (the counters have them). Never waits: with the ring buffer full the event
// is counted lost.
static __always_inline void report(const struct config *cfg, const struct packet *pkt,
				   __u32 src, __u32 dst, __u8 verdict, __u8 reason, __u8 direction)
{
	if (!(cfg->flags & FLAG_FLOW_EVENTS))
		return;
	__u64 now = bpf_ktime_get_ns();
	if (pkt->proto == IPPROTO_TCP) {
		if (!pkt->syn)
			return;
	} else if (pkt->proto == IPPROTO_UDP || pkt->proto == IPPROTO_ICMP) {
		struct seen_key key = {
			.family = pkt->family,
			.saddr = pkt->saddr,
			.daddr = pkt->daddr,
			.sport = pkt->sport,
			.dport = pkt->dport,
			.proto = pkt->proto,
			.direction = direction,
		};
		__u64 *last = bpf_map_lookup_elem(&trustd_seen, &key);
		if (last && now - *last < FLOW_REPORT_NS)
			return;
		bpf_map_update_elem(&trustd_seen, &key, &now, BPF_ANY);
	} else {
		return;
	}
	struct flow_event *e = bpf_ringbuf_reserve(&trustd_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&trustd_events_lost, &zero);
		if (lost)
			*lost += 1;
		return;
	}
	e->ktime = now;
	e->saddr = pkt->saddr;
	e->daddr = pkt->daddr;
	e->src = src;
	e->dst = dst;
	e->sport = bpf_ntohs(pkt->sport);
	e->dport = bpf_ntohs(pkt->dport);
	e->family = pkt->family;
	e->proto = pkt->proto;
	e->verdict = verdict;
	e->reason = reason;
	e->direction = direction;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	// The agent reads on its own tick; it is woken only by the event that brings the
	// unread data past EVENTS_WAKEUP_BYTES (a burst), once: a wake-up costs microseconds
	// (irq_work), far more than the event. Should the consumer move meanwhile and the
	// crossing be missed, the tick reads it.
	__u64 unread = bpf_ringbuf_query(&trustd_events, BPF_RB_AVAIL_DATA);
	__u64 wake = unread >= EVENTS_WAKEUP_BYTES &&
			     unread < EVENTS_WAKEUP_BYTES + EVENT_RECORD_BYTES
		     ? BPF_RB_FORCE_WAKEUP
		     : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, wake);
}

static __always_inline int allow(const struct config *cfg, const struct packet *pkt, __u32 src,
				 __u32 dst, __u8 reason, __u8 direction)
{
	count(reason == R_UNMANAGED ? C_UNMANAGED : C_ALLOWED);
	report(cfg, pkt, src, dst, V_ALLOWED, reason, direction);
	return TC_ACT_OK;
}

// A denied connection: dropped, or in audit mode passed and reported as what policy would
// have denied (a revoked, stale or unmanaged deny keeps its own reason).
static __always_inline int deny(const struct config *cfg, const struct packet *pkt, __u32 src,
				__u32 dst, __u8 reason, __u8 direction)
{
	count(C_DENIED);
	if (cfg->mode == MODE_AUDIT) {
		report(cfg, pkt, src, dst, V_AUDIT,
		       reason == R_POLICY ? R_AUDIT_WOULD_DENY : reason, direction);
		return TC_ACT_OK;
	}
	count(C_DROPPED);
	report(cfg, pkt, src, dst, V_DENIED, reason, direction);
	return TC_ACT_SHOT;
}

// A packet that cannot be read or carries no address: denied, with nothing to report.
static __always_inline int deny_unread(const struct config *cfg)
{
	count(C_DENIED);
	if (cfg->mode == MODE_AUDIT)
		return TC_ACT_OK;
	count(C_DROPPED);
	return TC_ACT_SHOT;
}

// A packet to an unmanaged destination (identity 0): passed if it is always allowed, or if
// the node's scope allows unmanaged destinations and the source is not quarantined.
static __always_inline int unmanaged(const struct config *cfg, __u32 gen, __u32 src,
				     const struct packet *pkt, __u8 direction)
{
	struct allowed_key key = {.prefixlen = 32 + 128, .family = pkt->family, .addr = pkt->daddr};
	if (bpf_map_lookup_elem(&trustd_allowed, &key))
		return allow(cfg, pkt, src, 0, R_UNMANAGED, direction);
	if (cfg->flags & FLAG_UNMANAGED_DENY)
		return deny(cfg, pkt, src, 0, R_UNMANAGED, direction);
	if (quarantined(gen, src))
		return deny(cfg, pkt, src, 0, R_REVOKED, direction);
	return allow(cfg, pkt, src, 0, R_UNMANAGED, direction);
}

// What a packet is, read once by both programs: PACKET_IP with `pkt` filled in, or the
// action for it.
#define PACKET_IP -1
#define PACKET_OTHER -2 // neither IPv4 nor IPv6: it carries no identity

static __always_inline int is_link_local(const struct addr *a)
{
	return (a->w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000); // fe80::/10
}

// What the node needs on every link whatever the policy says, as ARP for IPv4.
static __always_inline int link_essential(const struct packet *pkt)
{
	if (pkt->family != 6)
		return 0;
	// Neighbour discovery (RFC 4861): router solicitation and advertisement (133, 134,
	// §6), neighbour solicitation and advertisement (135, 136, §7: address resolution and
	// unreachability detection, which IPv6 has in place of ARP) and redirect (137, §8).
	// A receiver discards any of them whose hop limit is not 255 (§6.1.1, §6.1.2, §7.1.1,
	// §7.1.2, §8.1), so only those pass: an off-link sender cannot use the types to get
	// past the policy.
	if (pkt->proto == IPPROTO_ICMP && pkt->icmp_type >= 133 && pkt->icmp_type <= 137)
		return pkt->hop_limit == 255;
	// DHCPv6 (RFC 8415) for workloads that are its clients: a client sends from its
	// link-local address on port 546 to All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on
	// port 547, and is answered on its link-local address, port 546 (§7.1, §7.2).
	// Link-local addresses are in no entry (trustd/addresses.py), so without this a node
	// whose scope denies unmanaged destinations would starve its workloads of addresses.
	// A workload serving DHCPv6 is judged by the policy like any other.
	if (pkt->proto != IPPROTO_UDP)
		return 0;
	if (pkt->sport == bpf_htons(DHCPV6_CLIENT_PORT) &&
	    pkt->dport == bpf_htons(DHCPV6_SERVER_PORT) && is_link_local(&pkt->saddr))
		return pkt->daddr.w[0] == bpf_htonl(0xff020000) && !pkt->daddr.w[1] &&
		       !pkt->daddr.w[2] && pkt->daddr.w[3] == bpf_htonl(0x00010002);
	return pkt->sport == bpf_htons(DHCPV6_SERVER_PORT) &&
	       pkt->dport == bpf_htons(DHCPV6_CLIENT_PORT) && is_link_local(&pkt->daddr);
}

// The IPv6 header and its extension headers (RFC 8200 §4): `pkt` gets the addresses and
// the L4 protocol, `*l4` the offset of its header (0: none, a non-first fragment).
static __always_inline int read_ipv6(struct __sk_buff *skb, struct packet *pkt, __u32 *l4)
{
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip6, sizeof(ip6)) < 0 ||
	    ip6.version != 6)
		return -1;
	pkt->family = 6;
	__builtin_memcpy(&pkt->saddr, &ip6.saddr, 16);
	__builtin_memcpy(&pkt->daddr, &ip6.daddr, 16);
	pkt->hop_limit = ip6.hop_limit;
	__u8 next = ip6.nexthdr;
	__u32 off = sizeof(struct ethhdr) + sizeof(ip6);
#pragma unroll
	for (int i = 0; i < MAX_EXTENSIONS; i++) {
		__u8 ext[4];
		if (next != NEXTHDR_HOP_ && next != NEXTHDR_ROUTING_ && next != NEXTHDR_DEST_ &&
		    next != NEXTHDR_FRAGMENT_)
			break;
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return -1;
		if (next == NEXTHDR_FRAGMENT_) {
			// RFC 8200 §4.5: the offset is the upper 13 bits of bytes 2-3.
			if (((ext[2] << 8) | ext[3]) & 0xfff8) {
				pkt->proto = NEXTHDR_FRAGMENT_;
				*l4 = 0;
				return 0;
			}
			off += 8;
		} else {
			off += (ext[1] + 1) * 8; // in 8-octet units, not counting the first 8
		}
		next = ext[0];
	}
	if (next == NEXTHDR_HOP_ || next == NEXTHDR_ROUTING_ || next == NEXTHDR_DEST_ ||
	    next == NEXTHDR_FRAGMENT_)
		return -1; // more extension headers than are walked
	pkt->proto = next == IPPROTO_ICMPV6_ ? IPPROTO_ICMP : next;
	*l4 = off;
	return 0;
}

static __always_inline int read_packet(struct __sk_buff *skb, const struct config *cfg,
				       struct packet *pkt)
{
	__u16 eth_proto;
	__u32 l4 = 0;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &eth_proto, 2) < 0)
		return TC_ACT_OK;
	// ARP must pass or no address resolves.
	if (eth_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (!cfg) // never configured: fail closed
		return TC_ACT_SHOT;
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)) < 0)
			return deny_unread(cfg);
		pkt->family = 4;
		pkt->saddr.w[0] = ip.saddr;
		pkt->daddr.w[0] = ip.daddr;
		pkt->proto = ip.protocol;
		l4 = sizeof(struct ethhdr) + ip.ihl * 4;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		if (read_ipv6(skb, pkt, &l4) < 0)
			return deny_unread(cfg);
	} else {
		return PACKET_OTHER;
	}
	if (l4 && pkt->proto == IPPROTO_TCP) {
		struct tcphdr tcp;
		if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0)
			return deny_unread(cfg);
		pkt->sport = tcp.source;
		pkt->dport = tcp.dest;
		pkt->syn = tcp.syn && !tcp.ack;
	} else if (l4 && pkt->proto == IPPROTO_UDP) {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return deny_unread(cfg);
		pkt->sport = ports[0];
		pkt->dport = ports[1];
	} else if (l4 && pkt->family == 6 && pkt->proto == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(skb, l4, &pkt->icmp_type, 1) < 0)
			return deny_unread(cfg);
	}
	if (link_essential(pkt))
		return TC_ACT_OK;
	return PACKET_IP;
}

SEC("tc")
int trustd_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&trustd_config, &zero);
	struct packet pkt = {};

	int read = read_packet(skb, cfg, &pkt);
	if (read == PACKET_OTHER) // only the scope can judge it
		return cfg->flags & FLAG_UNMANAGED_DENY ? deny_unread(cfg) : TC_ACT_OK;
	if (read != PACKET_IP)
		return read;
	__u32 gen = cfg->gen;
	// A managed destination is judged where it is delivered (its node's ingress, with the
	// policy of its own node): nothing to do here.
	if (identity_of(gen, pkt.family, &pkt.daddr))
		return TC_ACT_OK;
	return unmanaged(cfg, gen, identity_of(gen, pkt.family, &pkt.saddr), &pkt, D_EGRESS);
}

SEC("tc")
int trustd_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&trustd_config, &zero);
	struct packet pkt = {};

	int read = read_packet(skb, cfg, &pkt);
	if (read == PACKET_OTHER) // from no identity: allowed by no verdict
		return deny_unread(cfg);
	if (read != PACKET_IP)
		return read;

	__u32 gen = cfg->gen;
	__u32 dst = identity_of(gen, pkt.family, &pkt.daddr);
	__u32 src = identity_of(gen, pkt.family, &pkt.saddr);
	if (dst == 0) // a local workload in no entry: the node's scope decides
		return unmanaged(cfg, gen, src, &pkt, D_INGRESS);
	if (cfg->valid_until_ns && bpf_ktime_get_ns() > cfg->valid_until_ns) {
		count(C_STALE);
		return deny(cfg, &pkt, src, dst, R_STALE, D_INGRESS);
	}
	// A quarantined identity loses every packet, established connections included.
	if (quarantined(gen, src)) {
		count(C_REVOKED);
		return deny(cfg, &pkt, src, dst, R_REVOKED, D_INGRESS);
	}

	struct flow_key flow = {
		.family = pkt.family,
		.saddr = pkt.saddr,
		.daddr = pkt.daddr,
		.sport = pkt.sport,
		.dport = pkt.dport,
	};
	// A connection is judged by its SYN; later segments pass (a quarantined source is cut
	// off above regardless), unless a deny cuts established connections: then those of a
	// connection admitted here are judged again, with the verdicts in force now. (Other
	// segments, replies to a local client among them, pass.)
	int tcp = pkt.proto == IPPROTO_TCP;
	if (tcp && !pkt.syn) {
		if (!(cfg->flags & FLAG_CUT_ESTABLISHED) ||
		    !bpf_map_lookup_elem(&trustd_flows, &flow)) {
			count(C_ESTABLISHED);
			return TC_ACT_OK;
		}
	}
	__u16 port = 0;
	if (tcp || pkt.proto == IPPROTO_UDP)
		port = bpf_ntohs(pkt.dport);

	struct policy_key key = {
		.gen = gen, .dst = dst, .src = src, .port = port, .proto = pkt.proto};
	__u32 *verdict = bpf_map_lookup_elem(&trustd_policy, &key);
	if (!verdict) {
		key.port = 0;
		verdict = bpf_map_lookup_elem(&trustd_policy, &key);
	}
	if (verdict && *verdict) {
		if (tcp && !pkt.syn) { // judged again, still allowed
			count(C_ESTABLISHED);
			return TC_ACT_OK;
		}
		if (pkt.syn) {
			__u32 one = 1;
			bpf_map_update_elem(&trustd_flows, &flow, &one, BPF_ANY);
		}
		return allow(cfg, &pkt, src, dst, R_POLICY, D_INGRESS);
	}
	// A connection cut stays tracked: its next segments are denied too, until a verdict
	// allows it again. (Only its SYN was reported: `report` skips later segments.)
	return deny(cfg, &pkt, src, dst, R_POLICY, D_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
