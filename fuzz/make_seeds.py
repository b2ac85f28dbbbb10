#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: a few small, valid
inputs per fuzz target, from the repository's example configuration and
config.pbtxt files or built here by hand (never from the telemetry data).
Run from anywhere: python3 fuzz/make_seeds.py. The files are committed;
rerun only when a target's input layout changes."""

import json
import os
import random
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- framings -------------------------------------------------------------
FEND, FESC, TFEND, TFESC = 0xC0, 0xDB, 0xDC, 0xDD


def kiss(payload, port=0):
    body = bytearray([port << 4])
    for b in payload:
        body += {FEND: bytes([FESC, TFEND]), FESC: bytes([FESC, TFESC])}.get(b, bytes([b]))
    return bytes([FEND]) + bytes(body) + bytes([FEND])


def slip(payload):
    body = bytearray()
    for b in payload:
        body += {FEND: bytes([FESC, TFEND]), FESC: bytes([FESC, TFESC])}.get(b, bytes([b]))
    return bytes([FEND]) + bytes(body) + bytes([FEND])


def cobs(payload):
    out, block = bytearray(), bytearray()
    for b in payload + b"\x00":
        if b == 0 or len(block) == 254:
            out.append(len(block) + 1)
            out += block
            block = bytearray()
            if b != 0:
                block.append(b)
            continue
        block.append(b)
    return bytes(out) + b"\x00"


def line(payload):
    return payload + b"\n"


FRAMERS = {"kiss": kiss, "slip": slip, "cobs": cobs, "line": line}

# ---- space packets --------------------------------------------------------


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def packet(apid, seq, user, crc, tc=False, sec=False):
    length = len(user) + (2 if crc else 0) - 1
    word0 = (int(tc) << 12) | (int(sec) << 11) | apid
    word1 = (0b11 << 14) | (seq & 0x3FFF)
    p = struct.pack(">HHH", word0, word1, length) + user
    if crc:
        p += struct.pack(">H", crc16(p))
    return p


def apid1(seq, t=12.5, a=(1, -2, 3), b=7):
    user = struct.pack(">d", t) + struct.pack(">3h", *a) + struct.pack("<Q", b)
    return packet(1, seq, user, True)


def apid2(seq, x=1.5):
    return packet(2, seq, b"\x01\x02\x03" + struct.pack(">f", x), False)


