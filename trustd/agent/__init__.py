"""The node agent: attests, syncs, serves the SPIFFE Workload API, enforces verdicts."""
