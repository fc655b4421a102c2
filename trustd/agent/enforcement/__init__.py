"""Enforcement backends: the verdict table the agent holds, the eBPF datapath (L3/L4)
and the ext_authz endpoints for proxies (L7)."""
