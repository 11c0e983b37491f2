#!/usr/bin/env python3
"""Throughput of kho-cache builds beside memcached, with a C load generator.

memcslap (libmemcached-tools) runs each test (get, set, mget) against each
server in turn, every server started fresh with the same options
(`-t 2 -m 1024`), repetitions interleaved so that load from elsewhere falls
on all alike. Prints, per test and server, the median and the best of the
times memcslap reports, and each server's median relative to memcached's
(above 1 means faster than memcached).

  Scripts/bench_memcslap.py --kho-cache NAME=PATH [--kho-cache NAME=PATH ...]
                            [--reps 5] [--execute 100000] [--concurrency 2]

`make bench-memcslap` runs it for the release build.
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc):
    for _ in range(1000):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit("server did not listen")


def start(kind, path, port, tmp):
    if kind == "memcached":
        argv = [path, "-p", str(port), "-l", "127.0.0.1", "-t", "2", "-m", "1024", "-U", "0"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
    else:
        argv = [path, "-p", str(port), "-t", "2", "-m", "1024", "--control-mount", "none"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    wait_listening(port, proc)
    return proc


def memcslap(port, test, execute, concurrency):
    out = subprocess.run(
        ["memcslap", "-s", f"127.0.0.1:{port}", "-t", test, "-e", str(execute),
         "-c", str(concurrency)], capture_output=True, text=True, timeout=600)
    m = re.search(r"keys by +[0-9]+ threads: +([0-9.]+) seconds", out.stdout + out.stderr)
    if out.returncode != 0 or not m:
        raise SystemExit(f"memcslap failed ({out.returncode}): {out.stdout}{out.stderr}")
    return float(m.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kho-cache", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--memcached", default="/usr/bin/memcached")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--execute", type=int, default=100000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tests", default="get,set,mget")
    args = parser.parse_args()
    servers = [("memcached", "memcached", args.memcached)]
    for spec in args.kho_cache:
        name, _, path = spec.partition("=")
        servers.append((name, "kho-cache", os.path.abspath(path)))
    tests = args.tests.split(",")
    times = {(t, s[0]): [] for t in tests for s in servers}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for test in tests:
                for name, kind, path in servers:
                    port = free_port()
                    proc = start(kind, path, port, tmp)
                    try:
                        times[(test, name)].append(memcslap(port, test, args.execute, args.concurrency))
                    finally:
                        proc.terminate()
                        proc.wait()
    print(f"memcslap -c {args.concurrency} -e {args.execute}, servers -t 2 -m 1024, "
          f"{args.reps} interleaved repetitions (seconds; lower is better)\n")
    print("| test | server | median s | best s | memcached / this |")
    print("|---|---|---:|---:|---:|")
    for test in tests:
        base = statistics.median(times[(test, "memcached")])
        for name, _, _ in servers:
            t = times[(test, name)]
            med = statistics.median(t)
            print(f"| {test} | {name} | {med:.3f} | {min(t):.3f} | {base / med:.2f}× |")


if __name__ == "__main__":
    main()
