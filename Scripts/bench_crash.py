#!/usr/bin/env python3
"""Recovery after kill -9: kho-cache under `kho run` beside memcached.

For each dataset (1M x 1 KB, 8M x 50 B by default) the cache is loaded
through pymemcache (the time that takes is the cost of refilling from a
client), then killed with SIGKILL. Measured from the kill: the time until
the first reply of the restarted server (a `get` of a loaded key that
answers), the time until that reply is a hit, and the share of a sample of
loaded keys present with their values. memcached, killed the same way and
started again (as its supervisor would), comes back empty.

  Scripts/bench_crash.py --kho-cache PATH --kho PATH [--datasets 1000000x1024,8000000x50]
"""
import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "cache"))
from harness import free_port  # noqa: E402
from pymemcache.client.base import Client  # noqa: E402


def value_for(i, size):
    stamp = b"%d:" % i
    return (stamp * (size // len(stamp) + 1))[:size]


def load(port, count, size):
    c = Client(("127.0.0.1", port), timeout=60, connect_timeout=10)
    began = time.monotonic()
    batch = {}
    for i in range(count):
        batch[f"k{i}"] = value_for(i, size)
        if len(batch) == 1000:
            c.set_many(batch, noreply=False)
            batch = {}
    if batch:
        c.set_many(batch, noreply=False)
    elapsed = time.monotonic() - began
    items = int(c.stats()[b"curr_items"])
    c.close()
    return elapsed, items


def first_reply(port, key, began, deadline=120):
    """Seconds from `began` until a get of `key` is answered at all, and
    until it hits."""
    answered = None
    while time.monotonic() - began < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"get %s\r\n" % key.encode())
                reply = b""
                while not reply.endswith(b"END\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    reply += chunk
                now = time.monotonic() - began
                if answered is None:
                    answered = now
                if reply.startswith(b"VALUE"):
                    return answered, now
                return answered, None
        except OSError:
            time.sleep(0.001)
    return answered, None


def sample_kept(port, count, size, n=10000):
    c = Client(("127.0.0.1", port), timeout=60)
    keys = random.Random(7).sample(range(count), min(n, count))
    kept = 0
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        got = c.get_many([f"k{i}" for i in chunk])
        kept += sum(1 for i in chunk if got.get(f"k{i}") == value_for(i, size))
    c.close()
    return kept, len(keys)


def serving_pid(port):
    c = Client(("127.0.0.1", port), timeout=10)
    try:
        return int(c.stats()[b"pid"])
    finally:
        c.close()


def wait_serving(port, proc):
    for _ in range(3000):
        if proc.poll() is not None:
            raise SystemExit(f"exited {proc.returncode}")
        try:
            return serving_pid(port)
        except Exception:
            time.sleep(0.01)
    raise SystemExit("did not start")


def kho_cache_case(args, count, size, memory_mb, tmp):
    port = free_port()
    log = open(os.path.join(tmp, f"kho-{count}.log"), "wb")
    keeper = subprocess.Popen(
        [args.kho, "run", "--restart-delay", "0", "--", args.kho_cache, "-p", str(port),
         "-m", str(memory_mb), "-t", "2", "--control-mount", "none"],
        stdout=log, stderr=log)
    try:
        pid = wait_serving(port, keeper)
        load_s, items = load(port, count, size)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        answered, hit = first_reply(port, "k0", killed)
        kept, sampled = sample_kept(port, count, size)
        return dict(server="kho-cache", load_s=load_s, items=items, answered=answered, hit=hit,
                    kept=kept, sampled=sampled)
    finally:
        keeper.send_signal(signal.SIGTERM)
        keeper.wait()


def memcached_case(args, count, size, memory_mb):
    port = free_port()
    argv = [args.memcached, "-p", str(port), "-l", "127.0.0.1", "-t", "2", "-m", str(memory_mb)]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(port, proc)
        load_s, items = load(port, count, size)
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        # What a supervisor does: start it again at once.
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        answered, hit = first_reply(port, "k0", killed)
        kept, sampled = sample_kept(port, count, size)
        return dict(server="memcached", load_s=load_s, items=items, answered=answered, hit=hit,
                    kept=kept, sampled=sampled)
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kho-cache", required=True)
    parser.add_argument("--kho", required=True)
    parser.add_argument("--memcached", default="/usr/bin/memcached")
    parser.add_argument("--datasets", default="1000000x1024,8000000x50")
    args = parser.parse_args()
    args.kho_cache, args.kho = os.path.abspath(args.kho_cache), os.path.abspath(args.kho)
    rows = []
    tmp = tempfile.mkdtemp(prefix="kho-bench-crash-")
    try:
        for spec in args.datasets.split(","):
            count, size = (int(x) for x in spec.split("x"))
            memory_mb = max(64, int(count * (size + 120) * 1.6) >> 20)
            for case in (kho_cache_case(args, count, size, memory_mb, tmp),
                         memcached_case(args, count, size, memory_mb)):
                case.update(dataset=f"{count // 1000}k x {size} B", memory_mb=memory_mb)
                rows.append(case)
                print(case, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| dataset | server | -m | refill from a client (s) | kill -9 → first reply (ms) | → first hit (ms) | sampled keys kept |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = lambda v: f"{v * 1000:.0f}" if v is not None else "never"  # noqa: E731
        print(f"| {r['dataset']} | {r['server']} | {r['memory_mb']} | {r['load_s']:.1f} | "
              f"{ms(r['answered'])} | {ms(r['hit'])} | {r['kept']} / {r['sampled']} |")


if __name__ == "__main__":
    main()
