#!/usr/bin/env python3
"""User-space instructions per request of a memcached-protocol server.

For machines without hardware counters (a VM: `perf stat -e instructions`
says <not supported>), counts with valgrind instead. Each case starts the
server under valgrind twice and drives it with Benchmarks/loadgen/loadgen.c,
once with N and once with 2N timed requests; everything else (start-up, the
key-space fill, connecting, exit) is the same in both runs, so

    instructions per request = (Ir(2N) - Ir(N)) / N

counted over every thread of the server. The 2N run's callgrind file is kept
(`--keep DIR`) for callgrind_annotate. Timers that fire while idle add a
little noise that grows with wall time; it is small beside a request's cost.

Example:
    python3 Scripts/instructions_per_request.py --server .build/release/kho-cache
"""
import argparse
import glob
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# The same start-up helpers as the throughput bench (a sibling script).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_throughput import free_port, wait_listening  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN_SOURCE = os.path.join(ROOT, "Benchmarks", "loadgen", "loadgen.c")
CASES = [("GET", 100, 1), ("GET", 100, 16), ("SET", 0, 1), ("SET", 0, 16), ("90/10", 90, 1), ("90/10", 90, 16)]


def counted_run(args, loadgen_bin, get_percent, depth, ops, outdir, tag):
    """Total Ir of one server run serving `ops` timed requests."""
    port = free_port()
    out = os.path.join(outdir, f"callgrind.{tag}")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", args.server, "-p", str(port),
            "-l", "127.0.0.1", "-t", "1", "-m", str(args.memory_mb)]
    if os.path.basename(args.server) == "memcached":
        # memcached sets its descriptor limit to -c; valgrind (which keeps 12
        # descriptors for itself) allows that only when it is exactly the
        # limit valgrind leaves it, so -c 256 under a limit of 268.
        argv += ["-U", "0", "-c", "256"] + (["-u", "nobody"] if os.getuid() == 0 else [])
        limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (268, 268))
        # Created writable for all: valgrind opens it again at exit, after
        # memcached has become nobody.
        open(out, "w").close()
        os.chmod(out, 0o666)
    else:
        limit = None
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=limit)
    try:
        wait_listening(port, proc, timeout=120)
        lg = subprocess.run([loadgen_bin, "-p", str(port), "-c", str(args.conns), "-d", str(depth), "-n", str(ops),
                             "-k", str(args.keys), "-v", str(args.value), "-r", str(get_percent)] + (["-m"] if args.meta else []),
                            capture_output=True, text=True, timeout=1200)
        if lg.returncode != 0:
            sys.exit(f"loadgen failed: {lg.stderr}")
        figures = dict(kv.split("=") for kv in lg.stdout.split())
        if int(figures.get("errors", "0")) != 0:
            sys.exit(f"loadgen saw errors: {lg.stdout}")
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            for line in f:
                m = re.match(r"(summary|totals): (\d+)", line)
                if m:
                    total += int(m.group(2))
                    break
    return total, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="kho-cache or memcached binary")
    parser.add_argument("--ops", type=int, default=10000, help="N: the timed requests of the shorter run")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--value", type=int, default=32)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--memory-mb", type=int, default=64)
    parser.add_argument("--cases", default="all", help="comma-separated indices into the case list, or all")
    parser.add_argument("--meta", action="store_true", help="reads as meta `mg KEY v` instead of `get`")
    parser.add_argument("--keep", help="directory to keep the 2N runs' callgrind files in")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="kho-ipr-")
    os.chmod(work, 0o777)  # memcached -u nobody writes its callgrind file here
    loadgen_bin = os.path.join(work, "loadgen")
    subprocess.run(["gcc", "-O2", "-o", loadgen_bin, LOADGEN_SOURCE, "-lm"], check=True)
    cases = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
    print(f"server: {args.server}; {args.conns} connections, {args.keys} keys, {args.value} B values, "
          f"N = {args.ops}, reads as {'mg' if args.meta else 'get'}, valgrind --tool=callgrind, all threads")
    print("| mix | depth | instructions / request |")
    print("|---|---:|---:|")
    for name, get_percent, depth in cases:
        tag = f"{name.replace('/', '-')}-d{depth}"
        one, _ = counted_run(args, loadgen_bin, get_percent, depth, args.ops, work, tag + "-n")
        two, path = counted_run(args, loadgen_bin, get_percent, depth, 2 * args.ops, work, tag + "-2n")
        print(f"| {name} | {depth} | {(two - one) / args.ops:,.0f} |")
        sys.stdout.flush()
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for p in glob.glob(path + "*"):
                shutil.copy(p, args.keep)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
