# Which registration entries a node may receive.
#
# Input:
#   node:    {"spiffe_id": ..., "selectors": ["type:value", ...], "aliases": [spiffe ids]}
#   entries: [{"id", "spiffe_id", "parent_id", "selectors", "admin", "downstream"}, ...]
#            (the candidates: entries parented by the node or by one of its aliases)
# Output:
#   data.trustd.attestation.allowed: the set of entry ids the node may receive.
package trustd.attestation

import rego.v1

# The parent relation: an entry belongs to the node that is its parent, or to every node
# that is a member of the alias it names as parent.
parents contains input.node.spiffe_id

parents contains alias if some alias in input.node.aliases

allowed contains entry.id if {
	some entry in input.entries
	entry.parent_id in parents
	not denied[entry.id]
}

# Deny rules override the parent relation. Downstream (CA) entries are never handed to a
# node unless it carries the selector that marks it as allowed to run a downstream CA.
denied contains entry.id if {
	some entry in input.entries
	entry.downstream
	not "trustd:downstream:allowed" in input.node.selectors
}
