"""A workload that fetches its WIT-SVIDs over the Workload API, for the WIT-SVID tests.

py-spiffe has no WIT-SVID profile yet, and its generated Workload API module cannot share a
process with trustd's (the spec's proto has no package): this client speaks gRPC with
trustd's own stubs, in its own process. Started as root, it drops to ``--uid``/``--gid``
before it connects, as ``workload_client.py`` does. Prints one JSON document; on a
Workload API error prints ``{"error": CODE, "message": ...}`` and exits 3.

    wit_client.py --socket PATH [--uid N --gid N]
"""

from __future__ import annotations

import argparse

# Loaded while still root, as in workload_client.py.
import encodings.idna  # noqa: F401
import json
import os
import sys

import grpc

from trustd.agent.proto import workload_pb2 as pb
from trustd.agent.proto import workload_pb2_grpc as pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    opts = parser.parse_args()
    if opts.gid is not None:
        os.setgroups([])
        os.setgid(opts.gid)
    if opts.uid is not None:
        os.setuid(opts.uid)
    with grpc.insecure_channel(f"unix:{opts.socket}") as channel:
        stub = pb_grpc.SpiffeWorkloadAPIStub(channel)
        stream = stub.FetchWITSVID(
            pb.WITSVIDRequest(), metadata=(("workload.spiffe.io", "true"),), timeout=20
        )
        try:
            first = next(iter(stream))
        except grpc.RpcError as exc:
            print(json.dumps({"error": exc.code().name, "message": exc.details()}), flush=True)
            return 3
        finally:
            stream.cancel()
    svids = [
        {"spiffe_id": s.spiffe_id, "token": s.wit_svid, "key": json.loads(s.wit_svid_key)}
        for s in first.svids
    ]
    print(json.dumps({"svids": svids}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
