"""ACME server building blocks (RFC 8555, RFC 8737, RFC 8738, RFC 9773).

A plain library: JWS parsing and verification with an algorithm allow-list, identifiers,
request payloads, the RFC 8555 §7.1.6 status transition tables (`states`), challenge
validation and the TLS server certificate profile. Storage, nonces and HTTP live in
`trustd`.
"""
