#!/usr/bin/env python3
"""Throughput of kho-cache beside memcached, in one run, under a C load
generator (Benchmarks/loadgen/loadgen.c, built here with gcc -O2).

For every case both servers run with the same -t and -m, one after the
other, each filled first with the case's keys; the server is pinned to the
first CPU(s) and the load generator to the last (taskset), so that on two
cores they do not share one when -t 1. Cases: GET-only, SET-only and 90/10
mixed; 32 B, 1 KB and 16 KB values; 1 and 4 server threads; one request in
flight per connection and 16 (pipelined); `get` and meta `mg` for reads.
Then the memory per item: RSS after storing N items of each size.

  Scripts/bench_throughput.py --kho-cache .build/release/kho-cache [--seconds S] [--quick]

Prints a Markdown table (ops/s of each, the ratio kho-cache / memcached).
"""
import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def build_loadgen():
    out = os.path.join(tempfile.gettempdir(), "kho-loadgen")
    src = os.path.join(ROOT, "Benchmarks", "loadgen", "loadgen.c")
    subprocess.run(["gcc", "-O2", "-o", out, src, "-lm"], check=True)
    return out


def cpus():
    return os.cpu_count() or 1


def server_cmd(kind, binary, port, threads, memory):
    if kind == "memcached":
        return ["memcached", "-p", str(port), "-U", "0", "-t", str(threads), "-m", str(memory),
                "-c", "4096", "-u", "root", "-l", "127.0.0.1"]
    return [binary, "-p", str(port), "-t", str(threads), "-m", str(memory), "-c", "4096",
            "-l", "127.0.0.1"]


def pin(cmd, cores):
    return ["taskset", "-c", cores] + cmd


def start(kind, binary, threads, memory):
    port = free_port()
    n = cpus()
    # The server gets every CPU but the last when it has threads for them.
    cores = "0" if threads == 1 or n < 3 else f"0-{n - 2}"
    proc = subprocess.Popen(pin(server_cmd(kind, binary, port, threads, memory), cores),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def run_loadgen(loadgen, port, args):
    core = str(cpus() - 1)
    out = subprocess.run(pin([loadgen, "-s", f"127.0.0.1:{port}"] + args, core),
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args} failed: {out.stderr}")
    fields = out.stdout.split()
    return {fields[i]: float(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cell(result):
    return "failed" if result is None else f"{result['ops/s']:,.0f}"


def throughput(args, loadgen):
    mixes = [("GET", 100), ("SET", 0), ("90/10", 90)]
    sizes = [32, 1024, 16384]
    threads = [1, 4]
    depths = [1, 16]
    protocols = ["get", "mg"]
    if args.quick:
        sizes, threads, protocols = [32, 1024], [1, 4], ["get", "mg"]
    rows = []
    for t, size in itertools.product(threads, sizes):
        keys = min(100000, (256 << 20) // (size + 100) // 2)
        servers = {}
        for kind in ("memcached", "kho-cache"):
            servers[kind] = start(kind, args.kho_cache, t, 1024)
            run_loadgen(loadgen, servers[kind][1], ["-c", "16", "-k", str(keys), "-v", str(size),
                                                    "--populate"])
        try:
            for (mix, reads), depth, proto in itertools.product(mixes, depths, protocols):
                if reads == 0 and proto == "mg":
                    continue  # SET-only has no reads
                result = {}
                for kind in ("memcached", "kho-cache"):
                    try:
                        result[kind] = run_loadgen(loadgen, servers[kind][1], [
                            "-c", "32", "-d", str(depth), "-k", str(keys), "-v", str(size),
                            "-r", str(reads), "-p", proto, "-t", str(args.seconds)])
                    except RuntimeError as e:
                        result[kind] = None
                        print(f"<!-- {kind}: {e} -->", flush=True)
                m, k = result["memcached"], result["kho-cache"]
                if m is None or k is None:
                    # A server without the command (mg) answers ERROR: say so.
                    print(f"| {mix} | {size} | {t} | {depth} | {proto} | {cell(m)} | {cell(k)} "
                          "| n/a | |", flush=True)
                    continue
                rows.append((mix, size, t, depth, proto if reads else "set", m, k))
                print(f"| {mix} | {size} | {t} | {depth} | {rows[-1][4]} | {m['ops/s']:,.0f} | "
                      f"{k['ops/s']:,.0f} | {k['ops/s'] / m['ops/s']:.2f}× | "
                      f"{m['p99_us']:.0f} / {k['p99_us']:.0f} |", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.kill()
                proc.wait()
    return rows


def memory(args, loadgen):
    print("\n| value | items | memcached RSS | kho-cache RSS | kho-cache / memcached |")
    print("|---:|---:|---:|---:|---:|")
    for size, items in [(32, 1_000_000), (1024, 200_000), (16384, 20_000)]:
        rss = {}
        for kind in ("memcached", "kho-cache"):
            proc, port = start(kind, args.kho_cache, 1, 1024)
            try:
                base = rss_kb(proc.pid)
                run_loadgen(loadgen, port, ["-c", "16", "-k", str(items), "-v", str(size),
                                            "--populate"])
                rss[kind] = rss_kb(proc.pid) - base
            finally:
                proc.kill()
                proc.wait()
        m, k = rss["memcached"], rss["kho-cache"]
        print(f"| {size} B | {items:,} | {m / 1024:.1f} MiB ({m * 1024 / items:.0f} B/item) | "
              f"{k / 1024:.1f} MiB ({k * 1024 / items:.0f} B/item) | {k / m:.2f}× |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kho-cache", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="fewer value sizes")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    args.kho_cache = os.path.abspath(args.kho_cache)
    loadgen = build_loadgen()
    print(f"{cpus()} CPUs; servers pinned to CPU 0 (-t 1) or all but the last, loadgen to the last")
    print("| mix | value B | -t | in flight | reads | memcached ops/s | kho-cache ops/s | ratio | p99 µs (m / k) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    throughput(args, loadgen)
    if not args.no_memory:
        memory(args, loadgen)


if __name__ == "__main__":
    sys.exit(main())