def main():
    random.seed(7)
    frames = [b"hello", bytes([FEND, FESC, 0, 1, 2]), b"\x00\x00abc", bytes(range(40))]
    for name, framer in FRAMERS.items():
        for i, f in enumerate(frames):
            if name == "line" and b"\n" in f:
                continue
            chunk = [1, 3, 7, 255][i]
            put(name, f"frames-{i}", bytes([chunk]) + b"".join(framer(x) for x in frames[: i + 1]))
    pkts = [apid1(0), apid1(1), apid2(5), apid1(3), packet(0x7FF, 0, b"\x00", False)]
    for i, name in enumerate(["kiss", "slip", "cobs", "line"]):
        stream = b"".join(FRAMERS[name](p) for p in pkts)
        put("space_packet", f"{name}", bytes([i | (63 << 2)]) + stream)
        put("space_packet", f"{name}-bytewise", bytes([i]) + stream)
    put("ccsds", "tm-crc", b"\x01" + apid1(9))
    put("ccsds", "tm", b"\x00" + apid2(16383))
    put("ccsds", "tc-sec", b"\x00" + packet(3, 2, b"\x00\x01\x02", False, tc=True, sec=True))
    put("ccsds", "idle", b"\x00" + packet(0x7FF, 0, b"\xff" * 4, False))

    # ---- telemetry payloads (first byte: max_samples << 4 | features) --------
    t0 = 1_700_000_000_000_000_000
    put("payload_json", "one", bytes([0xF3]) + json.dumps({"t": t0, "seq": 7, "v": [0.1, 2.0, -3e5]}).encode())
    put("payload_json", "batch", bytes([0xF2]) + json.dumps(
        [{"t": t0 + i, "v": [i, -i / 3]} for i in range(3)] + [{"t": "2023-11-14T22:13:20.5Z", "v": [1, 2]}, {"v": [1e39, 0]}]).encode())
    put("payload_json", "null-time", bytes([0x41]) + b' {"t": null, "v": [1.0], "seq": null} ')
    put("payload_json", "bad-key", bytes([0x31]) + b'[{"val": [1]}, {"v": [1, 2]}, {"v": [NaN]}]')
    put("payload_csv", "lines", bytes([0xF3]) + f"# t,a,b,c\n{t0},1,2,3\r\n,4, 5 ,6\n\n2023-11-14T22:13:20Z,7,8,9\n".encode())
    put("payload_csv", "bad", bytes([0x22]) + b"1,2\n2,nan\nx,1,1\n3,1,1,1\n")
    put("payload_csv", "no-values", bytes([0x50]) + b"1\n2\n#3\n")
    rec = lambda t, vs: struct.pack("<q", t) + struct.pack(f"<{len(vs)}f", *vs)
    put("payload_f32le", "two", bytes([0xF2]) + rec(t0, [1.0, 2.0]) + rec(t0 + 1, [3.0, -4.0]))
    put("payload_f32le", "nan", bytes([0xF1]) + rec(0, [float("nan")]) + rec(1, [0.5]))
    put("payload_f32le", "ragged", bytes([0xF3]) + rec(0, [1.0, 2.0, 3.0])[:-1])

    # ---- config.pbtxt: the shipped ones, and the parser's test examples --------
    repo = os.path.join(ROOT, "model_repository")
    for model in ["smap_lstm", "lstm_A-1", "tfm_A-1", "vae_A-1"]:
        with open(os.path.join(repo, model, "config.pbtxt"), "rb") as f:
            put("pbtxt", model, f.read())
    with open(os.path.join(ROOT, "src", "repository", "config.rs")) as f:
        realistic = re.search(r'const REALISTIC: &str = r#"(.*?)"#;', f.read(), re.S).group(1)
    put("pbtxt", "realistic", realistic)
    put("pbtxt", "triton-extras", 'name: "m" backend: "tensorrt" max_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP16 dims: [ -1, 4 ] reshape: { shape: [ ] } } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'model_warmup [ { name: "w" batch_size: 1 } ]\nsequence_batching { }\n'
        'optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
        'parameters { key: "precision_mode" value: "FP16" } parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }\n'
        'version_policy: { all: { } }\n')

    # ---- the TOML configuration -----------------------------------------
    with open(os.path.join(ROOT, "config", "gsinfer.example.toml"), "rb") as f:
        example = f.read()
    put("config", "example", example)
    serial = re.sub(rb"(?m)^# (\[\[serial|[a-z_]+ *=|  \{|\])", rb"\1", example)
    put("config", "example-serial", serial)
    put("config", "minimal", '[repository]\npath = "models"\n\n[[pipeline]]\nmodel = "m"\n'
        'topics = ["telemetry/+/x"]\nfeatures = 2\nwindow = { length = 8, stride = 2 }\n'
        'scoring = { kind = "reconstruction", threshold = { method = "static", value = 1.0 } }\n')

    # ---- KServe v2 infer bodies (first byte: model | header-length << 1) ---
    values = [0.5, -1.0, 2.25, 3.0, 4.0, 1e-3]
    put("kserve_infer", "json", bytes([0]) + json.dumps({"id": "r1", "inputs": [
        {"name": "window", "shape": [1, 2, 3], "datatype": "FP32", "data": [values[:3], values[3:]]}]}).encode())
    put("kserve_infer", "json-outputs", bytes([0]) + json.dumps({"inputs": [
        {"name": "window", "shape": [2, 2, 3], "datatype": "FP32", "data": values + values}],
        "outputs": [{"name": "score", "parameters": {"binary_data": True}}]}).encode())
    put("kserve_infer", "unbatched", bytes([1]) + json.dumps({"inputs": [
        {"name": "window", "shape": [3], "datatype": "FP32", "data": values[:3]}],
        "parameters": {"binary_data_output": True}}).encode())
    header = json.dumps({"inputs": [{"name": "window", "shape": [1, 2, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 24}}]}).encode()
    put("kserve_infer", "binary", bytes([2]) + struct.pack("<H", len(header)) + header + struct.pack("<6f", *values))

    # ---- KServe v2 routes (first byte: method; path after /v2, newline, body)
    for i, (method, path) in enumerate([(0, ""), (0, "/health/ready"), (0, "/models/m/versions/1/config"),
                                        (1, "/models/%6d/ready"), (0, "/models/stats"), (2, "/repository/index"),
                                        (3, "/models/m/versions/2/stats"), (0, "/models/x/nope")]):
        put("kserve_route", f"route-{i}", bytes([method]) + path.encode())
    put("kserve_route", "infer", bytes([2]) + b"/models/m/infer\n" + json.dumps({"inputs": []}).encode())

    # ---- mission (arbitrary-structured): a few random byte strings -------
    for i in range(4):
        put("mission", f"random-{i}", bytes(random.randrange(256) for _ in range(64 + 64 * i)))


