#!/usr/bin/env python3
"""Crash tests for kho-cache under `kho run`: kill -9, and the state is still there.

`kho run --restart on-failure -- kho-cache ...` keeps the arena and the
listener that kho-cache stores with FDSTORE=1; when the cache dies, the
keeper starts it again with them (LISTEN_FDS), and the new image adopts the
store from the arena's stateless description, rebuilt after the crash.

  kill_nine_under_load   a writer sets values that carry their own checksum
                         (key, version, CRC-32 of the rest) as fast as it
                         can; the cache is killed with SIGKILL at random
                         moments, --kills times. After every restart each
                         value served is one written for that key (never
                         torn, never another key's), and at least 99.9% of
                         the acknowledged writes are there.
  crash_boot_reported    after a crash, `kho status` says so and the log
                         names what was found and kept.
  fault_injection_points KHO_CRASH_AT kills it mid-set, mid-eviction, after
                         DUMP, after FREEZE and after the exec (in place
                         and overlapped): the restart keeps every
                         acknowledged write.
  keeper_holds_clients   a client that connects while the cache is dead
                         waits in the kept listener's backlog and is served
                         by the restarted image.

Synchronises on events only (a restart is seen when a request succeeds,
with a bounded number of attempts); no timing assertions.
Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib

from harness import Suite, free_port, release_mount
from pymemcache.client.base import Client

SUITE = Suite()
test = SUITE.test


def make_value(key, version, rng):
    body = b"%s:%d:" % (key.encode(), version) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 600)))
    return body + b":%08x" % zlib.crc32(body)


def parse_value(key, value):
    """The version a well-formed value for `key` carries, else raises."""
    body, _, crc = value.rpartition(b":")
    assert body and int(crc, 16) == zlib.crc32(body), f"{key}: torn value {value[:40]!r}"
    got_key, version, _ = body.split(b":", 2)
    assert got_key == key.encode(), f"{key}: a value of {got_key!r}"
    return int(version)


class Kept:
    """kho-cache under `kho run`, in a private temp dir."""

    def __init__(self, name, env=None, memory_mb=64):
        self.dir = tempfile.mkdtemp(prefix=f"kho-crash-{name}-")
        self.mount = os.path.join(self.dir, "mount")
        os.mkdir(self.mount)
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "ab")
        self.argv = [KHO, "run", "--restart", "on-failure", "--restart-delay", "0",
                     "--start-limit", "1000", "--",
                     SERVER, "-p", str(self.port), "-m", str(memory_mb), "-t", "2",
                     "--control-mount", self.mount]
        self.server_argv = self.argv[self.argv.index("--") + 1:]
        self.keeper = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})})

    def client(self, timeout=10):
        # Acknowledged writes only: pymemcache defaults to noreply.
        return Client(("127.0.0.1", self.port), connect_timeout=timeout, timeout=timeout,
                      default_noreply=False)

    def serving_pid(self, attempts=2000):
        """The pid that answers `stats`, once one does."""
        for _ in range(attempts):
            assert self.keeper.poll() is None, f"keeper exited {self.keeper.returncode}:\n{self.tail()}"
            try:
                c = self.client(timeout=2)
                try:
                    return int(c.stats()[b"pid"])
                finally:
                    c.close()
            except (OSError, Exception):
                time.sleep(0.01)
        raise AssertionError(f"kho-cache did not come back:\n{self.tail()}")

    def tail(self, n=40):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")

    def stop(self):
        try:
            if self.keeper.poll() is None:
                self.keeper.send_signal(signal.SIGTERM)
                try:
                    self.keeper.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.keeper.kill()
                    self.keeper.wait()
        finally:
            release_mount(self.mount)
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def all_threads_stopped(pid):
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "T":
                    return False
        return True
    except OSError:
        return False


def kill_and_wait_for_restart(kept, pid):
    os.kill(pid, signal.SIGKILL)
    for _ in range(2000):
        new = kept.serving_pid()
        if new != pid:
            return new
        time.sleep(0.005)
    raise AssertionError("the same pid still serves after SIGKILL")


@test
def kill_nine_under_load():
    kept = Kept("load")
    rng = random.Random(1234)
    keys = [f"k{i}" for i in range(3000)]
    acked = {}      # key -> (version, value) of the last acknowledged set
    inflight = {}   # key -> versions sent but not acknowledged (may or may not be there)
    version = 0
    lost_total = checked_total = 0
    try:
        pid = kept.serving_pid()
        for kill in range(ARGS.kills):
            c = kept.client(timeout=5)
            # Write until a random number of acknowledgements, then kill
            # with a request in flight: the next set is sent but not read.
            for _ in range(rng.randrange(50, 400)):
                key = rng.choice(keys)
                version += 1
                value = make_value(key, version, rng)
                inflight.setdefault(key, set()).add(version)
                assert c.set(key, value, noreply=False) is True
                acked[key] = (version, value)
                inflight[key].discard(version)
            # A set cut in the middle of its data block when the kill lands.
            cut = socket.create_connection(("127.0.0.1", kept.port), timeout=5)
            cut.sendall(b"set %s 0 0 20\r\n" % rng.choice(keys).encode() + b"x" * 10)
            pid = kill_and_wait_for_restart(kept, pid)
            cut.close()
            c.close()
            # Every value served is one written for its key; count the lost,
            # and forget them (what was lost stays lost).
            c = kept.client()
            lost = set()
            names = list(acked)
            for start in range(0, len(names), 100):
                got = c.get_many(names[start:start + 100])
                for key in names[start:start + 100]:
                    want_version = acked[key][0]
                    if key not in got:
                        lost.add(key)
                        continue
                    served = parse_value(key, got[key])
                    assert served == want_version or served in inflight.get(key, ()), (
                        f"{key}: served version {served}, last acknowledged {want_version}")
                    acked[key] = (served, got[key])
            c.close()
            checked_total += len(names)
            lost_total += len(lost)
            for key in lost:
                del acked[key]
        kept_ratio = 1 - lost_total / max(1, checked_total)
        print(f"     {ARGS.kills} kills: {checked_total} acknowledged values checked, "
              f"{lost_total} lost ({100 * kept_ratio:.3f}% kept)")
        assert kept_ratio >= 0.999, f"only {100 * kept_ratio:.3f}% of acknowledged writes kept"
        assert "crash boot" in kept.tail(200), kept.tail()
    finally:
        kept.stop()


@test
def crash_boot_reported():
    kept = Kept("status")
    try:
        pid = kept.serving_pid()
        c = kept.client()
        for i in range(100):
            assert c.set(f"s{i}", b"v%d" % i) is True
        c.close()
        kill_and_wait_for_restart(kept, pid)
        # The control mount comes up after the listener serves.
        for _ in range(2000):
            out = subprocess.run([KHO, "status", kept.mount], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0 and "after a crash" in out.stdout:
                break
            time.sleep(0.01)
        assert out.returncode == 0, out.stderr
        assert re.search(r"^boot: +after a crash", out.stdout, re.M), out.stdout
        assert re.search(r"^stateless: ", out.stdout, re.M), out.stdout
        log = kept.tail(100)
        assert "crash boot: the previous image" in log and "adopted the crashed image's store" in log, log
        c = kept.client()
        got = c.get_many([f"s{i}" for i in range(100)])
        assert got == {f"s{i}": b"v%d" % i for i in range(100)}, (len(got), sorted(got)[:5], log)
        c.close()
        # The next handover after a crash boot is an ordinary one.
        out = subprocess.run([KHO, "exec", kept.mount, "--", SERVER, "-p", str(kept.port), "-m", "64",
                              "-t", "2", "--control-mount", kept.mount],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr + kept.tail()
        c = kept.client()
        assert len(c.get_many([f"s{i}" for i in range(100)])) == 100
        c.close()
    finally:
        kept.stop()


@test
def keeper_holds_clients():
    kept = Kept("backlog")
    try:
        pid = kept.serving_pid()
        c = kept.client()
        assert c.set("held", b"yes") is True
        c.close()
        # A stopped image accepts nothing: this connection waits in the
        # listener's backlog, which the keeper's copy of the listener keeps
        # when the image is killed. The next image accepts and serves it.
        os.kill(pid, signal.SIGSTOP)
        # The signal is asynchronous: wait until every thread is stopped, or
        # an event loop could still accept the connection below.
        for _ in range(2000):
            if all_threads_stopped(pid):
                break
            time.sleep(0.001)
        assert all_threads_stopped(pid), "SIGSTOP did not stop the cache"
        waiting = socket.create_connection(("127.0.0.1", kept.port), timeout=30)
        waiting.sendall(b"get held\r\n")
        os.kill(pid, signal.SIGKILL)
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = waiting.recv(4096)
            assert chunk, f"connection closed before the reply ({reply!r}):\n{kept.tail()}"
            reply += chunk
        assert reply == b"VALUE held 0 3\r\nyes\r\nEND\r\n", reply
        waiting.close()
        assert kept.serving_pid() != pid
    finally:
        kept.stop()


def wait_for_mount(kept, attempts=2000):
    for _ in range(attempts):
        if subprocess.run(["mountpoint", "-q", kept.mount]).returncode == 0:
            out = subprocess.run([KHO, "status", kept.mount], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0:
                return
        time.sleep(0.01)
    raise AssertionError(f"the control mount did not come back:\n{kept.tail()}")


def load_acked(kept, prefix, count, size=100):
    c = kept.client()
    model = {}
    for i in range(count):
        key, value = f"{prefix}-{i}", (b"%s-%d:" % (prefix.encode(), i)) * (size // 8 + 1)
        assert c.set(key, value) is True
        model[key] = value
    c.close()
    return model


def check_all_there(kept, model, allow_missing=0):
    c = kept.client()
    got = {}
    names = list(model)
    for start in range(0, len(names), 100):
        got.update(c.get_many(names[start:start + 100]))
    c.close()
    wrong = [k for k in got if got[k] != model[k]]
    assert not wrong, f"{len(wrong)} wrong values, e.g. {wrong[:3]}"
    missing = len(model) - len(got)
    assert missing <= allow_missing, f"{missing} of {len(model)} keys missing:\n{kept.tail()}"


@test
def fault_injection_points():
    """KHO_CRASH_AT kills the cache with SIGKILL at each named point; the
    restart under kho run recovers: acknowledged writes are there (at most
    the one in flight is not), no value is wrong, the cache serves."""
    # In a mutation: the crash lands inside a set, or inside an eviction.
    for point, memory_mb, count, size in (("mid-set:300", 64, 2000, 100),
                                          ("mid-eviction:1000", 16, 6000, 8000)):
        kept = Kept(point.split(":")[0], env={"KHO_CRASH_AT": point}, memory_mb=memory_mb)
        try:
            pid = kept.serving_pid()
            c = kept.client()
            model, died = {}, False
            for i in range(count):
                key, value = f"f-{i}", (b"f-%d:" % i) * (size // 6 + 1)
                try:
                    assert c.set(key, value) is True
                    model[key] = value
                except (ConnectionError, OSError, Exception) as error:
                    if isinstance(error, AssertionError):
                        raise
                    died = True
                    break
            c.close()
            assert died, f"{point}: the cache did not die"
            assert kept.serving_pid() != pid
            if point.startswith("mid-set"):
                check_all_there(kept, model, allow_missing=1)
            else:
                # Evictions took keys on purpose: only check what is served.
                c = kept.client()
                got = c.get_many(list(model)[-200:])
                c.close()
                assert all(got[k] == model[k] for k in got), f"{point}: a wrong value"
                assert got, f"{point}: nothing kept"
            c = kept.client()
            assert c.set("after", b"ok") is True and c.get("after") == b"ok"
            c.close()
            assert "crash boot" in kept.tail(100), kept.tail()
        finally:
            kept.stop()
    # Around a handover, in place and overlapped.
    for point in ("after-dump", "after-freeze", "after-exec"):
        for overlapped in (False, True):
            kept = Kept(point, env={"KHO_CRASH_AT": point})
            try:
                pid = kept.serving_pid()
                wait_for_mount(kept)
                model = load_acked(kept, "h", 300)
                cmd = [KHO, "exec", kept.mount] + (["--overlapped"] if overlapped else [])
                out = subprocess.run(cmd + ["--timeout", "5", "--", *kept.server_argv],
                                     capture_output=True, text=True, timeout=60)
                # Whatever kho exec says, the service comes back with it all.
                kept.serving_pid()
                check_all_there(kept, model)
                c = kept.client()
                assert c.set("after", b"ok") is True and c.get("after") == b"ok"
                c.close()
                what = f"{point} {'overlapped' if overlapped else 'in place'}"
                if point == "after-exec" and overlapped:
                    # The next image died before reporting ready: rolled back.
                    assert out.returncode == 1 and "rolled back" in out.stdout + out.stderr, what
                    assert kept.serving_pid() == pid, what
                else:
                    assert "crash boot" in kept.tail(200), f"{what}:\n{kept.tail()}"
            finally:
                kept.stop()


def main():
    global SERVER, KHO, ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--kho", required=True, help="path to the kho binary")
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs under load")
    parser.add_argument("-k", dest="only", help="run only tests whose name contains this")
    ARGS = parser.parse_args()
    SERVER, KHO = os.path.abspath(ARGS.server), os.path.abspath(ARGS.kho)
    return SUITE.run(ARGS.only)

if __name__ == "__main__":
    sys.exit(main())
