# RBAC for the admin API and UI.
#
# Decision: data.trustd.admin.allow for input {"role": "viewer|operator|admin",
# "permission": "admin:<resource>:<action>"} (e.g. "admin:entry:write"); also
# data.trustd.admin.decision with a reason. Default deny; an unknown role gets nothing.
# Grants are globs over ":"-separated permissions. `data.admin.roles` may add grants per
# role (a site's extra resources) without editing this module.
package trustd.admin

import rego.v1

default allow := false

# viewer reads everything; operator also runs the day-to-day writes; admin does anything
# (tokens, CA, policy bundles).
builtin_grants := {
	"viewer": ["admin:*:read"],
	"operator": [
		"admin:*:read",
		"admin:entry:write",
		"admin:node:write",
		"admin:svid:write",
		"admin:svid:revoke",
		"admin:policy:test",
	],
	"admin": ["admin:*:*"],
}

grants(role) := array.concat(object.get(builtin_grants, role, []), extra_grants(role))

extra_grants(role) := data.admin.roles[role]

extra_grants(role) := [] if not data.admin.roles[role]

allow if {
	is_string(input.permission)
	regex.match(`^admin:[a-z0-9_-]+:[a-z0-9_-]+$`, input.permission)
	some grant in grants(input.role)
	glob.match(grant, [":"], input.permission)
}

decision := {"allowed": allow, "reason": reason}

reason := sprintf("%s may %s", [input.role, input.permission]) if allow

reason := sprintf("%v is not a known role", [input.role]) if {
	not allow
	count(grants(input.role)) == 0
}

reason := sprintf("role %s lacks %v", [input.role, input.permission]) if {
	not allow
	count(grants(input.role)) > 0
}
