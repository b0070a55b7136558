#!/usr/bin/env python3
"""Hostile clients for bench/hardening.sh (standard library only).

Each subcommand drives a running contextd, writes its figures as one JSON object to --out
(with the raw samples) and prints a one-line summary on stdout:

  hostile.py bodies  --port P --pid PID --shape objs|keys [--clients 10] --out FILE
      CLIENTS concurrent PUTs of one ~9 MB hostile body each, while a sampler reads the
      server's VmRSS/VmHWM from /proc/PID/status every 20 ms and a poller times GET /healthz
      on its own keep-alive connection every 10 ms. Memory is read again SETTLE seconds after
      the last PUT answered; the peak is over both (from the first PUT to that last read).
      Then GETs each id: how many were stored, whatever their PUT answered.
  hostile.py writers --port P [--clients 2] [--size 1000000] --out FILE
      CLIENTS writers PUT ~SIZE-byte bodies (a fresh random string each time) to
      hostile_w0, hostile_w1, ... until SIGTERM or SIGINT, then report.
  hostile.py metrics --port P [--requests 50] --out FILE
      REQUESTS sequential GET /metrics on one keep-alive connection, timed.

Statuses are HTTP codes, or "ERR:<exception>" when a request got no answer (connection
refused or reset, timeout): a server that dies under load shows up there, not as a crash of
this script.
"""

import argparse
import base64
import http.client
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter

HOST = "127.0.0.1"
JSON_HEADERS = {"Content-Type": "application/json"}


# --- helpers -----------------------------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile (as bench/run.sh computes pgbench's); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * p / 100))
    return ordered[rank - 1]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 3)


def histogram(statuses):
    """Counter of statuses -> "201:7,ERR:TimeoutError:3", sorted."""
    return ",".join(f"{k}:{v}" for k, v in sorted(Counter(map(str, statuses)).items()))


def proc_memory(pid):
    """(VmRSS, VmHWM) of PID in MB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
    except (FileNotFoundError, ProcessLookupError, KeyError, ValueError):
        return None


def request(conn, method, path, body=None, headers=None):
    """One request on CONN; returns (status, body bytes). Raises on a transport error."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def write_out(path, result, line):
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(line, flush=True)


# --- bodies: hostile request bodies --------------------------------------------------------------

OBJS_TARGET = 9_000_000   # bytes of the "objs" body: {"a":{}} repeated (about a million objects)
KEYS_COUNT = 750_000       # keys of the "keys" body: "k0":0 .. "k749999":0 (about 9 MB)


def hostile_body(shape):
    if shape == "objs":
        head, unit, tail = b'{"data":{"l":[', b'{"a":{}},', b'{"a":{}}]},"source":"mcp"}'
        count = (OBJS_TARGET - len(head) - len(tail)) // len(unit)
        return head + unit * count + tail, count + 1
    if shape == "keys":
        keys = b",".join(b'"k%d":0' % i for i in range(KEYS_COUNT))
        return b'{"data":{' + keys + b'},"source":"mcp"}', KEYS_COUNT
    raise ValueError(shape)


