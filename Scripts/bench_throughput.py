#!/usr/bin/env python3
"""kho-cache beside memcached under the project's C load generator.

Builds Benchmarks/loadgen/loadgen.c with gcc -O2, then for each server
thread count starts memcached and kho-cache with the same -t and -m and runs
the same cases against both, one server at a time: GET-only, SET-only and
90/10 GET/SET; 32 B, 1 KB and 16 KB values; pipelining depth 1 and 16;
`get` and meta `mg` (an mg case is skipped, saying so, when a server
answers ERROR). With two or more CPUs, the server is pinned to CPU 1 and
the load generator to CPU 0 with taskset (server threads share their CPU).
Then memory per item: N items of each size written into each server, RSS
growth from /proc/PID/status, printed per item.

Prints a Markdown table: ops/s of each, the ratio kho-cache/memcached, p99.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN_SOURCE = os.path.join(ROOT, "Benchmarks", "loadgen", "loadgen.c")
SIZES = [("32 B", 32), ("1 KB", 1024), ("16 KB", 16384)]
MIXES = [("GET", 100), ("SET", 0), ("90/10", 90)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu, argv):
    """argv under taskset -c CPU when the machine has a CPU to spare."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu)] + argv


def wait_listening(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited {proc.returncode} before listening")
            if time.monotonic() > deadline:
                sys.exit("server did not listen")
            time.sleep(0.02)


class Server:
    """memcached or kho-cache on a free port, pinned to the server CPU."""

    def __init__(self, name, binary, threads, memory_mb, cpu):
        self.name, self.port = name, free_port()
        argv = [binary, "-p", str(self.port), "-l", "127.0.0.1", "-t", str(threads), "-m", str(memory_mb)]
        if name == "memcached":
            argv += ["-U", "0"] + (["-u", "nobody"] if os.getuid() == 0 else [])
        self.proc = subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def loadgen(binary, cpu, port, get_percent, size, depth, meta, ops, keys, conns):
    argv = [binary, "-p", str(port), "-c", str(conns), "-d", str(depth), "-n", str(ops), "-k", str(keys),
            "-v", str(size), "-r", str(get_percent)] + (["-m"] if meta else [])
    out = subprocess.run(pinned(cpu, argv), capture_output=True, text=True, timeout=600)
    if out.returncode == 3:
        return None  # the server does not speak mg
    if out.returncode != 0:
        sys.exit(f"loadgen failed ({out.returncode}): {' '.join(argv)}\n{out.stderr}")
    return dict(kv.split("=") for kv in out.stdout.split())


def ops_for(size, depth, base):
    """Fewer requests for big values and no pipelining, so each case takes ~1 s."""
    n = base if depth > 1 else base // 4
    return max(5000, n // 8) if size >= 16384 else n


def run_cases(args, loadgen_bin, threads, client_cpu, server_cpu):
    rows = []
    for size_name, size in SIZES:
        keys = min(args.keys, max(1000, (args.memory_mb * 1024 * 1024 // 4) // (size + 64)))
        for mix_name, get_percent in MIXES:
            for depth in (1, 16):
                for meta in (False, True):
                    if meta and get_percent == 0:
                        continue  # mg changes only the reads
                    figures = {}
                    for name, binary in (("memcached", args.memcached), ("kho-cache", args.kho_cache)):
                        server = Server(name, binary, threads, args.memory_mb, server_cpu)
                        try:
                            figures[name] = loadgen(loadgen_bin, client_cpu, server.port, get_percent, size,
                                                    depth, meta, ops_for(size, depth, args.ops), keys, args.conns)
                        finally:
                            server.stop()
                    rows.append((threads, mix_name, size_name, depth, "mg" if meta else "get", figures))
                    print_row(rows[-1])
    return rows


def print_row(row):
    threads, mix, size, depth, verb, figures = row
    mc, kc = figures["memcached"], figures["kho-cache"]
    if mc is None or kc is None:
        who = " and ".join(n for n in ("memcached", "kho-cache") if figures[n] is None)
        print(f"| {threads} | {mix} | {size} | {depth} | {verb} | skipped: {who} answered ERROR to mg | | | |")
    else:
        ratio = float(kc["ops_per_s"]) / float(mc["ops_per_s"])
        print(f"| {threads} | {mix} | {size} | {depth} | {verb} | {float(mc['ops_per_s']):,.0f} | "
              f"{float(kc['ops_per_s']):,.0f} | {ratio:.2f}× | {mc['p99_us']} / {kc['p99_us']} |")
    sys.stdout.flush()


def memory_per_item(args, server_cpu):
    """RSS growth per item after N sets of each size (one fresh server each)."""
    print("\n| value | items | memcached bytes/item | kho-cache bytes/item | ratio |")
    print("|---|---|---|---|---|")
    loadgen_bin = args.loadgen_bin
    for size_name, size in SIZES:
        n = min(args.memory_items, (args.memory_mb * 1024 * 1024 // 2) // (size + 64))
        per_item = {}
        for name, binary in (("memcached", args.memcached), ("kho-cache", args.kho_cache)):
            server = Server(name, binary, 1, args.memory_mb, server_cpu)
            try:
                before = server.rss_kb()
                loadgen(loadgen_bin, None, server.port, 0, size, 16, False, 1, n, 4)  # fills n keys
                per_item[name] = (server.rss_kb() - before) * 1024 / n
            finally:
                server.stop()
        ratio = per_item["kho-cache"] / per_item["memcached"] if per_item["memcached"] > 0 else float("nan")
        print(f"| {size_name} | {n:,} | {per_item['memcached']:,.0f} | {per_item['kho-cache']:,.0f} | {ratio:.2f}× |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kho-cache", required=True)
    parser.add_argument("--memcached", default="/usr/bin/memcached")
    parser.add_argument("--threads", default="1,4", help="server thread counts, comma-separated")
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--ops", type=int, default=400000, help="requests per pipelined case")
    parser.add_argument("--keys", type=int, default=100000)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--memory-items", type=int, default=100000)
    parser.add_argument("--only-memory", action="store_true")
    args = parser.parse_args()
    build = tempfile.mkdtemp(prefix="kho-loadgen-")
    args.loadgen_bin = os.path.join(build, "loadgen")
    subprocess.run(["gcc", "-O2", "-o", args.loadgen_bin, LOADGEN_SOURCE, "-lm"], check=True)
    cpus = os.cpu_count() or 1
    client_cpu, server_cpu = (0, 1) if cpus >= 2 else (None, None)
    print(f"machine: {cpus} CPUs, {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}; "
          f"server on CPU {server_cpu}, loadgen on CPU {client_cpu} (taskset)")
    if not args.only_memory:
        print(f"loadgen: {args.conns} connections, -m {args.memory_mb}, uniform keys\n")
        print("| -t | mix | value | depth | read | memcached ops/s | kho-cache ops/s | kho/mc | p99 µs mc / kho |")
        print("|---|---|---|---|---|---|---|---|---|")
        for threads in (int(t) for t in args.threads.split(",")):
            run_cases(args, args.loadgen_bin, threads, client_cpu, server_cpu)
    memory_per_item(args, server_cpu)
    shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    main()
