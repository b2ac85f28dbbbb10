#!/usr/bin/env python3
"""Independent encoder for gsinfer's serial tests.

Builds CCSDS space packets with the Python `spacepackets` package (CCSDS
133.0-B-2 primary header; CRC-16/IBM-3740 packet error control from its
`fastcrc` dependency), frames them with KISS, SLIP or COBS written here from
the specifications (not from gsinfer's code), and prints one JSON object
{"frames": [<hex>, ...]} on stdout, one entry per frame.

Input, a JSON object on stdin:
  {"framing": "kiss" | "slip" | "cobs" | "line",
   "items": [
     {"apid": 100, "seq": 0, "crc": true,
      "fields": [["u8", 200, "big"], ["f32", 1.5, "little"], ...]},
     {"raw": "<hex>"},                 # bytes framed as they are
     {"json": {"t": ..., "v": [...]}}  # a JSON line (framing "line")
   ]}
"""
import json
import struct
import sys

from fastcrc import crc16
from spacepackets.ccsds.spacepacket import PacketType, SpacePacket, SpacePacketHeader

FORMATS = {
    "u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i",
    "u64": "Q", "i64": "q", "f32": "f", "f64": "d",
}


def user_data(fields):
    out = bytearray()
    for kind, value, order in fields:
        out += struct.pack((">" if order == "big" else "<") + FORMATS[kind], value)
    return bytes(out)


def space_packet(item):
    data = user_data(item["fields"])
    crc = item.get("crc", False)
    header = SpacePacketHeader(
        packet_type=PacketType.TM,
        apid=item["apid"],
        seq_count=item["seq"],
        data_len=len(data) + (2 if crc else 0) - 1,
    )
    packet = bytes(SpacePacket(header, None, data).pack())
    if crc:
        packet += struct.pack(">H", crc16.ibm_3740(packet))
    return packet


# KISS (Chepponis and Karn, 1987) and SLIP (RFC 1055) byte stuffing.
FEND, FESC, TFEND, TFESC = 0xC0, 0xDB, 0xDC, 0xDD


def stuff(data):
    out = bytearray()
    for b in data:
        if b == FEND:
            out += bytes([FESC, TFEND])
        elif b == FESC:
            out += bytes([FESC, TFESC])
        else:
            out.append(b)
    return bytes(out)


def cobs(data):
    """COBS (Cheshire and Baker, 1999): blocks of up to 254 non-zero bytes."""
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(255)
                out += block
                block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def frame(framing, payload):
    if framing == "kiss":
        return bytes([FEND]) + stuff(bytes([0x00]) + payload) + bytes([FEND])
    if framing == "slip":
        return bytes([FEND]) + stuff(payload) + bytes([FEND])
    if framing == "cobs":
        return b"\x00" + cobs(payload) + b"\x00"
    if framing == "line":
        return payload + b"\n"
    raise SystemExit(f"unknown framing {framing}")


def main():
    spec = json.load(sys.stdin)
    frames = []
    for item in spec["items"]:
        if "raw" in item:
            payload = bytes.fromhex(item["raw"])
        elif "json" in item:
            payload = json.dumps(item["json"]).encode()
        else:
            payload = space_packet(item)
        frames.append(frame(spec["framing"], payload).hex())
    json.dump({"frames": frames}, sys.stdout)


if __name__ == "__main__":
    main()
