"""CRI (v1) calls, JSON in, JSON out: the CRI client behind ember_tests::cri.

One request per line on stdin, one answer per line on stdout, until stdin ends (one
process serves a test's calls: importing grpc and the stubs takes seconds where
everything is emulated, in the nested KVM test host):

stdin:  {"address": "/path/to/containerd.sock", "method": "RunPodSandbox",
         "request": {...RunPodSandboxRequest, proto field names...}, "timeout": 60}
stdout: {"ok": true, "response": {...}}   (proto field names, bytes as base64)
     or {"ok": false, "code": "NOT_FOUND", "details": "..."}

The generated stubs come from the PyPI package container-runtime-interface-api
(cri_api.v1), installed by scripts/install-deps.sh into a venv outside the repository.
"""

import json
import sys

import grpc
from google.protobuf import json_format
from cri_api.v1 import api_pb2, api_pb2_grpc

IMAGE_METHODS = {"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"}


def to_dict(message):
    """The message as a dict with proto field names and default values kept (so that
    state SANDBOX_READY or exit_code 0, both zero, are not dropped)."""
    try:
        return json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    except TypeError:  # protobuf < 5.26
        return json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            including_default_value_fields=True,
        )


def answer(req, channels):
    """The answer to one request; `channels` keeps one channel per address."""
    method = req["method"]
    address = req["address"]
    if address not in channels:
        channels[address] = grpc.insecure_channel("unix://" + address)
    channel = channels[address]
    stub_cls = (
        api_pb2_grpc.ImageServiceStub
        if method in IMAGE_METHODS
        else api_pb2_grpc.RuntimeServiceStub
    )
    call = getattr(stub_cls(channel), method)
    message = json_format.ParseDict(
        req.get("request") or {}, getattr(api_pb2, method + "Request")()
    )
    try:
        resp = call(message, timeout=req.get("timeout", 60))
    except grpc.RpcError as e:
        return {"ok": False, "code": e.code().name, "details": e.details()}
    return {"ok": True, "response": to_dict(resp)}


def main():
    channels = {}
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        json.dump(answer(json.loads(line), channels), sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
