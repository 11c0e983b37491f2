#!/usr/bin/env python3
"""kho-cache upgrade vs memcached 1.6 warm restart, on the same data, client
and machine (issue 7, "Benchmarks").

For each dataset, one server at a time (kho-cache, then memcached -e):
  1. bulk-load N items (pipelined `set ... noreply` over raw sockets), check
     curr_items == N and evictions == 0;
  2. memory: RSS of the server after the load minus RSS before it, over N,
     and the server's own `stats bytes`;
  3. steady-state GET and SET throughput with the same load generator
     (P processes, one connection each, D pipelined requests per write);
  4. upgrade pause, R times: a prober process sends `get KEY` in a tight loop
     on (re)connecting sockets and stamps each reply (time.monotonic_ns);
     pause = last reply of the old image -> first reply of the new one.
     kho-cache: `kho exec DIR -- BIN ARGS` (in place) and `--overlapped`.
     memcached: SIGUSR1 -> wait for exit -> wait for the next wall-clock
     second (memcached refuses a restart in the second it stopped in) ->
     start again with the same options -> first reply.
     After every upgrade: 10,000 random keys checked and curr_items == N.
  5. the same upgrades with --idle-connections (default 10,000) idle client
     connections open (RLIMIT_NOFILE raised, -c 12000): after each upgrade
     every idle connection must still answer `version` on the same socket;
     one that does not is counted as a reconnect (and reopened).
     Columns: failed requests (prober errors, hangs, bad replies), reconnects
     (prober sockets reopened + idle connections lost), refused connections,
     lost keys.

Only the stdlib is used. Prints Markdown tables at the end (and --json FILE).
"""

import argparse
import errno
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"


# ----------------------------------------------------------------- data
def key_of(i):
    return b"k%09d" % i


def value_of(key, size):
    # Deterministic, key-dependent, no \r\n: checkable after an upgrade.
    if size <= len(key):
        return key[-size:]
    return key + b"." * (size - len(key))


