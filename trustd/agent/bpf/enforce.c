// SPDX-License-Identifier: Apache-2.0
// trustd L3/L4 enforcement: a tc (clsact) ingress program on the interfaces that deliver
// traffic to local workloads. Identities come from an LPM-trie IP cache, verdicts from a
// policy map keyed by (destination identity, source identity, port, protocol), as Cilium's
// ipcache and policy maps do. An egress program on the same interfaces judges what the
// workloads send to unmanaged destinations (in no entry), which no ingress of ours sees:
// the node's scope (`unmanaged` allow or deny) and its always-allowed prefixes decide, and
// a quarantined identity reaches nothing but those prefixes.
//
// Every map key carries a generation: the agent writes a revision into the inactive
// generation, then flips `config.gen` with one array write. A packet reads the generation
// once, so it sees one revision or the other, never a mix. The agent writes into the old
// generation (bringing it to the next revision by the difference) only after a grace
// period longer than any program run, so no packet finds its generation half-changed (a
// missing destination would read as unmanaged).
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MODE_AUDIT 0
#define MODE_ENFORCE 1
// config.flags
#define FLAG_UNMANAGED_DENY 1   // packets to unmanaged destinations are denied
#define FLAG_CUT_ESTABLISHED 2  // a deny also cuts connections admitted before it

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

struct ipcache_key {
	__u32 prefixlen; // 32 (generation) + the address prefix length
	__u32 gen;
	__u32 addr; // network byte order
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
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

struct allowed_key {
	__u32 prefixlen;
	__u32 addr; // network byte order
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} trustd_config SEC(".maps");

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

static __always_inline __u32 identity_of(__u32 gen, __u32 addr)
{
	struct ipcache_key key = {.prefixlen = 64, .gen = gen, .addr = addr};
	__u32 *id = bpf_map_lookup_elem(&trustd_ipcache, &key);
	return id ? *id : 0;
}

static __always_inline int deny(const struct config *cfg)
{
	count(C_DENIED);
	if (cfg->mode == MODE_AUDIT)
		return TC_ACT_OK;
	count(C_DROPPED);
	return TC_ACT_SHOT;
}

static __always_inline int quarantined(__u32 gen, __u32 src)
{
	struct revoked_key rk = {.gen = gen, .identity = src};
	return src && bpf_map_lookup_elem(&trustd_revoked, &rk) != 0;
}

// A packet to an unmanaged destination (identity 0): passed if it is always allowed, or if
// the node's scope allows unmanaged destinations and the source is not quarantined.
static __always_inline int unmanaged(const struct config *cfg, __u32 gen, __u32 src, __u32 daddr)
{
	struct allowed_key key = {.prefixlen = 32, .addr = daddr};
	if (bpf_map_lookup_elem(&trustd_allowed, &key)) {
		count(C_UNMANAGED);
		return TC_ACT_OK;
	}
	if (!(cfg->flags & FLAG_UNMANAGED_DENY) && !quarantined(gen, src)) {
		count(C_UNMANAGED);
		return TC_ACT_OK;
	}
	return deny(cfg);
}

// What a packet is, read once by both programs: PACKET_IPV4 with `ip` filled in, or the
// action for it.
#define PACKET_IPV4 -1
#define PACKET_OTHER -2 // not IPv4: it carries no identity

static __always_inline int read_packet(struct __sk_buff *skb, const struct config *cfg,
				       struct iphdr *ip)
{
	__u16 eth_proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &eth_proto, 2) < 0)
		return TC_ACT_OK;
	// ARP must pass or no address resolves.
	if (eth_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (!cfg) // never configured: fail closed
		return TC_ACT_SHOT;
	// IPv6 carries no identities here (the IP cache is IPv4).
	if (eth_proto != bpf_htons(ETH_P_IP))
		return PACKET_OTHER;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr), ip, sizeof(*ip)) < 0)
		return deny(cfg);
	return PACKET_IPV4;
}

