"""Checks gsinfer's KServe v2 gRPC API with Triton's own Python client.

Run by tests/kserve_grpc.rs, which starts gsinfer and computes the
reference output with tract on the same input. Usage:

    kserve_grpc_check.py --url 127.0.0.1:GRPC_PORT --http-url 127.0.0.1:HTTP_PORT \
        --model smap_lstm --token TOKEN --input input.f32 --expected expected.f32 \
        --batch N --fdset grpc_service.fdset

First compares gsinfer's proto files (the FileDescriptorSet build.rs
writes) with the descriptors tritonclient carries: every method of
Triton's service is declared, and every message and field gsinfer
declares has Triton's name, number and type (model_config.proto may be a
subset). Then drives the server with tritonclient.grpc, comparing its
inference with tract's output and with the HTTP API's on the same input.
Prints one JSON object with what it saw; exits non-zero on any mismatch.
"""

import argparse
import json
import sys
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def messages(file_proto):
    """Every message and enum of a FileDescriptorProto by full name."""
    found = {}

    def walk(prefix, msgs, enums):
        for e in enums:
            found[f"{prefix}.{e.name}"] = e
        for m in msgs:
            name = f"{prefix}.{m.name}"
            found[name] = m
            walk(name, m.nested_type, m.enum_type)

    walk(f".{file_proto.package}", file_proto.message_type, file_proto.enum_type)
    return found


def field_key(f):
    return (f.number, f.type, f.label, f.type_name)


def compare_file(ours, theirs, exact_fields):
    """Each of our messages, fields and enum values as Triton's."""
    mine, triton = messages(ours), messages(theirs)
    for name, m in mine.items():
        check(name in triton, f"{ours.name}: {name} is not in tritonclient's {theirs.name}")
        t = triton[name]
        if isinstance(m, descriptor_pb2.EnumDescriptorProto):
            values = {v.name: v.number for v in t.value}
            for v in m.value:
                check(values.get(v.name) == v.number, f"{name}.{v.name} = {v.number}, tritonclient has {values.get(v.name)}")
            continue
        fields = {f.name: f for f in t.field}
        for f in m.field:
            check(f.name in fields, f"{name}.{f.name} is not in tritonclient's {name}")
            check(field_key(f) == field_key(fields[f.name]),
                  f"{name}.{f.name}: ours {field_key(f)}, tritonclient's {field_key(fields[f.name])}")
        if exact_fields:
            check({f.name for f in m.field} == set(fields), f"{name} fields differ: {sorted(set(fields) ^ {f.name for f in m.field})}")
    return len(mine)


