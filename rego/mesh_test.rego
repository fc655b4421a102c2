package trustd.mesh_test

import rego.v1

import data.trustd.mesh

web := "spiffe://example.org/ns/web/frontend"

api := "spiffe://example.org/ns/api/orders"

http_call(src, dst, method, path) := {
	"source": src, "destination": dst, "port": 8443,
	"protocol": "http", "method": method, "path": path,
}

test_allowed_call if mesh.allow with input as http_call(web, api, "GET", "/v1/orders")

test_reason_names_the_rule if {
	d := mesh.decision with input as http_call(web, api, "GET", "/v1/orders")
	d == {"allowed": true, "reasons": ["allowed by rule web-to-api"]}
}

test_default_deny if {
	d := mesh.decision with input as http_call(api, web, "GET", "/")
	d == {"allowed": false, "reasons": ["no rule allows this call"]}
}

test_wrong_port_denied if {
	not mesh.allow with input as object.union(http_call(web, api, "GET", "/v1/x"), {"port": 80})
}

test_wrong_method_denied if not mesh.allow with input as http_call(web, api, "DELETE", "/v1/x")

test_method_is_case_insensitive if mesh.allow with input as http_call(web, api, "get", "/v1/x")

test_deny_overrides_allow if {
	d := mesh.decision with input as http_call(web, api, "GET", "/v1/admin/users")
	d.allowed == false
	d.reasons == ["denied by rule no-admin-paths-from-web"]
}

test_quarantined_source_denied_everywhere if {
	q := "spiffe://example.org/ns/quarantine/web/frontend"
	not mesh.allow with input as http_call(q, api, "GET", "/v1/x")
		with data.mesh.allow as [{"name": "any"}]
}

test_tcp_rule if {
	mesh.allow with input as {
		"source": api, "destination": "spiffe://example.org/ns/db/postgres",
		"port": 5432, "protocol": "tcp",
	}
}

test_not_a_spiffe_id if {
	d := mesh.decision with input as http_call("web", api, "GET", "/v1/x")
	d.reasons == ["web is not a SPIFFE ID"]
}

test_missing_identities if {
	d := mesh.decision with input as {"port": 1}
	d.reasons == ["the request names no source and destination SPIFFE IDs"]
}

test_single_star_is_one_segment if {
	not mesh.allow with input as http_call(web, api, "GET", "/v1/orders")
		with data.mesh.allow as [{"name": "one", "source": "spiffe://example.org/ns/*"}]
	mesh.allow with input as http_call(web, api, "GET", "/v1/orders")
		with data.mesh.allow as [{"name": "two", "source": "spiffe://example.org/ns/*/*"}]
}

test_envoy_ext_authz_input if {
	mesh.allow with input as {"attributes": {
		"source": {"principal": web},
		"destination": {
			"principal": api,
			"address": {"socketAddress": {"address": "10.0.0.2", "portValue": 8443}},
		},
		"request": {"http": {"method": "POST", "path": "/v1/orders?id=7", "protocol": "HTTP/1.1"}},
	}}
}

test_envoy_admin_path_denied if {
	not mesh.allow with input as {"attributes": {
		"source": {"principal": web},
		"destination": {
			"principal": api,
			"address": {"socketAddress": {"portValue": 8443}},
		},
		"request": {"http": {"method": "GET", "path": "/v1/admin/x?y=1"}},
	}}
}

test_empty_rules_deny_everything if {
	not mesh.allow with input as http_call(web, api, "GET", "/v1/orders")
		with data.mesh as {}
}
