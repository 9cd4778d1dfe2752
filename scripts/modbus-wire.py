#!/usr/bin/env python3
"""How close outpost gets to what one 9,600-baud Modbus RTU bus can carry.

    cargo build --release
    target/test-venv/bin/python3 scripts/modbus-wire.py [--bin target/release/outpost]

(`./scripts/test` makes target/test-venv with pymodbus.)

The wire limit is computed from the frame sizes: a read of N registers is
an 8-byte request and a (5 + 2N)-byte answer, each followed by at least
3.5 characters of silence, at 10 bits a character (8N1): (20 + 2N) x 10 /
9600 seconds per transaction, before any device turnaround.

Pseudo-terminals ignore the baud rate, so the wire time is not emulated:
outpost polls pymodbus's RTU server over a socat pty pair as fast as it
can (interval 1 ms), and what is measured is the time per transaction
beyond the wire: outpost's own work, the 3.5-character gap it keeps before
each request (part of the wire budget, subtracted), pymodbus's work and
the pty. On a real bus that overhead adds to the wire time, so
N / (wire time + overhead) bounds what outpost delivers from below; the
CPU outpost spends per transaction is measured too (/proc).
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests/it/harness/modbus_server.py"
BAUD, BITS = 9600, 10
T35 = 3.5 * BITS / BAUD


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port, series):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wait(cond, what, timeout=15):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")


def measure(binary, tmp, n, seconds):
    a, b = tmp / "gw", tmp / "dev"
    socat = subprocess.Popen(["socat", f"pty,rawer,link={a}", f"pty,rawer,link={b}"],
                             stderr=subprocess.DEVNULL)
    wait(lambda: a.exists() and b.exists(), "socat")
    spec = {"devices": [{"unit": 1, "values": [
        {"table": "ir", "address": i, "type": "u16", "value": i} for i in range(125)]}]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    server = subprocess.Popen([sys.executable, str(SERVER), "--spec", str(tmp / "spec.json"),
                               "--serial", str(b)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout.readline().strip() == "ready"
    port = free_port()
    regs = ",\n".join(f'  {{ metric = "r{i}", kind = "input", address = {i} }}' for i in range(n))
    (tmp / "rules.toml").write_text('[[rule]]\nid = "x"\nmetric = "r0"\nabove = 1e9\n')
    (tmp / "outpost.toml").write_text(f"""[gateway]
id = "wire"
state_dir = "state"
[http]
listen = "127.0.0.1:{port}"
[[modbus]]
name = "bus"
path = "{a}"
baud = {BAUD}
interval = "1ms"
timeout = "200ms"
[[modbus.device]]
unit = 1
sensor = "dev"
registers = [
{regs}
]
""")
    gw = subprocess.Popen([str(binary), "run", "--config", str(tmp / "outpost.toml")],
                          cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "RUST_LOG": "warn"})
    series = 'outpost_modbus_answers_total{source="bus",unit="1",sensor="dev"}'
    errors = 'outpost_source_errors_total{source="bus",kind="modbus",error="timeout"}'
    try:
        def answering():
            try:
                return metric(port, series) > 10
            except OSError:
                return False
        wait(answering, "the first answers")
        a0, c0, t0 = metric(port, series), cpu_s(gw.pid), time.monotonic()
        time.sleep(seconds)
        a1, c1, t1 = metric(port, series), cpu_s(gw.pid), time.monotonic()
        timeouts = metric(port, errors)
    finally:
        for p in (gw, server, socat):
            p.terminate()
            p.wait()
        for f in ("gw", "dev"):
            (tmp / f).unlink(missing_ok=True)
        shutil.rmtree(tmp / "state", ignore_errors=True)
    tx = (a1 - a0) / (t1 - t0)
    return tx, (c1 - c0) / max(a1 - a0, 1), timeouts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/outpost"))
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    print(f"9,600 baud 8N1 ({BAUD // BITS} characters/s), t3.5 = {T35 * 1e3:.2f} ms; "
          f"outpost {args.bin} against pymodbus over a pty, {args.seconds:g} s per row\n")
    print("| registers per request | wire time per transaction | wire limit (registers/s) "
          "| transactions/s on the pty | overhead beyond the wire | outpost CPU per transaction "
          "| outpost on a real 9,600-baud wire (bound) | of the wire limit |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2, 10, 60, 125):
            wire = (20 + 2 * n) * BITS / BAUD
            tx, cpu, timeouts = measure(pathlib.Path(args.bin), pathlib.Path(d), n, args.seconds)
            overhead = max(1 / tx - T35, 0.0)
            real = n / (wire + overhead)
            print(f"| {n} | {wire * 1e3:.1f} ms | {n / wire:.0f} | {tx:.0f} | {overhead * 1e3:.2f} ms "
                  f"| {cpu * 1e6:.0f} µs | {real:.0f} registers/s | {100 * real / (n / wire):.1f} % |"
                  + (f" ({timeouts:.0f} timeouts)" if timeouts else ""))


main()