def cmd_bodies(args):
    body, elements = hostile_body(args.shape)
    stop = threading.Event()

    # The sampler: (t, rss_mb) every 20 ms, until stop.
    samples = []

    def sampler():
        while not stop.is_set():
            mem = proc_memory(args.pid)
            if mem is None:
                break
            samples.append((time.monotonic(), mem[0]))
            time.sleep(0.020)

    # The poller: (t_start, latency s or None on error) for GET /healthz every 10 ms, on one
    # keep-alive connection (re-opened after an error).
    polls = []

    def poller():
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        while not stop.is_set():
            start = time.monotonic()
            try:
                status, _ = request(conn, "GET", "/healthz")
                polls.append((start, time.monotonic() - start if status == 200 else None))
            except (OSError, http.client.HTTPException):
                polls.append((start, None))
                conn.close()
                conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
                time.sleep(0.1)
            time.sleep(0.010)
        conn.close()

    # One hostile PUT per client, each to its own id: (status, seconds).
    puts = [None] * args.clients
    gate = threading.Barrier(args.clients + 1)

    def put(i):
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        gate.wait()
        start = time.monotonic()
        try:
            status, _ = request(conn, "PUT", f"/contexts/hostile_{i}", body, JSON_HEADERS)
        except (OSError, http.client.HTTPException) as e:
            status = f"ERR:{type(e).__name__}"
        puts[i] = (status, time.monotonic() - start)
        conn.close()

    rss_before = proc_memory(args.pid)
    background = [threading.Thread(target=sampler), threading.Thread(target=poller)]
    for t in background:
        t.start()
    time.sleep(0.2)   # a few idle /healthz polls before the load
    workers = [threading.Thread(target=put, args=(i,)) for i in range(args.clients)]
    for t in workers:
        t.start()
    gate.wait()
    t0 = time.monotonic()
    for t in workers:
        t.join()
    t1 = time.monotonic()
    time.sleep(args.settle)   # does memory come back once the load is over?
    mem_after = proc_memory(args.pid)
    stop.set()
    for t in background:
        t.join()
    # Which PUTs were stored, whatever they answered (a 503 after a timeout may still commit).
    stored = 0
    if mem_after is not None:
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        for i in range(args.clients):
            try:
                status, _ = request(conn, "GET", f"/contexts/hostile_{i}")
                stored += status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        conn.close()

    during = [lat for start, lat in polls if t0 <= start <= t1]
    ok = [lat for lat in during if lat is not None]
    # Peak from the first PUT to the last read: work a PUT leaves behind after its answer
    # (indexing, sync) counts too.
    loaded = [rss for t, rss in samples if t >= t0]
    in_window = [rss for t, rss in samples if t0 <= t <= t1]
    result = {
        "shape": args.shape,
        "clients": args.clients,
        "body_bytes": len(body),
        "body_elements": elements,
        "statuses": histogram(s for s, _ in puts),
        "stored": stored,
        "put_seconds": sorted(round(s, 3) for _, s in puts),
        "elapsed_s": round(t1 - t0, 3),
        "rss_before_mb": rss_before and round(rss_before[0], 1),
        "peak_rss_mb": round(max(loaded), 1) if loaded else None,
        "peak_rss_while_putting_mb": round(max(in_window), 1) if in_window else None,
        "hwm_mb": mem_after and round(mem_after[1], 1),
        "rss_after_mb": mem_after and round(mem_after[0], 1),
        "settle_s": args.settle,
        "server_alive": mem_after is not None,
        "healthz_polls": len(during),
        "healthz_errors": len(during) - len(ok),
        "healthz_p50_ms": ms(percentile(ok, 50)),
        "healthz_p99_ms": ms(percentile(ok, 99)),
        "healthz_max_ms": ms(max(ok) if ok else None),
        "rss_samples_mb": [[round(t - t0, 3), round(rss, 1)] for t, rss in samples],
        "healthz_samples_ms": [[round(s - t0, 3), ms(lat)] for s, lat in polls],
    }
    write_out(args.out, result,
              f"bodies {args.shape}: {args.clients} x {len(body) / 1e6:.1f} MB -> "
              f"{result['statuses']} in {result['elapsed_s']} s ({stored} stored); peak RSS "
              f"{result['peak_rss_mb']} MB, {args.settle} s later {result['rss_after_mb']} MB; "
              f"/healthz p50/p99/max {result['healthz_p50_ms']}/{result['healthz_p99_ms']}/"
              f"{result['healthz_max_ms']} ms ({result['healthz_errors']} errors)")


# --- writers: 1 MB writes beside a read benchmark ------------------------------------------------

