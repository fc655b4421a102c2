# Which ACME account may order certificates for which identifiers.
#
# Default deny: an identifier is allowed only if the operator's data allows it
# (data.acme.dns_suffixes, data.acme.ip_networks) and, for an account bound to an
# External Account Binding key with restrictions, the key allows it too.
#
# input: {"account": {"id", "contact"}, "eab": null | {"kid", "dns_suffixes",
#         "ip_networks"}, "profile": "...", "identifiers": [{"type", "value"}]}
# data.acme: {"dns_suffixes": [...], "ip_networks": [...], "blocked_accounts": [...]}
package trustd.acme

import rego.v1

# One entry per refused identifier; the server answers rejectedIdentifier with one
# subproblem per entry (RFC 8555 §6.7.1).
denied contains {"identifier": ident, "reason": reason} if {
	some ident in input.identifiers
	reason := identifier_problem(ident)
}

denied contains {"identifier": ident, "reason": "the account is blocked"} if {
	some ident in input.identifiers
	input.account.id in object.get(data.acme, "blocked_accounts", [])
}

# The same entries as an array (a set of objects does not map onto a Python set).
denials := [entry | some entry in denied]

allow if {
	count(input.identifiers) > 0
	count(denied) == 0
}

identifier_problem(ident) := "no policy allows this DNS name" if {
	ident.type == "dns"
	not dns_allowed(object.get(data.acme, "dns_suffixes", []), ident.value)
}

identifier_problem(ident) := "the account's external account binding does not allow this DNS name" if {
	ident.type == "dns"
	restricted(input.eab, "dns_suffixes")
	not dns_allowed(input.eab.dns_suffixes, ident.value)
}

identifier_problem(ident) := "no policy allows this IP address" if {
	ident.type == "ip"
	not ip_allowed(object.get(data.acme, "ip_networks", []), ident.value)
}

identifier_problem(ident) := "the account's external account binding does not allow this IP address" if {
	ident.type == "ip"
	restricted(input.eab, "ip_networks")
	not ip_allowed(input.eab.ip_networks, ident.value)
}

identifier_problem(ident) := "unsupported identifier type" if {
	not ident.type in {"dns", "ip"}
}

restricted(eab, key) if {
	eab != null
	count(object.get(eab, key, [])) > 0
}

# A suffix allows itself and every name below it; a wildcard "*.x" is below x.
dns_allowed(suffixes, name) if {
	some suffix in suffixes
	under(base_name(name), suffix)
}

base_name(name) := substring(name, 2, -1) if startswith(name, "*.")

base_name(name) := name if not startswith(name, "*.")

under(name, suffix) if name == suffix

under(name, suffix) if endswith(name, concat("", [".", suffix]))

ip_allowed(networks, address) if {
	some network in networks
	net.cidr_contains(network, address)
}