SEC("tc")
int trustd_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&trustd_config, &zero);
	struct iphdr ip;

	int read = read_packet(skb, cfg, &ip);
	if (read == PACKET_OTHER) // only the scope can judge it
		return cfg->flags & FLAG_UNMANAGED_DENY ? deny(cfg) : TC_ACT_OK;
	if (read != PACKET_IPV4)
		return read;
	__u32 gen = cfg->gen;
	// A managed destination is judged where it is delivered (its node's ingress, with the
	// policy of its own node): nothing to do here.
	if (identity_of(gen, ip.daddr))
		return TC_ACT_OK;
	return unmanaged(cfg, gen, identity_of(gen, ip.saddr), ip.daddr);
}

SEC("tc")
int trustd_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&trustd_config, &zero);
	struct iphdr ip;

	int read = read_packet(skb, cfg, &ip);
	if (read == PACKET_OTHER) // from no identity: allowed by no verdict
		return deny(cfg);
	if (read != PACKET_IPV4)
		return read;

	__u32 gen = cfg->gen;
	__u32 dst = identity_of(gen, ip.daddr);
	__u32 src = identity_of(gen, ip.saddr);
	if (dst == 0) // a local workload in no entry: the node's scope decides
		return unmanaged(cfg, gen, src, ip.daddr);
	if (cfg->valid_until_ns && bpf_ktime_get_ns() > cfg->valid_until_ns) {
		count(C_STALE);
		return deny(cfg);
	}
	// A quarantined identity loses every packet, established connections included.
	if (quarantined(gen, src)) {
		count(C_REVOKED);
		return deny(cfg);
	}

	__u16 port = 0;
	__u32 l4 = sizeof(struct ethhdr) + ip.ihl * 4;
	struct flow_key flow = {.saddr = ip.saddr, .daddr = ip.daddr};
	int syn = 0;
	if (ip.protocol == IPPROTO_TCP) {
		struct tcphdr tcp;
		if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0)
			return deny(cfg);
		flow.sport = tcp.source;
		flow.dport = tcp.dest;
		syn = tcp.syn && !tcp.ack;
		// A connection is judged by its SYN; later segments pass (a quarantined source is
		// cut off above regardless), unless a deny cuts established connections: then
		// those of a connection admitted here are judged again, with the verdicts in
		// force now. (Other segments, replies to a local client among them, pass.)
		if (!syn) {
			if (!(cfg->flags & FLAG_CUT_ESTABLISHED) ||
			    !bpf_map_lookup_elem(&trustd_flows, &flow)) {
				count(C_ESTABLISHED);
				return TC_ACT_OK;
			}
		}
		port = bpf_ntohs(tcp.dest);
	} else if (ip.protocol == IPPROTO_UDP) {
		__u16 dport;
		if (bpf_skb_load_bytes(skb, l4 + 2, &dport, 2) < 0)
			return deny(cfg);
		port = bpf_ntohs(dport);
	}

	struct policy_key key = {
		.gen = gen, .dst = dst, .src = src, .port = port, .proto = ip.protocol};
	__u32 *verdict = bpf_map_lookup_elem(&trustd_policy, &key);
	if (!verdict) {
		key.port = 0;
		verdict = bpf_map_lookup_elem(&trustd_policy, &key);
	}
	if (verdict && *verdict) {
		if (ip.protocol == IPPROTO_TCP && !syn) { // judged again, still allowed
			count(C_ESTABLISHED);
			return TC_ACT_OK;
		}
		if (syn) {
			__u32 one = 1;
			bpf_map_update_elem(&trustd_flows, &flow, &one, BPF_ANY);
		}
		count(C_ALLOWED);
		return TC_ACT_OK;
	}
	// A connection cut stays tracked: its next segments are denied too, until a verdict
	// allows it again.
	return deny(cfg);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
