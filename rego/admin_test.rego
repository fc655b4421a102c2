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