# ------------------------------------------------------------ raw socket
def connect(port, timeout=30.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(max(65536, n - len(buf)))
        if not chunk:
            raise ConnectionError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_until(s, terminator):
    buf = bytearray()
    while not buf.endswith(terminator):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("EOF")
        buf += chunk
    return bytes(buf)


def stats(port):
    with connect(port) as s:
        s.sendall(b"stats\r\n")
        text = recv_until(s, b"END\r\n").decode()
    out = {}
    for line in text.split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def wait_serving(port, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return stats(port)
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("nothing serves on port %d after %.0f s" % (port, timeout))


# --------------------------------------------------------------- loading
def _load_range(port, lo, hi, size, batch):
    s = connect(port, timeout=600)
    try:
        i = lo
        while i < hi:
            j = min(hi, i + batch)
            parts = []
            for k in range(i, j):
                key = key_of(k)
                parts.append(b"set %s 0 0 %d noreply\r\n%s\r\n" % (key, size, value_of(key, size)))
            s.sendall(b"".join(parts))
            i = j
        # A final synchronous command: everything before it has been applied.
        s.sendall(b"version\r\n")
        recv_until(s, b"\r\n")
    finally:
        s.close()


def bulk_load(port, n, size, procs=2):
    batch = max(64, min(4096, (256 << 10) // (size + 40)))
    step = (n + procs - 1) // procs
    ps = [
        mp.Process(target=_load_range, args=(port, p * step, min(n, (p + 1) * step), size, batch))
        for p in range(procs)
    ]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("loader exited with %s" % p.exitcode)
    return time.monotonic() - t0


# ----------------------------------------------------------- verification
def verify_sample(port, n, size, sample, seed):
    """`sample` random keys through multi-gets; returns the number missing
    or wrong."""
    rnd = random.Random(seed)
    keys = [key_of(rnd.randrange(n)) for _ in range(min(sample, n))]
    bad = 0
    with connect(port) as s:
        for i in range(0, len(keys), 100):
            chunk = keys[i:i + 100]
            s.sendall(b"get " + b" ".join(chunk) + b"\r\n")
            reply = recv_until(s, b"END\r\n")
            got = {}
            pos = 0
            while True:
                eol = reply.index(b"\r\n", pos)
                line = reply[pos:eol]
                if line == b"END":
                    break
                _, k, _, ln = line.split(b" ")[:4]
                ln = int(ln)
                got[k] = reply[eol + 2:eol + 2 + ln]
                pos = eol + 2 + ln + 2
            for k in chunk:
                if got.get(k) != value_of(k, size):
                    bad += 1
    return bad


# ---------------------------------------------------------------- prober
def _prober(port, key, expect, stop, out):
    """Tight loop of `get key` on a (re)connecting socket. Reports the
    largest gap between consecutive good replies (with its ends), the
    number of refused connects and of other errors."""
    req = b"get " + key + b"\r\n"
    want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(expect), expect)
    last = None
    best = (0, None, None)
    refused = 0
    errors = 0
    hung = 0
    bad = 0
    replies = 0
    connects = 0
    s = None
    while not stop.is_set():
        try:
            if s is None:
                connects += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.connect((HOST, port))
            s.sendall(req)
            r = recv_exact(s, len(want))
            now = time.monotonic_ns()
            if r != want:
                bad += 1
                s.close()
                s = None
                continue
            replies += 1
            if last is not None and now - last > best[0]:
                best = (now - last, last, now)
            last = now
        except OSError as e:
            if s is not None:
                s.close()
                s = None
            if isinstance(e, socket.timeout):
                hung += 1  # an open connection nobody answers (5 s)
            elif isinstance(e, ConnectionRefusedError) or e.errno == errno.ECONNREFUSED:
                refused += 1
                time.sleep(0.0001)  # don't steal a core from the starting server
            else:
                errors += 1
        except ConnectionError:
            if s is not None:
                s.close()
            s = None
            errors += 1
    if s is not None:
        s.close()
    out.put(dict(gap_ns=best[0], gap_from=best[1], gap_to=best[2], refused=refused,
                 errors=errors, hung=hung, bad=bad, replies=replies,
                 reconnects=max(0, connects - 1)))


class Prober:
    def __init__(self, port, key, expect):
        self.stop = mp.Event()
        self.out = mp.Queue()
        self.p = mp.Process(target=_prober, args=(port, key, expect, self.stop, self.out))

    def __enter__(self):
        self.p.start()
        time.sleep(0.2)  # let it reach a steady loop
        return self

    def finish(self):
        time.sleep(0.2)
        self.stop.set()
        r = self.out.get(timeout=60)
        self.p.join()
        return r

    def __exit__(self, *exc):
        if self.p.is_alive():
            self.stop.set()
            self.p.join(5)
            if self.p.is_alive():
                self.p.kill()


# ------------------------------------------------------------- throughput
def _load_gen(port, n, size, mode, depth, seconds, seed, out):
    rnd = random.Random(seed)
    s = connect(port)
    # Pre-built batches of random keys; replies have known lengths.
    batches = []
    for _ in range(64):
        keys = [key_of(rnd.randrange(n)) for _ in range(depth)]
        if mode == "get":
            req = b"".join(b"get %s\r\n" % k for k in keys)
            rlen = sum(len(b"VALUE %s 0 %d\r\n\r\nEND\r\n" % (k, size)) + size for k in keys)
        else:
            req = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, size, value_of(k, size)) for k in keys)
            rlen = len(b"STORED\r\n") * depth
        batches.append((req, rlen))
    ops = 0
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while True:
        req, rlen = batches[i & 63]
        s.sendall(req)
        recv_exact(s, rlen)
        ops += depth
        i += 1
        if (i & 15) == 0 and time.monotonic() >= end:
            break
    out.put((ops, time.monotonic() - t0))
    s.close()


def throughput(port, n, size, mode, procs, depth, seconds):
    q = mp.Queue()
    ps = [mp.Process(target=_load_gen, args=(port, n, size, mode, depth, seconds, 1000 + i, q))
          for i in range(procs)]
    for p in ps:
        p.start()
    res = [q.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    return sum(o / t for o, t in res)


# ---------------------------------------------------------------- helpers
def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def dist(xs):
    xs = sorted(xs)
    if not xs:
        return dict(n=0)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return dict(n=len(xs), min=xs[0], median=statistics.median(xs), p90=p90, p99=p99,
                max=xs[-1])


def fmt_ms(x):
    if x is None:
        return "-"
    return "%.1f" % x if x >= 10 else "%.2f" % x


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, flush=True)


def unmount(d):
    if subprocess.run(["fusermount3", "-u", "-z", d], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", d], capture_output=True)


# ------------------------------------------------------------------ servers
class KhoCache:
    name = "kho-cache"

    def __init__(self, binary, kho, port, mb, huge, workdir, threads):
        self.binary = os.path.abspath(binary)
        self.kho = os.path.abspath(kho)
        self.port = port
        self.mount = os.path.join(workdir, "kho-mount-%d" % port)
        self.args = ["-p", str(port), "-m", str(mb), "-t", str(threads), "-c", "12000",
                     "--control-mount", self.mount]
        if huge:
            self.args.append("--huge-pages")
        self.errlog = open(os.path.join(workdir, "kho-cache-%d.log" % port), "ab")
        self.pid = None
        self.first = None

    def start(self):
        os.makedirs(self.mount, exist_ok=True)
        self.first = subprocess.Popen([self.binary] + self.args, stdout=self.errlog,
                                      stderr=self.errlog, start_new_session=True)
        self.pid = int(wait_serving(self.port)["pid"])

    def upgrade(self, mode):
        """Returns timings (ms) of the `kho exec` command itself."""
        cmd = [self.kho, "exec", self.mount]
        if mode == "overlapped":
            cmd.append("--overlapped")
        cmd += ["--", self.binary] + self.args
        t0 = time.monotonic_ns()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        t1 = time.monotonic_ns()
        if r.returncode != 0:
            raise RuntimeError("kho exec failed (%d): %s %s" % (r.returncode, r.stdout, r.stderr))
        self.pid = int(wait_serving(self.port)["pid"])
        return dict(t_cmd=t0, t_cmd_done=t1, exec_ms=(t1 - t0) / 1e6)

    def stop(self):
        for pid in {self.pid, self.first.pid if self.first else None} - {None}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                pid_alive(p) for p in {self.pid} if p is not None):
            if self.first:
                self.first.poll()
            time.sleep(0.05)
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        if self.first:
            try:
                self.first.wait(5)
            except subprocess.TimeoutExpired:
                self.first.kill()
        unmount(self.mount)
        try:
            os.rmdir(self.mount)
        except OSError:
            pass


class Memcached:
    name = "memcached"

    def __init__(self, binary, port, mb, workdir, threads):
        self.binary = binary
        self.port = port
        self.file = "/dev/shm/bench-upgrade-mc-%d-%d" % (os.getpid(), port)
        self.args = ["-p", str(port), "-l", HOST, "-U", "0", "-m", str(mb), "-t", str(threads),
                     "-c", "12000", "-e", self.file, "-u", "root"]
        self.errlog = open(os.path.join(workdir, "memcached-%d.log" % port), "ab")
        self.proc = None
        self.pid = None
        self.clean_files()

    def clean_files(self):
        for f in (self.file, self.file + ".meta"):
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass

    def start(self):
        self.proc = subprocess.Popen([self.binary] + self.args, stdout=self.errlog,
                                     stderr=self.errlog, start_new_session=True)
        self.pid = self.proc.pid
        wait_serving(self.port)

    def upgrade(self, mode):
        t_sig = time.monotonic_ns()
        self.proc.send_signal(signal.SIGUSR1)
        self.proc.wait(300)
        t_exit = time.monotonic_ns()
        # memcached refuses a restart in the wall-clock second it stopped in.
        now = time.time()
        wait = (int(now) + 1 - now) + 0.001
        time.sleep(wait)
        t_start = time.monotonic_ns()
        self.start()
        return dict(t_cmd=t_sig, t_exit=t_exit, t_start=t_start,
                    shutdown_ms=(t_exit - t_sig) / 1e6, second_wait_ms=(t_start - t_exit) / 1e6)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.clean_files()


# ------------------------------------------------------- idle connections
class IdleConnections:
    """N idle client connections held by this process; `check` asks each
    for `version` (all sent, then all read) and reopens those that are
    gone, returning how many were."""

    def __init__(self, port, n):
        self.port = port
        self.socks = [self.open() for _ in range(n)]

    def open(self):
        s = socket.create_connection((HOST, self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def check(self):
        lost = 0
        alive = []
        for s in self.socks:
            try:
                s.sendall(b"version\r\n")
                alive.append(s)
            except OSError:
                alive.append(None)
        for i, s in enumerate(alive):
            ok = False
            if s is not None:
                try:
                    ok = recv_until(s, b"\r\n").startswith(b"VERSION")
                except (OSError, RuntimeError, ConnectionError):
                    ok = False
            if not ok:
                lost += 1
                try:
                    self.socks[i].close()
                except OSError:
                    pass
                self.socks[i] = self.open()
        return lost

    def close(self):
        for s in self.socks:
            s.close()


def raise_open_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------- the run
def bench_server(srv, ds, args, modes, repeats, results):
    n, size = ds["n"], ds["size"]
    row = dict(server=srv.name, dataset=ds["label"], n=n, size=size, mb=ds["mb"])
    results.append(row)
    srv.start()
    base_rss = rss_bytes(srv.pid)
    log("%s %s: started pid %d, RSS %.1f MiB; loading" % (srv.name, ds["label"], srv.pid,
                                                          base_rss / 2**20))
    row["load_s"] = bulk_load(srv.port, n, size)
    st = stats(srv.port)
    row["curr_items"] = int(st["curr_items"])
    row["evictions"] = int(st.get("evictions", 0))
    log("  loaded in %.1f s (%.0f sets/s): curr_items %d evictions %d" % (
        row["load_s"], n / row["load_s"], row["curr_items"], row["evictions"]))
    if row["curr_items"] != n or row["evictions"]:
        raise RuntimeError("%s: curr_items %d != %d or evictions %d" % (
            srv.name, row["curr_items"], n, row["evictions"]))
    rss = rss_bytes(srv.pid)
    row["rss_base"] = base_rss
    row["rss_loaded"] = rss
    row["rss_per_item"] = (rss - base_rss) / n
    row["stats_bytes"] = int(st["bytes"])
    row["stats_bytes_per_item"] = int(st["bytes"]) / n
    log("  RSS %.1f MiB -> %.1f B/item; stats bytes %d (%.1f B/item)" % (
        rss / 2**20, row["rss_per_item"], row["stats_bytes"], row["stats_bytes_per_item"]))

    if not args.no_throughput:
        for mode in ("get", "set"):
            ops = throughput(srv.port, n, size, mode, args.clients, args.depth, args.seconds)
            row["%s_ops" % mode] = ops
            log("  %s: %.0f ops/s" % (mode, ops))
        st = stats(srv.port)
        if int(st["curr_items"]) != n:
            raise RuntimeError("%s: curr_items %s after the throughput run" % (
                srv.name, st["curr_items"]))

    key = key_of(n // 2)
    expect = value_of(key, size)
    idle_counts = [0] + ([args.idle_connections] if args.idle_connections else [])
    for idle_count in idle_counts:
        # The idle connections stay open across every mode's upgrades.
        idle = IdleConnections(srv.port, idle_count) if idle_count else None
        suffix = "" if not idle_count else " +%dk idle" % (idle_count // 1000)
        try:
            for mode in modes:
                runs = []
                for r in range(repeats):
                    with Prober(srv.port, key, expect) as pr:
                        timing = srv.upgrade(mode)
                        res = pr.finish()
                    res["idle"] = idle_count
                    res["idle_lost"] = idle.check() if idle else 0
                    res.update(timing)
                    res["pause_ms"] = res["gap_ns"] / 1e6
                    if "t_start" in res and res["gap_to"]:
                        res["start_to_reply_ms"] = (res["gap_to"] - res["t_start"]) / 1e6
                    if res["gap_from"]:
                        res["cmd_to_reply_ms"] = (res["gap_to"] - res["t_cmd"]) / 1e6
                    st = stats(srv.port)
                    res["curr_items"] = int(st["curr_items"])
                    res["sample_bad"] = verify_sample(srv.port, n, size, args.sample, seed=r)
                    res["rss"] = rss_bytes(srv.pid)
                    runs.append(res)
                    log("  %s%s #%d: pause %.2f ms, refused %d, hung %d, errors %d, bad replies %d, "
                        "reconnects %d, idle lost %d, curr_items %d, sample bad %d%s" % (
                            mode, suffix, r + 1, res["pause_ms"], res["refused"], res["hung"],
                            res["errors"], res["bad"], res["reconnects"], res["idle_lost"],
                            res["curr_items"], res["sample_bad"],
                            "" if "second_wait_ms" not in res else
                            ", shutdown %.0f ms, second wait %.0f ms, start->reply %.0f ms" % (
                                res["shutdown_ms"], res["second_wait_ms"],
                                res.get("start_to_reply_ms", 0))))
                    if res["curr_items"] != n or res["sample_bad"]:
                        raise RuntimeError("%s lost items on upgrade %d (%s): curr_items %d, %d of %d "
                                           "sampled keys missing/wrong" % (
                                               srv.name, r + 1, mode, res["curr_items"],
                                               res["sample_bad"], args.sample))
                row["upgrade_" + mode + suffix] = runs
        finally:
            if idle:
                idle.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k items, R=3: a fast check")
    ap.add_argument("--kho-cache", default=".build-bench2/release/kho-cache")
    ap.add_argument("--kho", default=".build-bench2/release/kho")
    ap.add_argument("--memcached", default="/usr/bin/memcached")
    ap.add_argument("--datasets", default=None,
                    help="comma list of NxSIZE[@MB], e.g. 1000000x1024,8000000x50; 'none' for only the "
                         "huge-page run")
    ap.add_argument("--repeats", type=int, default=None, help="kho-cache upgrades per mode")
    ap.add_argument("--mc-repeats", type=int, default=None, help="memcached restarts")
    ap.add_argument("--huge", default=None,
                    help="extra kho-cache --huge-pages run: NxSIZE@MB (default 160000x32768@8192,"
                         " 'none' to skip)")
    ap.add_argument("--huge-compare-small", action="store_true",
                    help="also run the huge dataset with 4 KiB pages")
    ap.add_argument("--mc-huge", action="store_true",
                    help="also run memcached on the huge dataset")
    ap.add_argument("--clients", type=int, default=4, help="load generator processes")
    ap.add_argument("--depth", type=int, default=32, help="pipelined requests per write")
    ap.add_argument("--seconds", type=float, default=None, help="per throughput phase")
    ap.add_argument("--threads", type=int, default=4, help="-t of both servers")
    ap.add_argument("--sample", type=int, default=10000)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--port", type=int, default=22122)
    ap.add_argument("--json", default=None)
    ap.add_argument("--idle-connections", type=int, default=10000,
                    help="idle connections held open in a second round of upgrades (0: none)")
    args = ap.parse_args()
    if args.idle_connections:
        limit = raise_open_file_limit()
        if limit < args.idle_connections + 1000:
            sys.exit("RLIMIT_NOFILE %d is too low for %d idle connections" % (
                limit, args.idle_connections))

    def parse_ds(text, default_mb):
        spec, _, mb = text.partition("@")
        n, size = spec.lower().split("x")
        n, size = int(n), int(size)
        label = "%s × %s" % (("%gM" % (n / 1e6)) if n >= 1e6 else ("%gk" % (n / 1e3)),
                             ("%d KB" % (size // 1024)) if size >= 1024 and size % 1024 == 0
                             else "%d B" % size)
        if not mb:
            # memcached-style slab chunks are at most 1.25x (item + ~60 B header), plus slack.
            need = n * (size + 80) * 1.3 / 2**20
            mb = max(default_mb, int(need * 1.15) + 64)
        return dict(n=n, size=size, mb=int(mb), label=label)

    if args.quick:
        dspec = args.datasets or "100000x1024,400000x50"
        repeats = args.repeats or 3
        mc_repeats = args.mc_repeats or 3
        huge = args.huge or "20000x32768@1024"
        args.seconds = args.seconds or 2
    else:
        dspec = args.datasets or "1000000x1024,8000000x50"
        repeats = args.repeats or 10
        mc_repeats = args.mc_repeats or 5
        huge = args.huge or "160000x32768@8192"
        args.seconds = args.seconds or 5
    datasets = [] if dspec == "none" else [parse_ds(d, 256) for d in dspec.split(",")]
    huge_ds = None if huge == "none" else parse_ds(huge, 256)
    for b in (args.kho_cache, args.kho, args.memcached):
        if not os.access(b, os.X_OK):
            sys.exit("not executable: %s" % b)

    workdir = tempfile.mkdtemp(prefix="bench-upgrade-")
    results = []
    servers = []
    saved = {}
    t_begin = time.monotonic()

    def restore_sysfs():
        for path, value in saved.items():
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as e:
                log("cannot restore %s: %s" % (path, e))
        saved.clear()

    def run(srv, ds, modes, repeats):
        servers.append(srv)
        try:
            bench_server(srv, ds, args, modes, repeats, results)
        finally:
            srv.stop()
            servers.remove(srv)

    def on_signal(sig, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    failure = None
    try:
        port = args.port
        for ds in datasets:
            log("== dataset %s (-m %d)" % (ds["label"], ds["mb"]))
            run(KhoCache(args.kho_cache, args.kho, port, ds["mb"], False, workdir, args.threads),
                ds, ["in-place", "overlapped"], repeats)
            port += 1
            run(Memcached(args.memcached, port, ds["mb"], workdir, args.threads),
                ds, ["restart"], mc_repeats)
            port += 1
        if huge_ds:
            log("== huge pages: %s (-m %d)" % (huge_ds["label"], huge_ds["mb"]))
            thp = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
            nr = "/proc/sys/vm/nr_hugepages"
            try:
                with open(thp) as f:
                    cur = f.read()
                saved[thp] = cur[cur.index("[") + 1:cur.index("]")]
                with open(nr) as f:
                    saved[nr] = f.read().strip()
                with open(thp, "w") as f:
                    f.write("advise")
                pages = (huge_ds["mb"] + 64 + 16) // 2 + 16
                with open(nr, "w") as f:
                    f.write(str(pages))
                with open(nr) as f:
                    got = int(f.read())
                log("  hugetlb pages reserved: %d of %d wanted" % (got, pages))
            except OSError as e:
                log("  cannot set huge pages up (%s): kho-cache falls back as it can" % e)
            hd = dict(huge_ds, label=huge_ds["label"] + " (huge pages)")
            run(KhoCache(args.kho_cache, args.kho, port, hd["mb"], True, workdir, args.threads),
                hd, ["in-place", "overlapped"], repeats)
            port += 1
            restore_sysfs()
            if args.huge_compare_small:
                sd = dict(huge_ds, label=huge_ds["label"] + " (4 KiB pages)")
                run(KhoCache(args.kho_cache, args.kho, port, sd["mb"], False, workdir,
                             args.threads), sd, ["in-place"], repeats)
                port += 1
            if args.mc_huge:
                run(Memcached(args.memcached, port, huge_ds["mb"], workdir, args.threads),
                    huge_ds, ["restart"], mc_repeats)
                port += 1
    except BaseException as e:  # report what was measured, then fail
        failure = e
        log("FAILED: %r" % e)
    finally:
        for srv in list(servers):
            srv.stop()
        restore_sysfs()
        logs = {f: open(os.path.join(workdir, f), errors="replace").read()[-4000:]
                for f in os.listdir(workdir) if f.endswith(".log")}
        shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - t_begin
    report(results, args, elapsed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, argv=sys.argv, elapsed_s=elapsed), f, indent=1)
    if failure:
        for name, text in logs.items():
            print("---- %s (tail)\n%s" % (name, text), file=sys.stderr)
        sys.exit(1)


def report(results, args, elapsed):
    p = print
    p()
    p("## Upgrade pause (ms, client-observed: last reply of the old image → first reply of the "
      "new)")
    p()
    p("| server | dataset | mode | R | min | median | p90 | p99 | max | failed requests | "
      "reconnects | refused conns | lost keys |")
    p("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        for k, v in row.items():
            if not k.startswith("upgrade_"):
                continue
            d = dist([r["pause_ms"] for r in v])
            lost = sum(row["n"] - r["curr_items"] for r in v) + sum(r["sample_bad"] for r in v)
            failed = sum(r["errors"] + r["hung"] + r["bad"] for r in v)
            reconnects = sum(r.get("reconnects", 0) + r.get("idle_lost", 0) for r in v)
            p("| %s | %s | %s | %d | %s | %s | %s | %s | %s | %d | %d | %d | %d |" % (
                row["server"], row["dataset"], k[8:], d["n"], fmt_ms(d["min"]),
                fmt_ms(d["median"]), fmt_ms(d["p90"]), fmt_ms(d.get("p99", d["max"])),
                fmt_ms(d["max"]), failed, reconnects, sum(r["refused"] for r in v), lost))
    mc = [(row, row["upgrade_restart"]) for row in results if "upgrade_restart" in row]
    if mc:
        p()
        p("memcached restart, broken down (median ms): SIGUSR1 → exit; exit → next wall-clock "
          "second (memcached's own constraint); start → first reply; pause without the "
          "second wait")
        p()
        p("| dataset | SIGUSR1→exit | second wait | start→first reply | pause − second wait |")
        p("|---|---:|---:|---:|---:|")
        for row, v in mc:
            med = lambda key: statistics.median([r[key] for r in v if key in r])
            p("| %s | %s | %s | %s | %s |" % (
                row["dataset"], fmt_ms(med("shutdown_ms")), fmt_ms(med("second_wait_ms")),
                fmt_ms(med("start_to_reply_ms")),
                fmt_ms(statistics.median([r["pause_ms"] - r["second_wait_ms"] for r in v]))))
    kc = [(row, row[k]) for row in results for k in row if k.startswith("upgrade_")
          and row["server"] == "kho-cache"]
    if kc:
        p()
        p("kho-cache: `kho exec` command duration (median ms) vs pause")
        p()
        p("| dataset | mode | kho exec | pause median |")
        p("|---|---|---:|---:|")
        for row in results:
            for k in [k for k in row if k.startswith("upgrade_") and row["server"] == "kho-cache"]:
                if k in row:
                    v = row[k]
                    p("| %s | %s | %s | %s |" % (
                        row["dataset"], k[8:],
                        fmt_ms(statistics.median([r["exec_ms"] for r in v])),
                        fmt_ms(statistics.median([r["pause_ms"] for r in v]))))
    if any("get_ops" in r for r in results):
        p()
        p("## Steady-state throughput (%d client processes, one connection each, %d pipelined "
          "requests per write, %.0f s per phase, uniform random keys over the dataset)" % (
              args.clients, args.depth, args.seconds))
        p()
        p("| dataset | op | kho-cache ops/s | memcached ops/s | ratio |")
        p("|---|---|---:|---:|---:|")
        by = {(r["server"], r["dataset"]): r for r in results}
        for (srv, dsl), r in by.items():
            if srv != "kho-cache" or ("memcached", dsl) not in by:
                continue
            m = by[("memcached", dsl)]
            for op in ("get", "set"):
                if op + "_ops" in r and op + "_ops" in m:
                    p("| %s | %s | %.0f | %.0f | %.2f× |" % (
                        dsl, op.upper(), r[op + "_ops"], m[op + "_ops"],
                        r[op + "_ops"] / m[op + "_ops"]))
    p()
    p("## Memory per item (after the load)")
    p()
    p("| server | dataset | -m | bulk load (s) | RSS after load (MiB) | RSS Δ / item (B) | "
      "`stats bytes` / item (B) |")
    p("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        if "rss_per_item" in r:
            p("| %s | %s | %d | %.1f | %.0f | %.1f | %.1f |" % (
                r["server"], r["dataset"], r["mb"], r["load_s"], r["rss_loaded"] / 2**20,
                r["rss_per_item"], r["stats_bytes_per_item"]))
    p()
    p("Total run time: %.1f min." % (elapsed / 60))


if __name__ == "__main__":
    main()
