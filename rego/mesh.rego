# Service-to-service authorization: may workload A (source) call workload B (destination)?
#
# Decision: data.trustd.mesh.allow (boolean), data.trustd.mesh.decision (object with the
# reasons, in the shape Envoy's ext_authz OPA plugin accepts: {"allowed": bool, ...}).
# Default deny; any matching deny rule overrides every allow rule. The rules are data
# (data.mesh.allow / data.mesh.deny), so operators change who may talk without new Rego.
# data.mesh.established ("keep", the default, or "cut": a deny also ends connections
# admitted before it) is read by the L4 verdict compiler, not by this module.
#
# Input, either trustd's own shape:
#   {"source": "spiffe://td/a", "destination": "spiffe://td/b", "port": 8443,
#    "protocol": "http", "method": "GET", "path": "/v1/x"}
# or an Envoy ext_authz CheckRequest (attributes.source.principal, ...).
package trustd.mesh

import rego.v1

default allow := false

allow if {
	count(allowed_by) > 0
	count(deny) == 0
}

decision := {"allowed": allow, "reasons": reasons}

# The request, whatever shape it came in.
request := {
	"source": input.source,
	"destination": input.destination,
	"port": object.get(input, "port", 0),
	"protocol": lower(object.get(input, "protocol", "tcp")),
	"method": upper(object.get(input, "method", "")),
	"path": object.get(input, "path", ""),
} if {
	not input.attributes
	is_string(input.source)
	is_string(input.destination)
}

request := {
	"source": attrs.source.principal,
	"destination": attrs.destination.principal,
	"port": object.get(attrs.destination, ["address", "socketAddress", "portValue"], 0),
	"protocol": envoy_protocol,
	"method": upper(object.get(attrs.request, ["http", "method"], "")),
	"path": envoy_path,
} if {
	attrs := input.attributes
	is_string(attrs.source.principal)
	is_string(attrs.destination.principal)
}

envoy_protocol := "http" if input.attributes.request.http
envoy_protocol := "tcp" if not input.attributes.request.http

# Envoy passes the path with its query string; rules match the path alone.
envoy_path := split(object.get(input.attributes.request, ["http", "path"], ""), "?")[0]

# Rules are read as data.mesh.allow/deny directly (absent means none): reading `data` as a
# whole would evaluate every package on each decision.
allowed_by contains rule.name if {
	some rule in data.mesh.allow
	matches(rule)
}

deny contains sprintf("denied by rule %s", [rule.name]) if {
	some rule in data.mesh.deny
	matches(rule)
}

deny contains "the request names no source and destination SPIFFE IDs" if not request

deny contains sprintf("%s is not a SPIFFE ID", [id]) if {
	some id in [request.source, request.destination]
	not startswith(id, "spiffe://")
}

reasons := sort(deny) if count(deny) > 0

reasons := sort([sprintf("allowed by rule %s", [name]) | some name in allowed_by]) if {
	count(deny) == 0
	count(allowed_by) > 0
}

reasons := ["no rule allows this call"] if {
	count(deny) == 0
	count(allowed_by) == 0
}

# A rule matches when every field it sets matches; an absent field matches anything.
# SPIFFE ID and path patterns are globs with "/" as separator: "*" is one path segment,
# "**" any number.
matches(rule) if {
	glob_matches(object.get(rule, "source", "**"), request.source)
	glob_matches(object.get(rule, "destination", "**"), request.destination)
	any_or_in(object.get(rule, "ports", []), request.port)
	any_or_in(object.get(rule, "protocols", []), request.protocol)
	any_or_in(object.get(rule, "methods", []), request.method)
	path_matches(object.get(rule, "paths", []), request.path)
}

any_or_in(values, _) if count(values) == 0

any_or_in(values, value) if value in values

path_matches(patterns, _) if count(patterns) == 0

path_matches(patterns, path) if {
	some pattern in patterns
	glob_matches(pattern, path)
}

# The common pattern shapes (exact, "**", "prefix/**") without glob.match, which costs
# more than the rest of a decision; any other pattern goes to glob.match.
glob_matches("**", _) := true

glob_matches(pattern, value) if pattern == value

glob_matches(pattern, value) if {
	endswith(pattern, "/**")
	not contains(trim_suffix(pattern, "/**"), "*")
	startswith(value, trim_suffix(pattern, "**"))
}

glob_matches(pattern, value) if {
	contains(pattern, "*")
	not simple_prefix(pattern)
	glob.match(pattern, ["/"], value)
}

simple_prefix(pattern) if {
	endswith(pattern, "/**")
	not contains(trim_suffix(pattern, "/**"), "*")
}
