package trustd.admin_test

import rego.v1

import data.trustd.admin

test_viewer_reads if admin.allow with input as {"role": "viewer", "permission": "admin:entry:read"}

test_viewer_cannot_write if {
	not admin.allow with input as {"role": "viewer", "permission": "admin:entry:write"}
}

test_operator_writes_entries if {
	admin.allow with input as {"role": "operator", "permission": "admin:entry:write"}
}

test_operator_cannot_manage_tokens if {
	not admin.allow with input as {"role": "operator", "permission": "admin:token:write"}
}

test_operator_cannot_activate_bundles if {
	not admin.allow with input as {"role": "operator", "permission": "admin:policy:write"}
}

test_admin_does_anything if {
	admin.allow with input as {"role": "admin", "permission": "admin:token:write"}
	admin.allow with input as {"role": "admin", "permission": "admin:policy:write"}
}

test_unknown_role_is_denied_with_a_reason if {
	d := admin.decision with input as {"role": "root", "permission": "admin:entry:read"}
	d.allowed == false
	d.reason == "root is not a known role"
}

test_malformed_permission_is_denied if {
	not admin.allow with input as {"role": "admin", "permission": "admin:entry"}
	not admin.allow with input as {"role": "admin", "permission": "admin:entry:write:extra"}
	not admin.allow with input as {"role": "admin"}
}

test_data_adds_grants if {
	admin.allow with input as {"role": "operator", "permission": "admin:acme:write"}
		with data.admin.roles as {"operator": ["admin:acme:write"]}
}

test_reason_names_the_missing_permission if {
	d := admin.decision with input as {"role": "viewer", "permission": "admin:svid:write"}
	d.reason == "role viewer lacks admin:svid:write"
}

test_wildcards_do_not_reach_credentials if {
	not admin.allow with input as {"role": "viewer", "permission": "admin:token:read"}
	not admin.allow with input as {"role": "viewer", "permission": "admin:user:read"}
	not admin.allow with input as {"role": "operator", "permission": "admin:token:read"}
	admin.allow with input as {"role": "viewer", "permission": "admin:audit:read"}
}

test_admin_manages_credentials if {
	admin.allow with input as {"role": "admin", "permission": "admin:token:read"}
	admin.allow with input as {"role": "admin", "permission": "admin:token:revoke"}
	admin.allow with input as {"role": "admin", "permission": "admin:user:write"}
}

test_named_grants_reach_credentials if {
	admin.allow with input as {"role": "operator", "permission": "admin:token:read"}
		with data.admin.roles as {"operator": ["admin:token:read"]}
}

test_operator_day_to_day if {
	admin.allow with input as {"role": "operator", "permission": "admin:entry:delete"}
	admin.allow with input as {"role": "operator", "permission": "admin:certificate:revoke"}
	admin.allow with input as {"role": "operator", "permission": "admin:identity:quarantine"}
	not admin.allow with input as {"role": "viewer", "permission": "admin:identity:quarantine"}
	admin.allow with input as {"role": "operator", "permission": "admin:node:write"}
	not admin.allow with input as {"role": "operator", "permission": "admin:ca:write"}
	not admin.allow with input as {"role": "operator", "permission": "admin:ca:revoke"}
	not admin.allow with input as {"role": "operator", "permission": "admin:acme:write"}
	not admin.allow with input as {"role": "operator", "permission": "admin:user:write"}
}