def dicts():
    """libFuzzer dictionaries (fuzz/dict/<target>.dict) of the text formats' words."""
    words = {
        "pbtxt": re.findall(r"^\s*(?:repeated |optional )?[\w.<>, ]+ (\w+) = \d+;", open(
            os.path.join(ROOT, "proto", "model_config.proto")).read(), re.M)
        + ["TYPE_FP32", "TYPE_INT64", "TYPE_STRING", "KIND_GPU", "KIND_CPU", "KIND_MODEL",
           "onnxruntime_onnx", "tensorrt_plan", "tensorrt", "onnxruntime", "precision_mode",
           "max_workspace_size_bytes", "FP16", "string_value", "key", "value", "model_warmup",
           "{", "}", "[", "]", "<", ">", ":", "#", "\"", "-1"],
        "config": re.findall(r"^\s*(?:#\s*)?([a-z_]+) *=", open(
            os.path.join(ROOT, "config", "gsinfer.example.toml")).read(), re.M)
        + ["[broker]", "[status]", "[repository]", "[ingest]", "[publish]", "[engine]", "[tensorrt]",
           "[[pipeline]]", "[[serial]]", "[[serial.packet]]", "parameter", "byte_offset", "type",
           "channel", "feature", "count", "scale", "offset", "apid", "crc", "time", "unit", "epoch_ns",
           "secondary_header_bytes", "buckets", "reconstruction", "forecast", "static", "ndt", "pot",
           "method", "kind", "nan", "inf", "true", "false", "="],
        "payload_json": ['"t"', '"v"', '"seq"', "null", "1e39", "-0", "2023-11-14T22:13:20Z", "[", "{", "}", "]", ":"],
        # \xNN and \r\n written as libFuzzer dictionary escapes (see below).
        "payload_csv": ["#", ",", "NaN", "inf", "1e39", "2023-11-14T22:13:20+02:00", r"\x0d\x0a", r"\xc2\xa0"],
        "kserve_infer": ['"inputs"', '"outputs"', '"name"', '"shape"', '"datatype"', '"data"', '"parameters"',
                         '"binary_data_size"', '"binary_data"', '"binary_data_output"', '"classification"',
                         '"window"', '"forecast"', '"score"', '"FP32"', '"id"', "true"],
    }
    d = os.path.join(ROOT, "fuzz", "dict")
    os.makedirs(d, exist_ok=True)
    for target, ws in words.items():
        with open(os.path.join(d, f"{target}.dict"), "w") as f:
            for w in sorted(set(ws)):
                if w in (r"\x0d\x0a", r"\xc2\xa0"):
                    f.write(f'"{w}"\n')
                else:
                    f.write('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"\n')


if __name__ == "__main__":
    main()
    dicts()
