"""A Modbus RTU (or TCP) server for the integration tests: pymodbus's own
server, with the registers a test asks for, and faults injected through
pymodbus's `trace_packet` hook.

    modbus_server.py --spec FILE (--serial PATH [--baud N] | --tcp PORT)

FILE is JSON: {"devices": [{"unit": 1, "values": [ENTRY, ...]}, ...]} with
ENTRY = {"table": "hr"|"ir"|"co"|"di", "address": N, "type": "u16"|"i16"|
"u32"|"i32"|"f32"|"u64"|"i64"|"f64"|"bool", "value": V,
"word_order": "big"|"little", "byte_order": "big"|"little"}.
The registers of each value are made here with Python's `struct`, not by
the code under test.

Commands on stdin, one a line, each answered "ok" on stdout:
    silence UNIT    stop answering UNIT (as if unplugged from the bus)
    speak UNIT      answer UNIT again
    garble UNIT     flip one bit in the middle of each answer of UNIT
    clean UNIT      stop garbling
"ready" is printed once the server listens.
"""

import argparse
import asyncio
import json
import struct
import sys
import threading

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f",
    "u64": ">Q", "i64": ">q", "f64": ">d",
}

silenced = set()
garbled = set()


def words(entry):
    """The registers a device holding this value sends, in order."""
    raw = struct.pack(FORMATS[entry["type"]], entry["value"])  # most significant first
    regs = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if entry.get("byte_order", "big") == "little":
        regs = [r[::-1] for r in regs]
    if entry.get("word_order", "big") == "little":
        regs.reverse()
    return [int.from_bytes(r, "big") for r in regs]


def device(spec):
    tables = {"co": {}, "di": {}, "hr": {}, "ir": {}}
    for e in spec["values"]:
        t = tables[e["table"]]
        if e["table"] in ("co", "di"):
            t[e["address"]] = bool(e["value"])
        else:
            for i, w in enumerate(words(e)):
                t[e["address"] + i] = w
    blocks = []
    for name in ("co", "di", "hr", "ir"):
        t = tables[name]
        kind = DataType.BITS if name in ("co", "di") else DataType.REGISTERS
        # pymodbus wants every table non-empty: a far address stands in.
        items = sorted(t.items()) or [(60000, 0)]
        blocks.append([SimData(a, values=[v], datatype=kind) for a, v in items])
    return SimDevice(id=spec["unit"], simdata=tuple(blocks))


def trace_packet(sending, data):
    if not sending or not data:
        return data
    unit = data[0] if RTU else (data[6] if len(data) > 6 else -1)
    if unit in silenced:
        return b""
    if unit in garbled:
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        return bytes(b)
    return data


def commands():
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 2:
            verb, unit = parts[0], int(parts[1])
            {"silence": silenced.add, "speak": silenced.discard,
             "garble": garbled.add, "clean": garbled.discard}[verb](unit)
        print("ok", flush=True)


async def main():
    global RTU
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--serial")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--tcp", type=int)
    args = ap.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    devices = [device(d) for d in spec["devices"]]
    RTU = args.serial is not None
    if RTU:
        server = ModbusSerialServer(
            devices, framer=FramerType.RTU, port=args.serial, baudrate=args.baud,
            ignore_missing_devices=True, trace_packet=trace_packet,
        )
    else:
        server = ModbusTcpServer(
            devices, framer=FramerType.SOCKET, address=("127.0.0.1", args.tcp),
            ignore_missing_devices=True, trace_packet=trace_packet,
        )
    threading.Thread(target=commands, daemon=True).start()
    await server.listen()
    print("ready", flush=True)
    await asyncio.Event().wait()


RTU = True
asyncio.run(main())