def compare_descriptors(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    ours = {f.name: f for f in fds.file}
    check(set(ours) == {"grpc_service.proto", "model_config.proto"}, f"files {sorted(ours)}")
    triton_service, triton_config = descriptor_pb2.FileDescriptorProto(), descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(triton_service)
    model_config_pb2.DESCRIPTOR.CopyToProto(triton_config)
    service = ours["grpc_service.proto"]
    check(service.package == triton_service.package == "inference", "package inference")
    [mine], [theirs] = service.service, triton_service.service
    check(mine.name == theirs.name == "GRPCInferenceService", f"service {mine.name}")
    key = lambda m: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
    methods = {m.name: key(m) for m in mine.method}
    for m in theirs.method:
        check(methods.get(m.name) == key(m), f"method {m.name}: ours {methods.get(m.name)}, tritonclient's {key(m)}")
    check(len(methods) == len(theirs.method), f"methods tritonclient lacks: {set(methods) - {m.name for m in theirs.method}}")
    n = compare_file(service, triton_service, exact_fields=True)
    # model_config.proto is the subset gsinfer honours, with Triton's numbers.
    n += compare_file(ours["model_config.proto"], triton_config, exact_fields=False)
    return len(methods), n


def code(e):
    return str(e.status()).replace("StatusCode.", "")


def refused(call, want_code, want_text):
    try:
        call()
    except InferenceServerException as e:
        check(code(e) == want_code, f"expected {want_code}, got {code(e)}: {e.message()}")
        check(want_text in (e.message() or ""), f"{want_code} message names {want_text!r}: {e.message()}")
        return e.message()
    check(False, f"expected {want_code} ({want_text}), the call succeeded")


def infer_grpc(client, model, x, headers, name="window", request_id="grpc-1"):
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # raw_input_contents, tritonclient's default
    out = grpcclient.InferRequestedOutput("forecast")
    result = client.infer(model, [inp], outputs=[out], headers=headers, request_id=request_id)
    response = result.get_response()
    check(response.model_name == model, f"model_name {response.model_name}")
    check(response.id == request_id, f"the request id is echoed: {response.id!r}")
    check(len(response.raw_output_contents) == 1, "the output comes back as raw_output_contents")
    return result.as_numpy("forecast")


def infer_http(url, model, x, token):
    client = httpclient.InferenceServerClient(url=url)
    inp = httpclient.InferInput("window", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("forecast", binary_data=True)
    result = client.infer(model, [inp], outputs=[out], headers={"Authorization": f"Bearer {token}"})
    return result.as_numpy("forecast")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--http-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--fdset", required=True)
    a = ap.parse_args()

    methods, declared = compare_descriptors(a.fdset)

    # gRPC metadata keys are lowercase.
    auth = {"authorization": f"Bearer {a.token}"}
    client = grpcclient.InferenceServerClient(url=a.url)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready(a.model), "model ready")
    server = client.get_server_metadata(as_json=True)
    check(server["name"] == "gsinfer" and "statistics" in server["extensions"], f"server metadata {server}")
    meta = client.get_model_metadata(a.model)
    check(meta.name == a.model and meta.platform == "onnxruntime_onnx", f"metadata {meta}")
    check(meta.inputs[0].name == "window" and meta.inputs[0].datatype == "FP32", f"input {meta}")
    check(list(meta.inputs[0].shape) == [-1, 250, 25], f"input shape {meta}")
    check(list(meta.outputs[0].shape) == [-1, 10], f"output shape {meta}")
    version = meta.versions[0]
    check(client.is_model_ready(a.model, model_version=version), "model version ready")
    config = client.get_model_config(a.model, as_json=True)["config"]
    check(config["max_batch_size"] == 64 and config["input"][0]["data_type"] == "TYPE_FP32", f"config {config}")
    check(config["input"][0]["dims"] == ["250", "25"], f"config dims {config}")
    check("dynamic_batching" in config, f"config dynamic_batching {config}")

    x = np.fromfile(a.input, dtype="<f4").reshape(a.batch, 250, 25)
    want = np.fromfile(a.expected, dtype="<f4").reshape(a.batch, 10)

    # The token is required for inference and the repository index.
    refused(lambda: infer_grpc(client, a.model, x, {}), "UNAUTHENTICATED", "Bearer")
    refused(lambda: infer_grpc(client, a.model, x, {"authorization": "Bearer wrong"}), "UNAUTHENTICATED", "status.token_file")
    refused(lambda: client.get_model_repository_index(), "UNAUTHENTICATED", "Bearer")

    # The HTTP API's answer on the same input (and a warm-up of tract: its
    # first run of a batch size differs from later ones by up to ~1.3e-4).
    infer_http(a.http_url, a.model, x, a.token)
    got_http = infer_http(a.http_url, a.model, x, a.token)

    before = client.get_inference_statistics(a.model, as_json=True)["model_stats"][0]
    got = infer_grpc(client, a.model, x, auth)
    got_again = infer_grpc(client, a.model, x, auth, request_id="grpc-2")
    after = client.get_inference_statistics(a.model, as_json=True)["model_stats"][0]
    check(got.shape == want.shape, f"output shape {got.shape}")
    diff_tract = float(np.max(np.abs(got - want)))
    diff_http = float(np.max(np.abs(got - got_http)))
    check(diff_tract <= 1e-4, f"gRPC output differs from tract by {diff_tract}")
    check(diff_http <= 1e-5, f"gRPC output differs from the HTTP API's by {diff_http}")
    check(np.array_equal(got, got_again), "the same input gives the same output twice")

    # Statistics count the two gRPC inferences of `batch` items each.
    count = lambda s, k: int(s.get(k, 0))
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))
    check(count(after, "inference_count") - count(before, "inference_count") == 2 * a.batch,
          f"inference_count {count(before, 'inference_count')} -> {count(after, 'inference_count')}")
    check(success(after) - success(before) == 2, f"success count {success(before)} -> {success(after)}")
    check(count(after, "execution_count") > count(before, "execution_count"), "execution_count grew")
    all_stats = client.get_inference_statistics()
    check(any(s.name == a.model for s in all_stats.model_stats), "all-model stats")

    index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
    check(any(m["name"] == a.model and m["state"] == "READY" for m in index), f"repository index {index}")

    # Refusals carry the code of their kind and a message naming the value.
    refused(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "unknown model `nope`")
    refused(lambda: infer_grpc(client, "nope", x, auth), "NOT_FOUND", "unknown model `nope`")
    refused(lambda: infer_grpc(client, a.model, x, auth, name="nope"), "INVALID_ARGUMENT", "unknown input `nope`")
    too_big = np.zeros((65, 250, 25), dtype=np.float32)
    refused(lambda: infer_grpc(client, a.model, too_big, auth), "INVALID_ARGUMENT", "[65, 250, 25]")
    refused(lambda: client.load_model(a.model, headers=auth), "UNIMPLEMENTED", "RepositoryModelLoad")
    refused(lambda: client.get_system_shared_memory_status(), "UNIMPLEMENTED", "SystemSharedMemoryStatus")
    check(client.is_server_live(), "still live after the bad requests")

    # Counted on /metrics like the HTTP API's responses.
    with urllib.request.urlopen(f"http://{a.http_url}/metrics") as r:
        metrics = r.read().decode()
    for line in ('gsinfer_grpc_responses_total{code="OK"}', 'gsinfer_grpc_responses_total{code="INVALID_ARGUMENT"} 2',
                 'gsinfer_grpc_responses_total{code="UNAUTHENTICATED"} 3', 'gsinfer_inputs_total{source="grpc"}'):
        check(line in metrics, f"/metrics has {line}")

    print(json.dumps({
        "methods": methods,
        "messages_and_enums_compared": declared,
        "max_abs_diff_tract": diff_tract,
        "max_abs_diff_http": diff_http,
        "inference_count": count(after, "inference_count"),
    }))


if __name__ == "__main__":
    main()
