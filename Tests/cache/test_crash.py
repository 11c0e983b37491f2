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

from harness import Suite, free_port
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

    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix=f"kho-crash-{name}-")
        self.mount = os.path.join(self.dir, "mount")
        os.mkdir(self.mount)
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "log")
        self.log = open(self.log_path, "ab")
        self.argv = [KHO, "run", "--restart", "on-failure", "--restart-delay", "0",
                     "--start-limit", "1000", "--",
                     SERVER, "-p", str(self.port), "-m", "64", "-t", "2",
                     "--control-mount", self.mount]
        self.keeper = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                       stdin=subprocess.DEVNULL)

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
            if subprocess.run(["fusermount3", "-u", "-z", self.mount],
                              stderr=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["umount", "-l", self.mount], stderr=subprocess.DEVNULL)
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


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
