package trustd.attestation_test

import rego.v1

import data.trustd.attestation

node := {"spiffe_id": "spiffe://example.org/trustd/agent/join_token/a", "selectors": [], "aliases": ["spiffe://example.org/cluster/web"]}

entries := [
	{"id": "direct", "spiffe_id": "spiffe://example.org/web", "parent_id": "spiffe://example.org/trustd/agent/join_token/a", "selectors": ["unix:uid:1000"], "admin": false, "downstream": false},
	{"id": "via-alias", "spiffe_id": "spiffe://example.org/api", "parent_id": "spiffe://example.org/cluster/web", "selectors": ["unix:uid:1001"], "admin": false, "downstream": false},
	{"id": "other-node", "spiffe_id": "spiffe://example.org/db", "parent_id": "spiffe://example.org/trustd/agent/join_token/b", "selectors": ["unix:uid:1002"], "admin": false, "downstream": false},
	{"id": "downstream", "spiffe_id": "spiffe://example.org/ca", "parent_id": "spiffe://example.org/trustd/agent/join_token/a", "selectors": ["unix:uid:0"], "admin": false, "downstream": true},
]

test_parent_relation if {
	attestation.allowed == {"direct", "via-alias"} with input as {"node": node, "entries": entries}
}

test_downstream_needs_the_selector if {
	n := object.union(node, {"selectors": ["trustd:downstream:allowed"]})
	"downstream" in attestation.allowed with input as {"node": n, "entries": entries}
}

test_nothing_without_entries if {
	count(attestation.allowed) == 0 with input as {"node": node, "entries": []}
}
