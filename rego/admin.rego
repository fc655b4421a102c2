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

# viewer reads everything; operator also runs the day-to-day writes (entries, nodes, SVIDs,
# revoking certificates, quarantining identities, testing policies); admin does anything
# (tokens, UI accounts, CA keys, policy bundles, ACME accounts and EAB keys).
builtin_grants := {
	"viewer": ["admin:*:read"],
	"operator": [
		"admin:*:read",
		"admin:entry:write",
		"admin:entry:delete",
		"admin:node:write",
		"admin:svid:write",
		"admin:certificate:revoke",
		"admin:identity:quarantine",
		"admin:policy:test",
	],
	"admin": ["admin:*:*", "admin:token:*", "admin:user:*"],
}

# Credentials are reached only by grants that name them: a wildcard resource ("admin:*:read")
# never covers admin tokens or UI accounts, so reading "everything" does not list who holds
# which credential.
credential_resources := {"token", "user"}

grants(role) := array.concat(object.get(builtin_grants, role, []), extra_grants(role))

extra_grants(role) := data.admin.roles[role]

extra_grants(role) := [] if not data.admin.roles[role]

allow if {
	is_string(input.permission)
	regex.match(`^admin:[a-z0-9_-]+:[a-z0-9_-]+$`, input.permission)
	some grant in grants(input.role)
	covers(grant, input.permission)
}

covers(grant, permission) if {
	glob.match(grant, [":"], permission)
	not wildcard_reaches_credentials(grant, permission)
}

wildcard_reaches_credentials(grant, permission) if {
	resource := split(permission, ":")[1]
	resource in credential_resources
	split(grant, ":")[1] != resource
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
