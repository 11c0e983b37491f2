#!/usr/bin/env python3
"""Upgrade tests for kho-cache: nothing lost across `kho exec`, under load.

Starts the server binary given by --server with a FUSE control mount and
upgrades it with the `kho` binary given by --kho, in place and overlapped,
while pymemcache clients write and verify continuously:

  upgrade_under_load          writer/verifier threads (set with flags and
                              exptimes, get, gets/cas, delete) and a thread
                              opening new connections non-stop, across many
                              consecutive upgrades in both modes: zero lost
                              keys, zero refused connections, no timeouts;
                              in-flight requests may only fail with a
                              connection error, retried on a new connection
                              (counted). CAS uniques survive each upgrade;
                              curr_items, generation and pid are checked.
  rollback_*                  a successor that fails (crashes with SIGSEGV,
                              exits 1, /bin/false, a binary that vanished or
                              cannot be executed, is gone after reporting
                              itself prepared): `kho exec` exits 1 saying
                              it rolled back; same generation, every key
                              there, the old image serving (and writable).
  writes_between_dump_and_freeze_survive  with KHO active, writes are taken at
                              once (FREEZE, not DUMP, stops them) and all are
                              in the next image, in place and overlapped.
  deletes_and_flush_survive   delete and flush_all done before an upgrade
                              stay done after it.
  expiry_counts_across_upgrade  a 2 s TTL set before an upgrade is gone 2+ s
                              later, a long TTL is not, and the cache clock
                              keeps pace with real time across upgrades.

Only the expiry test waits on time; everything else synchronises on events.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from harness import Suite, free_port, release_mount
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError, MemcacheUnexpectedCloseError

SERVER = None
KHO = None
SUITE = Suite()
test = SUITE.test
UPGRADE_TIMES = []  # (mode, ms) of every successful `kho exec`




class FlagsSerde:
    """Values as bytes; a get returns (value, flags)."""

    def serialize(self, key, value):
        return value, 0

    def deserialize(self, key, value, flags):
        return value, flags


def pid_alive(pid):
    """True if `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children_of(pid):
    """The pids whose parent is `pid` (zombies included)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def pid_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


class Service:
    """One kho-cache with its control mount, in a private temp dir. Tracks
    the pid of every image (overlapped upgrades change it) so that `stop`
    ends whichever serves, then unmounts."""

    def __init__(self, name, memory_mb=64, extra=(), env=None):
        self.dir = tempfile.mkdtemp(prefix=f"kho-upg-{name}-")
        self.mount = os.path.join(self.dir, "mount")
        os.mkdir(self.mount)
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "server.log")
        self.log = open(self.log_path, "ab")
        self.argv = [os.path.abspath(SERVER), "-p", str(self.port), "-m", str(memory_mb),
                     "--control-mount", self.mount, *extra]
        self.proc = None
        self.pids = set()
        self.env = env

    def start(self, timeout=30):
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env=env)
        self.pids.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while subprocess.run(["mountpoint", "-q", self.mount]).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start (exit {self.proc.poll()}):\n{self.log_tail()}")
            time.sleep(0.02)
        self.pids.add(self.pid())
        return self

    def client(self, timeout=10):
        return Client(("127.0.0.1", self.port), default_noreply=False, connect_timeout=timeout,
                      timeout=timeout, serde=FlagsSerde())

    def stats(self):
        c = self.client()
        try:
            # kho-cache's own figures (cache_clock, damaged...) are in
            # `stats kho`, so that `stats` keeps exactly memcached's keys.
            merged = {**c.stats(), **c.stats("kho")}
            return {k.decode(): v for k, v in merged.items()}
        finally:
            c.close()

    def pid(self):
        pid = int(self.stats()["pid"])
        self.pids.add(pid)
        return pid

    def status(self):
        out = subprocess.run([KHO, "status", self.mount, "--format", "json"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, f"kho status failed: {out.stderr}"
        return json.loads(out.stdout)

    def generation(self):
        return self.status()["generation"]

    def kho_exec(self, argv=None, overlapped=False, timeout=60):
        """Runs `kho exec`; returns (exit status, stdout, stderr)."""
        cmd = [KHO, "exec", self.mount] + (["--overlapped"] if overlapped else [])
        if argv is not None:
            cmd += ["--"] + list(argv)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        self.reap()
        return out.returncode, out.stdout, out.stderr

    def upgrade(self, overlapped):
        """One successful upgrade to the same binary; returns its time in ms."""
        before_pid = self.pid()
        before_gen = self.generation()
        rc, out, err = self.kho_exec(self.argv, overlapped=overlapped)
        assert rc == 0, f"kho exec failed ({rc}):\n{out}{err}\n{self.log_tail()}"
        m = re.search(r"handed over to generation (\d+) in ([0-9.]+) ms", out)
        assert m, f"unexpected kho exec output: {out!r}"
        assert int(m.group(1)) == before_gen + 1, (before_gen, out)
        ms = float(m.group(2))
        UPGRADE_TIMES.append(("overlapped" if overlapped else "in-place", ms))
        pid = self.pid()
        if overlapped:
            assert pid != before_pid, "overlapped upgrade kept the pid"
            deadline = time.monotonic() + 10
            while pid_alive(before_pid):
                self.reap()
                assert time.monotonic() < deadline, f"old image {before_pid} did not exit"
                time.sleep(0.005)
        else:
            assert pid == before_pid, f"in-place upgrade changed the pid {before_pid} -> {pid}"
            # The helper that held the old address space exits and is reaped.
            deadline = time.monotonic() + 30
            while children_of(pid):
                assert time.monotonic() < deadline, f"children left after the upgrade: {children_of(pid)}"
                time.sleep(0.005)
        return ms

    def reap(self):
        if self.proc is not None:
            self.proc.poll()

    def log_tail(self, n=30):
        self.log.flush()
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM to every image still running (only processes this
        service started: their command line names our private mount), then
        unmount unconditionally and remove the temp dir."""
        try:
            for pid in list(self.pids):
                if pid_alive(pid) and self.mount.encode() in pid_cmdline(pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
            deadline = time.monotonic() + 10
            for pid in list(self.pids):
                while pid_alive(pid) and self.mount.encode() in pid_cmdline(pid):
                    self.reap()
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        break
                    time.sleep(0.01)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            release_mount(self.mount)
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def write_script(directory, name, body):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o755)
    return path


# --- upgrade under load --------------------------------------------------------

CONNECTION_ERRORS = (ConnectionError, MemcacheUnexpectedCloseError, BrokenPipeError)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def get(self, name):
        with self.lock:
            return self.values.get(name, 0)


class Failures:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, text):
        with self.lock:
            if len(self.items) < 50:
                self.items.append(text)


SHORT_TTL = 4  # seconds: the keys whose expiry is checked against real time
LONG_TTL = 86400


class Worker(threading.Thread):
    """Writes keys of its own (each key written once), reads each back,
    re-reads random older ones, deletes some, and runs gets/cas on a few
    keys of its own. Every request is retried on a new connection after a
    connection error; anything else unexpected is a failure."""

    def __init__(self, index, service, stop, counters, failures):
        super().__init__(daemon=True, name=f"worker{index}")
        self.index = index
        self.service = service
        self.stop_event = stop
        self.counters = counters
        self.failures = failures
        self.rng = random.Random(1000 + index)
        self.client = service.client()
        # key -> (value, flags, ttl, sent, acked) or None once deleted
        self.expected = {}
        self.order = []
        self.cas_keys = [f"c{index}-{j}" for j in range(8)]
        self.cas_values = {}
        self.ops = 0
        self.ops_lock = threading.Lock()

    def progress(self):
        with self.ops_lock:
            return self.ops

    def call(self, what, fn, ambiguous_ok=False):
        """fn(client) with retries on new connections. Returns (result,
        retried)."""
        retried = False
        for _ in range(100):
            try:
                return fn(self.client), retried
            except ConnectionRefusedError as e:
                self.counters.add("refused")
                self.failures.add(f"{self.name}: {what}: connection refused: {e}")
            except (socket.timeout, TimeoutError) as e:
                self.counters.add("timeouts")
                self.failures.add(f"{self.name}: {what}: timed out: {e!r}")
            except CONNECTION_ERRORS as e:
                self.counters.add("connection_errors")
                self.counters.add("connection_errors:" + type(e).__name__)
            except MemcacheServerError as e:
                self.counters.add("server_errors")
                self.failures.add(f"{self.name}: {what}: server error {e}")
            except OSError as e:
                self.counters.add("os_errors")
                self.failures.add(f"{self.name}: {what}: {e!r}")
            self.client.close()
            retried = True
        raise AssertionError(f"{self.name}: {what}: giving up after 100 attempts")

    def run(self):
        try:
            self.loop()
        except Exception:
            self.failures.add(f"{self.name} crashed:\n{traceback.format_exc()}")
        finally:
            self.client.close()

    def loop(self):
        for key in self.cas_keys:
            value = f"{key}:0".encode()
            stored, _ = self.call("set cas key", lambda c: c.set(key, value, flags=7))
            assert stored is True
            self.cas_values[key] = value
        n = 0
        while not self.stop_event.is_set():
            n += 1
            self.one_set(n)
            if n % 3 == 0:
                self.reread()
            if n % 5 == 0:
                self.one_cas()
            if n % 17 == 0:
                self.one_delete()
            with self.ops_lock:
                self.ops += 1

    def one_set(self, n):
        rng = self.rng
        key = f"w{self.index}-{n}"
        size = rng.choice([1, 10, 100, 500, 3000])
        value = (key + ":" + "%08x" % rng.getrandbits(32)).encode()
        value = (value * (size // len(value) + 1))[:max(size, len(value))]
        flags = rng.choice([0, 1, 0xFFFFFFFF, rng.getrandbits(32)])
        r = rng.random()
        if r < 0.5:
            ttl, expire = 0, 0
        elif r < 0.8:
            ttl, expire = LONG_TTL, LONG_TTL
        elif r < 0.9:
            ttl, expire = LONG_TTL, int(time.time()) + LONG_TTL  # absolute unix time
        else:
            ttl, expire = SHORT_TTL, SHORT_TTL
        sent = time.monotonic()
        stored, _ = self.call("set", lambda c: c.set(key, value, expire=expire, flags=flags))
        acked = time.monotonic()
        if stored is not True:
            self.failures.add(f"{self.name}: set {key} answered {stored!r}")
            return
        self.counters.add("sets")
        self.expected[key] = (value, flags, ttl, sent, acked)
        self.order.append(key)
        got, _ = self.call("get", lambda c: c.get(key))
        self.check(key, got, time.monotonic(), "read back")

    def check(self, key, got, now, what):
        exp = self.expected[key]
        if exp is None:
            if got is not None:
                self.failures.add(f"{self.name}: {what}: deleted key {key} is back: {got!r:.80}")
            return
        value, flags, ttl, sent, acked = exp
        if ttl == SHORT_TTL and now > sent + ttl - 1.2:
            # Past its earliest possible expiry: may be gone. (Whether it
            # goes on time is checked at the end, against the cache clock.)
            if got is not None and got != (value, flags):
                self.failures.add(f"{self.name}: {what}: {key} wrong: {got!r:.80}")
            return
        if got is None:
            self.failures.add(f"{self.name}: {what}: LOST {key} (ttl {ttl}, acked {now - acked:.2f} s ago)")
            self.counters.add("lost")
        elif got != (value, flags):
            self.failures.add(f"{self.name}: {what}: {key} expected {(value[:40], flags)!r}, got {got!r:.120}")
            self.counters.add("wrong")
        else:
            self.counters.add("verified")

    def reread(self):
        keys = [self.rng.choice(self.order) for _ in range(min(10, len(self.order)))]
        got, _ = self.call("get_many", lambda c: c.get_many(keys))
        now = time.monotonic()
        for key in keys:
            self.check(key, got.get(key), now, "re-read")

    def one_cas(self):
        key = self.rng.choice(self.cas_keys)
        (value, unique), _ = self.call("gets", lambda c: c.gets(key))
        if value != (self.cas_values[key], 7):
            self.failures.add(f"{self.name}: gets {key}: expected {self.cas_values[key]!r}, got {value!r}")
            return
        new = f"{key}:{self.rng.getrandbits(40)}".encode()
        result, retried = self.call("cas", lambda c: c.cas(key, new, unique, flags=7))
        if result is True:
            self.counters.add("cas_stored")
        elif result is False and retried:
            # The first attempt may have been applied before its connection
            # broke: then the value is ours.
            got, _ = self.call("get", lambda c: c.get(key))
            if got != (new, 7):
                self.failures.add(f"{self.name}: cas {key} EXISTS after retry and value is {got!r}")
                return
            self.counters.add("cas_ambiguous_ok")
        else:
            self.failures.add(f"{self.name}: cas {key} with unique {unique} answered {result!r} (retried {retried})")
            return
        self.cas_values[key] = new

    def one_delete(self):
        candidates = [k for k in self.order[-200:] if self.expected[k] is not None
                      and self.expected[k][2] != SHORT_TTL]
        if not candidates:
            return
        key = self.rng.choice(candidates)
        result, retried = self.call("delete", lambda c: c.delete(key))
        if result is not True and not retried:
            self.failures.add(f"{self.name}: delete {key} answered {result!r}")
            return
        self.expected[key] = None
        self.counters.add("deletes")
        got, _ = self.call("get", lambda c: c.get(key))
        self.check(key, got, time.monotonic(), "after delete")


class Connector(threading.Thread):
    """Opens a new connection for every request, non-stop: any refusal
    while the server hands over shows up here."""

    def __init__(self, port, stop, counters, failures):
        super().__init__(daemon=True, name="connector")
        self.port = port
        self.stop_event = stop
        self.counters = counters
        self.failures = failures

    def run(self):
        while not self.stop_event.is_set():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"version\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = s.recv(100)
                    if not chunk:
                        raise MemcacheUnexpectedCloseError()
                    reply += chunk
                if not reply.startswith(b"VERSION "):
                    self.failures.add(f"connector: unexpected reply {reply!r}")
                self.counters.add("connects")
            except ConnectionRefusedError as e:
                self.counters.add("refused")
                self.failures.add(f"connector: connection refused: {e}")
            except (socket.timeout, TimeoutError):
                self.counters.add("timeouts")
                self.failures.add("connector: timed out")
            except CONNECTION_ERRORS as e:
                self.counters.add("connection_errors")
                self.counters.add("connection_errors:" + type(e).__name__)
            except OSError as e:
                self.counters.add("os_errors")
                self.failures.add(f"connector: {e!r}")
            finally:
                s.close()


@test
def upgrade_under_load():
    svc = Service("load", memory_mb=256).start()
    stop = threading.Event()
    counters, failures = Counters(), Failures()
    threads = []
    try:
        gen0 = svc.generation()
        clock0, t0 = int(svc.stats()["cache_clock"]), time.monotonic()
        main = svc.client()
        workers = [Worker(i, svc, stop, counters, failures) for i in range(ARGS.workers)]
        threads = workers + [Connector(svc.port, stop, counters, failures)]
        for t in threads:
            t.start()
        probes = {}  # key -> value, the main thread's CAS probes
        modes = [False] * (ARGS.upgrades // 2) + [True] * (ARGS.upgrades - ARGS.upgrades // 2)
        for i, overlapped in enumerate(modes):
            # Let every worker get some requests done on this image first.
            marks = [w.progress() for w in workers]
            deadline = time.monotonic() + 20
            while any(w.progress() < m + ARGS.ops_between for w, m in zip(workers, marks)):
                assert time.monotonic() < deadline, f"workers stalled before upgrade {i}: {failures.items[:5]}"
                assert all(w.is_alive() for w in workers), f"a worker died: {failures.items[:5]}"
                time.sleep(0.01)
            # A CAS unique taken before the upgrade must still work after it.
            key = f"probe-{i}"
            assert main.set(key, b"before", flags=3, expire=LONG_TTL) is True
            value, unique = main.gets(key)
            assert value == (b"before", 3), value
            svc.upgrade(overlapped)
            main.close()  # its connection died with the old image (or was closed at exec)
            assert main.cas(key, b"after", unique, flags=3, expire=LONG_TTL) is True, \
                f"cas with the unique from before upgrade {i} failed"
            probes[key] = b"after"
            assert not failures.items, f"after upgrade {i}: " + "\n  ".join(failures.items[:10])
        stop.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), f"{t.name} hangs"
        assert not failures.items, "\n  ".join(failures.items[:20])

        # Every key, verified once more on the final image. The time is
        # taken after each reply: the server judged expiry no later than
        # that, and thousands of keys take a while to read under load.
        present = ambiguous = 0
        for w in workers:
            keys = list(w.expected)
            for j in range(0, len(keys), 100):
                chunk = keys[j:j + 100]
                got = main.get_many(chunk)
                now = time.monotonic()
                for key in chunk:
                    w.check(key, got.get(key), now, "final")
                    exp = w.expected[key]
                    if exp is None:
                        continue
                    if exp[2] == SHORT_TTL and now > exp[3] + SHORT_TTL - 1.2:
                        ambiguous += 1
                    else:
                        present += 1
            got = main.get_many(w.cas_keys)
            for key in w.cas_keys:
                if got.get(key) != (w.cas_values[key], 7):
                    failures.add(f"final: {key} expected {w.cas_values[key]!r}, got {got.get(key)!r}")
            present += len(w.cas_keys)
        got = main.get_many(list(probes))
        for key, value in probes.items():
            if got.get(key) != (value, 3):
                failures.add(f"final: probe {key} is {got.get(key)!r}")
        present += len(probes)
        assert not failures.items, "\n  ".join(failures.items[:20])

        stats = svc.stats()
        items = int(stats["curr_items"])
        assert present <= items <= present + ambiguous, \
            f"curr_items {items}, expected {present} (+ up to {ambiguous} expiring)"
        assert int(stats["evictions"]) == 0, stats["evictions"]
        generation = svc.generation()
        assert generation == gen0 + len(modes), f"generation {generation}, expected {gen0 + len(modes)}"

        # Short-TTL keys: none may outlive its TTL by more than the clock's
        # 1 s granularity, after all these upgrades.
        clock1, t1 = int(stats["cache_clock"]), time.monotonic()
        lag = (t1 - t0) - (clock1 - clock0)
        c = counters.values
        kinds = ", ".join(f"{k.split(':')[1]} {v}" for k, v in sorted(c.items())
                          if k.startswith("connection_errors:"))
        print(f"     {len(modes)} upgrades ({modes.count(False)} in place, {modes.count(True)} overlapped), "
              f"{ARGS.workers} workers: {c.get('sets', 0)} sets, {c.get('verified', 0)} verified reads, "
              f"{c.get('cas_stored', 0)} cas (+{c.get('cas_ambiguous_ok', 0)} retried), "
              f"{c.get('deletes', 0)} deletes, {c.get('connects', 0)} new connections; "
              f"{c.get('connection_errors', 0)} connection errors retried "
              f"({kinds}); "
              f"refused {c.get('refused', 0)}, timeouts {c.get('timeouts', 0)}, lost {c.get('lost', 0)}; "
              f"curr_items {items} (expected {present}, {ambiguous} expiring); generation {gen0} -> {generation}; "
              f"cache clock lag {lag:.1f} s over {t1 - t0:.1f} s")
        main.close()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        svc.stop()


@test
def cache_clock_keeps_pace_across_upgrades():
    """Expiry counts in cache-clock seconds: after several quick upgrades
    the clock must not lag real time by more than its 1 s granularity, or
    every TTL is stretched by what the upgrades cost it."""
    svc = Service("clock").start()
    try:
        c = svc.client()
        start = time.monotonic()
        clock0 = int(svc.stats()["cache_clock"])
        assert c.set("ttl3", b"x", expire=3) is True
        set_done = time.monotonic()
        # Time-based (this test is about time): 8 upgrades 0.6 s apart.
        n = 0
        while n < 8:
            time.sleep(max(0.0, start + 0.6 * (n + 1) - time.monotonic()))
            svc.upgrade(overlapped=n % 2 == 1)
            n += 1
        elapsed = time.monotonic() - start
        lag = elapsed - (int(svc.stats()["cache_clock"]) - clock0)
        c.close()
        still = c.get("ttl3")
        c.close()
        assert lag < 2.0 and still is None, (
            f"after {n} upgrades in {elapsed:.1f} s the cache clock lags real time by {lag:.1f} s; "
            f"a key with a 3 s TTL is {'still there' if still else 'gone'} "
            f"{time.monotonic() - set_done:.1f} s after it was stored")
    finally:
        svc.stop()


# --- rollback -----------------------------------------------------------------


def load_keys(svc, n=500):
    c = svc.client()
    keys = {f"rb-{i}": (os.urandom(i % 300 + 1), i) for i in range(n)}
    for key, (value, flags) in keys.items():
        assert c.set(key, value, flags=flags) is True
    c.close()
    return keys


def assert_all_there(svc, keys):
    c = svc.client()
    try:
        got = {}
        names = list(keys)
        for j in range(0, len(names), 100):
            got.update(c.get_many(names[j:j + 100]))
        missing = [k for k in keys if got.get(k) != keys[k]]
        assert not missing, f"{len(missing)} keys lost or wrong, e.g. {missing[:5]}"
        # Writable again: the freeze was lifted.
        assert c.set("rb-after", b"x") is True
        assert c.get("rb-after") == (b"x", 0)
    finally:
        c.close()


def assert_rolled_back(svc, keys, gen, pid, rc, out, err, what):
    text = out + err
    assert rc == 1, f"{what}: kho exec exit status {rc}, expected 1:\n{text}"
    assert "rolled back" in text, f"{what}: kho exec does not say it rolled back:\n{text}"
    assert svc.generation() == gen, f"{what}: generation changed"
    assert svc.status()["active"] is False, f"{what}: KHO still active"
    assert svc.pid() == pid, f"{what}: pid changed"
    assert_all_there(svc, keys)


@test
def rollback_overlapped_successor_crashes():
    svc = Service("rb-ovl").start()
    try:
        keys = load_keys(svc)
        gen, pid = svc.generation(), svc.pid()
        segv = write_script(svc.dir, "segv.sh", "#!/bin/sh\necho starting >&2\nkill -SEGV $$\n")
        fail = write_script(svc.dir, "fail.sh", "#!/bin/sh\necho starting >&2\nexit 1\n")
        # The real server, failing after it started: an option it rejects.
        bad = write_script(svc.dir, "bad.sh", f"#!/bin/sh\nexec {SERVER} --threads 0\n")
        # Prepared, then gone before the commit: it reports ready with its
        # end of the commit channel already closed, and dies.
        gone = write_script(svc.dir, "prepared-then-gone.py", (
            "#!/usr/bin/env python3\nimport os, signal\n"
            "os.close(int(os.environ['KHO_COMMIT_FD']))\n"
            "os.write(int(os.environ['KHO_READY_FD']), b'READY\\n')\n"
            "os.kill(os.getpid(), signal.SIGSEGV)\n"))
        for argv in ([segv], [fail], ["/bin/false"], [bad], [gone]):
            rc, out, err = svc.kho_exec(argv, overlapped=True)
            assert_rolled_back(svc, keys, gen, pid, rc, out, err, os.path.basename(argv[0]))
        # And it can still be upgraded afterwards.
        svc.upgrade(overlapped=True)
        assert svc.generation() == gen + 1
        assert_all_there(svc, keys)
    finally:
        svc.stop()


@test
def rollback_in_place_exec_fails():
    svc = Service("rb-inplace").start()
    try:
        keys = load_keys(svc)
        gen, pid = svc.generation(), svc.pid()
        # A binary staged, then gone before the execute: execve fails ENOENT.
        gone = write_script(svc.dir, "gone", "#!/bin/sh\nexit 0\n")
        out = subprocess.run([KHO, "load", svc.mount, "--", gone], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        os.unlink(gone)
        rc, out, err = svc.kho_exec(None)
        assert_rolled_back(svc, keys, gen, pid, rc, out, err, "missing binary")
        # An executable file that is no executable format: execve fails ENOEXEC.
        junk = os.path.join(svc.dir, "junk")
        with open(junk, "wb") as f:
            f.write(b"\x7fELF" + b"\x00" * 60)
        os.chmod(junk, 0o755)
        rc, out, err = svc.kho_exec([junk])
        assert_rolled_back(svc, keys, gen, pid, rc, out, err, "ENOEXEC binary")
        # The helpers that held the address space for the failed execs are
        # reaped at once, before the old image serves again.
        assert not children_of(pid), f"children left by failed execs: {children_of(pid)}"
        svc.upgrade(overlapped=False)
        assert_all_there(svc, keys)
    finally:
        svc.stop()


# --- two phases: DUMP describes, FREEZE stops ---------------------------------


@test
def writes_between_dump_and_freeze_survive():
    """While KHO is active (DUMP ran) the store still takes writes at once;
    they stop only at FREEZE, right before the exec or the commit, so every
    write acknowledged before the upgrade is in the next image."""
    svc = Service("phases").start()
    try:
        for overlapped in (False, True):
            keys = load_keys(svc, n=100)
            with open(os.path.join(svc.mount, "kernel/kho/active"), "w") as f:
                f.write("1\n")
            assert svc.status()["active"] is True
            c = svc.client(timeout=2)
            # Previously each of these waited the 5 s freeze limit and failed.
            for i in range(200):
                key = f"while-active-{overlapped}-{i}"
                assert c.set(key, b"w%d" % i, flags=i) is True, key
                keys[key] = (b"w%d" % i, i)
            assert c.delete("rb-0") is True
            del keys["rb-0"]
            c.close()
            svc.upgrade(overlapped=overlapped)
            assert_all_there(svc, keys)
            assert svc.client().get("rb-0") is None
    finally:
        svc.stop()


# --- delete/flush and expiry across an upgrade ------------------------------------


@test
def deletes_and_flush_survive():
    svc = Service("del").start()
    try:
        c = svc.client()
        for i in range(200):
            assert c.set(f"d-{i}", b"v%d" % i, flags=i) is True
        for i in range(0, 200, 2):
            assert c.delete(f"d-{i}") is True
        svc.upgrade(overlapped=False)
        c.close()
        got = c.get_many([f"d-{i}" for i in range(200)])
        assert sorted(got) == sorted(f"d-{i}" for i in range(1, 200, 2)), f"{len(got)} keys after upgrade"
        assert all(got[f"d-{i}"] == (b"v%d" % i, i) for i in range(1, 200, 2))
        assert int(svc.stats()["curr_items"]) == 100
        assert c.flush_all() is True
        assert c.set("after-flush", b"new") is True
        svc.upgrade(overlapped=True)
        c.close()
        got = c.get_many([f"d-{i}" for i in range(200)] + ["after-flush"])
        assert got == {"after-flush": (b"new", 0)}, f"after flush_all and upgrade: {sorted(got)[:5]}"
        assert c.delete("after-flush") is True
        svc.upgrade(overlapped=False)
        c.close()
        assert c.get("after-flush") is None
        assert int(svc.stats()["curr_items"]) == 0
        c.close()
    finally:
        svc.stop()


@test
def expiry_counts_across_upgrade():
    svc = Service("ttl").start()
    try:
        c = svc.client()
        start = time.monotonic()
        clock0 = int(svc.stats()["cache_clock"])
        assert c.set("short", b"s", expire=2) is True
        assert c.set("short-abs", b"a", expire=int(time.time()) + 2) is True
        assert c.set("long", b"l", expire=120) is True
        assert c.set("long-abs", b"la", expire=int(time.time()) + 120) is True
        assert c.set("never", b"n") is True
        set_done = time.monotonic()
        svc.upgrade(overlapped=False)
        c.close()
        # Right after the upgrade (well within the 2 s): still there.
        if time.monotonic() - set_done < 0.9:
            assert c.get("short") == (b"s", 0), "a 2 s TTL key vanished right after the upgrade"
        # Time-based waiting (only here): 2 s TTL, + 1 s of clock
        # granularity, + at most 1 s the upgrade may cost the cache clock.
        time.sleep(max(0.0, set_done + 4.0 - time.monotonic()))
        assert c.get("short") is None, "2 s TTL key still there 4 s later, across an upgrade"
        assert c.get("short-abs") is None, "absolute exptime (now+2) key still there 4 s later"
        svc.upgrade(overlapped=True)
        c.close()
        assert c.get("long") == (b"l", 0)
        assert c.get("long-abs") == (b"la", 0)
        assert c.get("never") == (b"n", 0)
        # The cache clock kept pace with real time (1 s granularity, and
        # each upgrade may cost at most 1 s).
        lag = (time.monotonic() - start) - (int(svc.stats()["cache_clock"]) - clock0)
        assert -1.0 < lag < 3.0, f"cache clock lags real time by {lag:.1f} s after 2 upgrades"
        c.close()
    finally:
        svc.stop()


def settings(svc):
    c = svc.client()
    try:
        return {k.decode(): v.decode() if isinstance(v, bytes) else str(v)
                for k, v in c.stats("settings").items()}
    finally:
        c.close()


def slab_chunk_sizes(svc):
    c = svc.client()
    try:
        return {int(k.decode().split(":")[0]): int(v) for k, v in c.stats("slabs").items()
                if k.decode().endswith(":chunk_size")}
    finally:
        c.close()


@test
def attached_store_keeps_its_size_classes():
    """The store's size classes (-n, -f) and -I are fixed when it is
    formatted: an upgrade to an image started with others keeps every item
    where it is and the store's own geometry (said in the log and in
    `stats settings`); the new options apply at the next cold start."""
    svc = Service("geometry").start()
    sizes = [1, 60, 200, 1000, 5000, 66560, 200000]
    try:
        c = svc.client()
        for size in sizes:
            assert c.set(f"g-{size}", b"%d" % size + b"x" * size, flags=size) is True
        before = slab_chunk_sizes(svc)
        svc.argv = svc.argv + ["-f", "1.5", "-n", "100"]
        for overlapped in (False, True):
            svc.upgrade(overlapped=overlapped)
            c.close()
            for size in sizes:
                assert c.get(f"g-{size}") == (b"%d" % size + b"x" * size, size), size
            s = settings(svc)
            # (pymemcache turns the values into numbers)
            assert (float(s["growth_factor"]), int(s["chunk_size"])) == (1.25, 48), s
            assert slab_chunk_sizes(svc) == before
            assert "keeps its geometry (-n 48 -f 1.25" in svc.log_tail(200), svc.log_tail()
        # New items land in the kept classes, and evictions work in them.
        for i in range(400):
            assert c.set(f"fill-{i}", b"y" * 300000) is True, i
        assert c.get("fill-399") == (b"y" * 300000, 0)
        c.close()
    finally:
        svc.stop()
    cold = Service("geometry-cold", extra=["-f", "1.5", "-n", "100"]).start()
    try:
        s = settings(cold)
        assert (float(s["growth_factor"]), int(s["chunk_size"])) == (1.5, 100), s
        c = cold.client()
        assert c.set("k", b"v") is True
        assert slab_chunk_sizes(cold) == {1: 152}, slab_chunk_sizes(cold)
        c.close()
    finally:
        cold.stop()


def run_suite(suite, doc):
    """The command line of a suite built on `Service`: --server and --kho
    (made absolute for Service), and -k to run only tests whose name
    contains a word. Returns the suite's exit status."""
    global SERVER, KHO
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--kho", required=True, help="path to the kho binary")
    parser.add_argument("-k", dest="only", help="run only tests whose name contains this")
    args = parser.parse_args()
    SERVER, KHO = os.path.abspath(args.server), os.path.abspath(args.kho)
    return suite.run(args.only)


def main():
    global SERVER, KHO, ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--kho", required=True, help="path to the kho binary")
    parser.add_argument("--upgrades", type=int, default=20, help="upgrades under load (half in place)")
    parser.add_argument("--workers", type=int, default=4, help="writer/verifier threads")
    parser.add_argument("--ops-between", type=int, default=150,
                        help="requests each worker completes on an image before the next upgrade")
    parser.add_argument("-k", dest="only", help="run only tests whose name contains this")
    ARGS = parser.parse_args()
    SERVER, KHO = os.path.abspath(ARGS.server), os.path.abspath(ARGS.kho)
    for path in (SERVER, KHO):
        if not os.access(path, os.X_OK):
            print(f"not executable: {path}")
            return 2
    def upgrade_times():
        for mode in ("in-place", "overlapped"):
            ms = sorted(m for md, m in UPGRADE_TIMES if md == mode)
            if ms:
                print(f"     {mode} upgrades: {len(ms)}, kho exec time min {ms[0]:.1f} ms, "
                      f"median {ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms")

    return SUITE.run(ARGS.only, after=upgrade_times)

if __name__ == "__main__":
    sys.exit(main())