def cmd_writers(args):
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Random base64 of 3/4 SIZE bytes: SIZE characters, JSON-safe, different every time.
    raw_len = args.size * 3 // 4
    writes = []   # (end time, status, seconds)
    lock = threading.Lock()

    def writer(i):
        conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        while not stop.is_set():
            blob = base64.b64encode(os.urandom(raw_len)).decode()
            body = json.dumps({"data": {"blob": blob}, "source": "mcp"}).encode()
            start = time.monotonic()
            try:
                status, _ = request(conn, "PUT", f"/contexts/hostile_w{i}", body, JSON_HEADERS)
            except (OSError, http.client.HTTPException) as e:
                status = f"ERR:{type(e).__name__}"
                conn.close()
                conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
                time.sleep(0.1)
            with lock:
                writes.append((time.monotonic(), status, time.monotonic() - start))
        conn.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(args.clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while not stop.is_set():
        stop.wait(0.1)
    t1 = time.monotonic()
    for t in threads:   # each finishes the write it is in
        t.join()

    # Only writes that ended before the stop signal count: the run they overlapped.
    done = [(status, secs) for end, status, secs in writes if end <= t1]
    ok = [secs for status, secs in done if isinstance(status, int) and 200 <= status < 300]
    result = {
        "clients": args.clients,
        "body_bytes": args.size,
        "elapsed_s": round(t1 - t0, 3),
        "writes": len(done),
        "writes_2xx": len(ok),
        "statuses": histogram(status for status, _ in done),
        "writes_per_s": round(len(done) / (t1 - t0), 2) if t1 > t0 else None,
        "put_p50_ms": ms(percentile(ok, 50)),
        "put_p99_ms": ms(percentile(ok, 99)),
    }
    write_out(args.out, result,
              f"writers: {result['writes']} writes of {args.size / 1e6:.1f} MB in "
              f"{result['elapsed_s']} s ({result['statuses']}), p50/p99 "
              f"{result['put_p50_ms']}/{result['put_p99_ms']} ms")


# --- metrics: GET /metrics, timed ----------------------------------------------------------------

def cmd_metrics(args):
    conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
    times, statuses, body = [], [], b""
    for _ in range(args.requests):
        start = time.monotonic()
        try:
            status, body = request(conn, "GET", "/metrics")
        except (OSError, http.client.HTTPException) as e:
            status = f"ERR:{type(e).__name__}"
            conn.close()
            conn = http.client.HTTPConnection(HOST, args.port, timeout=args.timeout)
        times.append(time.monotonic() - start)
        statuses.append(status)
    conn.close()

    # The gauges of the last answer, to check that the store was seeded as meant.
    gauges = {}
    for line in body.decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name in ("contextd_contexts", "contextd_context_versions"):
            gauges[name] = int(float(value))
    result = {
        "requests": args.requests,
        "statuses": histogram(statuses),
        "first_ms": ms(times[0]),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times)),
        "mean_ms": ms(sum(times) / len(times)),
        "contexts": gauges.get("contextd_contexts"),
        "versions": gauges.get("contextd_context_versions"),
        "times_ms": [ms(t) for t in times],
    }
    write_out(args.out, result,
              f"metrics: {args.requests} x GET /metrics ({result['statuses']}), p50/p99/max "
              f"{result['p50_ms']}/{result['p99_ms']}/{result['max_ms']} ms; "
              f"{result['contexts']} contexts, {result['versions']} versions")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--out", required=True, help="JSON result file")
        p.add_argument("--timeout", type=float, default=120, help="per request, seconds")

    p = sub.add_parser("bodies", help="concurrent hostile PUT bodies; memory and /healthz")
    common(p)
    p.add_argument("--pid", type=int, required=True, help="the server's pid (for /proc)")
    p.add_argument("--shape", choices=("objs", "keys"), required=True)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--settle", type=float, default=3, help="seconds before the last RSS read")
    p.set_defaults(func=cmd_bodies)

    p = sub.add_parser("writers", help="1 MB writers until SIGTERM")
    common(p)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--size", type=int, default=1_000_000, help="bytes of random data per PUT")
    p.set_defaults(func=cmd_writers)

    p = sub.add_parser("metrics", help="sequential GET /metrics, timed")
    common(p)
    p.add_argument("--requests", type=int, default=50)
    p.set_defaults(func=cmd_metrics)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
