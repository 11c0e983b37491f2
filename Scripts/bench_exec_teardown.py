#!/usr/bin/env python3
"""The first `kho exec` in place after a cache is filled: with a populated
arena the old image's page tables are what an execve tears down, unless a
helper holds them (KHORuntime's AddressSpaceHolder).

  Scripts/bench_exec_teardown.py --kho KHO NAME=KHO_CACHE [NAME=KHO_CACHE ...]

Each build: start with -m 4096, load 120,000 values of 32,000 bytes
(pymemcache, acknowledged), then 7 `kho exec` in place, printing the first
(the one that pays for the populated page tables) and the rest.
"""
import argparse, subprocess, sys, os, time, re, tempfile, signal
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "cache"))
from harness import free_port  # noqa: E402
from pymemcache.client.base import Client  # noqa: E402
KHO = None
def run(name, binary, items, size, mb, reps):
    d = tempfile.mkdtemp(); m = d + "/m"; os.mkdir(m); port = free_port()
    argv = [binary, "-p", str(port), "-m", str(mb), "-t", "2", "--control-mount", m]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if subprocess.run(["mountpoint", "-q", m]).returncode == 0: break
        time.sleep(0.02)
    c = Client(("127.0.0.1", port), timeout=60)
    v = b"x" * size
    for i in range(0, items, 100):
        c.set_many({f"k{j}": v for j in range(i, min(items, i + 100))}, noreply=False)
    st = c.stats(); c.close()
    rss = int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]) // 1024
    times = []
    first = None
    for _ in range(reps):
        out = subprocess.run([KHO, "exec", m, "--", *argv], capture_output=True, text=True, timeout=120)
        t = re.search(r"in ([0-9.]+) ms", out.stdout)
        times.append(float(t.group(1)) if t else None)
        if first is None: first = times[-1]
    c = Client(("127.0.0.1", port), timeout=60); n = int(c.stats()[b"curr_items"]); c.close()
    p.send_signal(signal.SIGTERM); p.wait(); subprocess.run(["fusermount3", "-uz", m])
    times = sorted(x for x in times if x is not None)
    print(f"{name}: {int(st[b'curr_items'])} items, RSS {rss} MiB, first in-place kho exec after the load {first} ms; the following ones {times} (median {times[len(times)//2]}), items after {n}", flush=True)
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kho", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("builds", nargs="+", metavar="NAME=KHO_CACHE")
    args = parser.parse_args()
    KHO = os.path.abspath(args.kho)
    for _ in range(args.rounds):
        for spec in args.builds:
            name, _, path = spec.partition("=")
            run(name, os.path.abspath(path), 120000, 32000, 4096, 7)
