package trustd.acme_test

import rego.v1

import data.trustd.acme

policy := {"dns_suffixes": ["example.org"], "ip_networks": ["127.0.0.0/8", "fd00::/8"]}

req(identifiers) := {"account": {"id": "a1", "contact": []}, "eab": null, "identifiers": identifiers}

dns(name) := {"type": "dns", "value": name}

ip(address) := {"type": "ip", "value": address}

test_names_under_a_suffix_are_allowed if {
	acme.allow with input as req([dns("example.org"), dns("web.example.org"), dns("*.svc.example.org")])
		with data.acme as policy
}

test_lookalike_suffix_is_denied if {
	not acme.allow with input as req([dns("badexample.org")]) with data.acme as policy
}

test_one_bad_name_denies_the_order if {
	not acme.allow with input as req([dns("web.example.org"), dns("evil.com")]) with data.acme as policy
	count(acme.denied) == 1 with input as req([dns("web.example.org"), dns("evil.com")])
		with data.acme as policy
}

test_ips_need_an_allowed_network if {
	acme.allow with input as req([ip("127.0.0.1"), ip("fd00::1")]) with data.acme as policy
	not acme.allow with input as req([ip("10.0.0.1")]) with data.acme as policy
}

test_default_deny_without_data if {
	not acme.allow with input as req([dns("example.org")]) with data.acme as {}
}

test_empty_order_is_denied if {
	not acme.allow with input as req([]) with data.acme as policy
}

test_eab_key_narrows_the_names if {
	scoped := object.union(req([dns("web.example.org")]), {"eab": {"kid": "k", "dns_suffixes": ["ci.example.org"], "ip_networks": []}})
	not acme.allow with input as scoped with data.acme as policy
	inside := object.union(req([dns("a.ci.example.org")]), {"eab": {"kid": "k", "dns_suffixes": ["ci.example.org"], "ip_networks": []}})
	acme.allow with input as inside with data.acme as policy
}

test_eab_key_without_restrictions_adds_none if {
	unscoped := object.union(req([dns("web.example.org")]), {"eab": {"kid": "k", "dns_suffixes": [], "ip_networks": []}})
	acme.allow with input as unscoped with data.acme as policy
}

test_blocked_account_is_denied if {
	not acme.allow with input as req([dns("web.example.org")])
		with data.acme as object.union(policy, {"blocked_accounts": ["a1"]})
}
