#!/usr/bin/env python3
"""Hitless upgrades of kho-cache: every client connection is handed over.

Each test keeps plain TCP connections open across `kho exec`, in place and
overlapped, and never reconnects (a closed connection fails the test):

  idle_connections_keep_working     100 idle connections, each with its own
                                    key, answer on the same socket after
                                    each upgrade.
  pipeline_across_upgrade           a client pipelines `incr` non-stop on
                                    one connection across upgrades: the
                                    replies are 1, 2, 3... with none missing,
                                    none doubled, in order.
  half_sent_set_completes           a 200 KB `set` whose data block is half
                                    sent when the upgrade runs completes
                                    after it (STORED, value intact).
  large_pending_reply_delivered     a multi-get of ~12 MB the client reads
                                    slowly while the upgrade runs arrives
                                    whole, then the connection serves on.
  rollback_keeps_connections        successors that fail (exit, crash,
                                    prepared then gone; an execve that
                                    fails in place; a commit that fails
                                    after every loop froze and parked):
                                    every connection,
                                    with its pipelined requests, stays
                                    with the old image.
  connections_honour_max_connections  -c is kept by the next image.
  many_handovers_leak_nothing       200 upgrades (alternating modes) with 100
                                    connections open: each still answers,
                                    and the server's fd count and children
                                    are the same at the end as after the
                                    first upgrade.

Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import os
import socket
import sys
import threading

import test_upgrade
from harness import Suite
from test_upgrade import Service, write_script

SUITE = Suite()
test = SUITE.test


class Conn:
    """One raw memcached connection; reading past EOF fails the test."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out

    def call(self, command):
        self.send(command)
        return self.line()

    def set(self, key, value):
        assert self.call(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)) == b"STORED"

    def get(self, key):
        self.send(b"get %s\r\n" % key)
        header = self.line()
        if header == b"END":
            return None
        length = int(header.split()[3])
        value = self.read_exact(length + 2)[:-2]
        assert self.line() == b"END"
        return value

    def close(self):
        self.sock.close()


def both_modes(body):
    for overlapped in (False, True):
        svc = Service("hl").start()
        try:
            body(svc, overlapped)
        finally:
            svc.stop()


@test
def idle_connections_keep_working():
    def body(svc, overlapped):
        conns = [Conn(svc.port) for _ in range(100)]
        for i, c in enumerate(conns):
            c.set(b"idle%d" % i, b"v%d" % i)
        for _ in range(2):
            svc.upgrade(overlapped=overlapped)
            for i, c in enumerate(conns):
                assert c.get(b"idle%d" % i) == b"v%d" % i, i
        assert int(svc.stats()["curr_connections"]) >= 100
        for c in conns:
            c.close()
    both_modes(body)


@test
def pipeline_across_upgrade():
    def body(svc, overlapped):
        c = Conn(svc.port)
        c.set(b"counter", b"0")
        stop = threading.Event()
        sent = [0]

        def sender():
            while not stop.is_set():
                c.send(b"incr counter 1\r\n" * 50)
                sent[0] += 50

        thread = threading.Thread(target=sender)
        thread.start()
        received = 0
        upgrades = 0
        try:
            while upgrades < 3:
                # Upgrade while requests are in flight: some replied, some
                # buffered in the server, some in the socket.
                for _ in range(500):
                    received += 1
                    assert c.line() == b"%d" % received, received
                svc.upgrade(overlapped=overlapped)
                upgrades += 1
        finally:
            stop.set()
            thread.join()
        while received < sent[0]:
            received += 1
            assert c.line() == b"%d" % received, received
        assert c.get(b"counter") == b"%d" % sent[0]
        c.close()
    both_modes(body)


@test
def half_sent_set_completes():
    def body(svc, overlapped):
        c = Conn(svc.port)
        value = bytes(range(256)) * 800
        c.send(b"set half 0 0 %d\r\n" % len(value) + value[:len(value) // 2])
        # The server has read part of the block: a command after the set
        # line on another connection sees it pending (nothing stored yet).
        other = Conn(svc.port)
        assert other.get(b"half") is None
        svc.upgrade(overlapped=overlapped)
        c.send(value[len(value) // 2:] + b"\r\n")
        assert c.line() == b"STORED"
        assert c.get(b"half") == value
        assert other.get(b"half") == value
        c.close()
        other.close()
    both_modes(body)


@test
def large_pending_reply_delivered():
    def body(svc, overlapped):
        c = Conn(svc.port)
        values = {b"big%d" % i: bytes([65 + i]) * 900_000 for i in range(14)}
        for k, v in values.items():
            c.set(k, v)
        c.send(b"get " + b" ".join(values) + b"\r\n")
        result = {}

        def upgrade():
            result["ms"] = svc.upgrade(overlapped=overlapped)

        thread = threading.Thread(target=upgrade)
        thread.start()
        # Read the reply slowly, so that the server holds most of it (in the
        # socket, in the channel, in the handler) when it freezes.
        got = {}
        for _ in values:
            header = c.line().split()
            assert header[0] == b"VALUE", header
            body_bytes = b""
            length = int(header[3])
            while len(body_bytes) < length:
                body_bytes += c.read_exact(min(65536, length - len(body_bytes)))
            assert c.read_exact(2) == b"\r\n"
            got[header[1]] = body_bytes
        assert c.line() == b"END"
        thread.join()
        assert "ms" in result, "the upgrade failed"
        assert got == values
        assert c.call(b"version\r\n").startswith(b"VERSION")
        c.close()
    both_modes(body)


@test
def rollback_keeps_connections():
    svc = Service("hl-rb").start()
    try:
        conns = [Conn(svc.port) for _ in range(20)]
        for i, c in enumerate(conns):
            c.set(b"rb%d" % i, b"v%d" % i)
        fail = write_script(svc.dir, "fail.sh", "#!/bin/sh\nexit 1\n")
        segv = write_script(svc.dir, "segv.sh", "#!/bin/sh\nkill -SEGV $$\n")
        gone = write_script(svc.dir, "prepared-then-gone.py", (
            "#!/usr/bin/env python3\nimport os, signal\n"
            "os.close(int(os.environ['KHO_COMMIT_FD']))\n"
            "os.write(int(os.environ['KHO_READY_FD']), b'READY\\n')\n"
            "os.kill(os.getpid(), signal.SIGSEGV)\n"))
        pid = svc.pid()
        for argv in ([fail], [segv], [gone]):
            # A request pipelined right before the failed upgrade.
            conns[0].send(b"incr nothing 1\r\n")
            rc, out, err = svc.kho_exec(argv, overlapped=True)
            assert rc != 0, (argv, out, err)
            assert conns[0].line() == b"NOT_FOUND"
            for i, c in enumerate(conns):
                try:
                    value = c.get(b"rb%d" % i)
                except AssertionError as e:
                    raise AssertionError(f"{argv[0]}: connection {i}: {e}\n{svc.log_tail()}")
                assert value == b"v%d" % i, (argv, i)
            assert svc.pid() == pid
        svc.upgrade(overlapped=True)
        for i, c in enumerate(conns):
            assert c.get(b"rb%d" % i) == b"v%d" % i
    finally:
        svc.stop()
    # In place: the execve fails once (the fault hook); the connections stay.
    svc = Service("hl-rb-exec", env={"KHO_FAULT_SYSCALL": "execve:EACCES:0:1"}).start()
    try:
        c = Conn(svc.port)
        c.set(b"k", b"v")
        rc, out, err = svc.kho_exec(svc.argv)
        assert rc != 0, (out, err)
        assert c.get(b"k") == b"v"
        svc.upgrade(overlapped=False)
        assert c.get(b"k") == b"v"
    finally:
        svc.stop()
    # Overlapped, after FREEZE: the commit's sendmsg fails once, so every
    # event loop had parked with its snapshots taken, and is thawed. The
    # connections, spread over the loops, serve on; a request sent while
    # the loops were parked is answered after the thaw.
    svc = Service("hl-rb-frozen", env={"KHO_FAULT_SYSCALL": "sendmsg:EPIPE:0:1"}).start()
    try:
        conns = [Conn(svc.port) for _ in range(16)]
        for i, c in enumerate(conns):
            c.set(b"fz%d" % i, b"v%d" % i)
        conns[0].send(b"incr nothing 1\r\n")
        rc, out, err = svc.kho_exec(svc.argv, overlapped=True)
        assert rc != 0, (rc, out, err)
        # Frozen first (the records were written), then the commit failed.
        log = svc.log_tail()
        assert "handing over 16 connections" in log and "when the commit was sent" in log, log
        assert conns[0].line() == b"NOT_FOUND"
        for i, c in enumerate(conns):
            assert c.get(b"fz%d" % i) == b"v%d" % i, (i, svc.log_tail())
        svc.upgrade(overlapped=True)
        for i, c in enumerate(conns):
            assert c.get(b"fz%d" % i) == b"v%d" % i
    finally:
        svc.stop()


@test
def connections_honour_max_connections():
    def body(svc, overlapped):
        conns = [Conn(svc.port) for _ in range(5)]
        for c in conns:
            assert c.call(b"version\r\n").startswith(b"VERSION")
        svc.upgrade(overlapped=overlapped)
        for c in conns:
            assert c.call(b"version\r\n").startswith(b"VERSION")
        assert int(svc.stats()["max_connections"]) == 8
        extra = [Conn(svc.port) for _ in range(6)]
        refused = 0
        for c in extra:
            try:
                reply = c.call(b"version\r\n")
            except (AssertionError, OSError):
                refused += 1
                continue
            if reply.startswith(b"ERROR Too many"):
                refused += 1
        assert refused >= 3, refused
        for c in conns + extra:
            c.close()

    for overlapped in (False, True):
        svc = Service("hl-c", extra=("-c", "8")).start()
        try:
            body(svc, overlapped)
        finally:
            svc.stop()


def closing_socket_inodes():
    """Inodes of TCP sockets in CLOSE_WAIT: the client closed (the test's
    own short-lived control connections), the server has not yet read the
    end of stream. Transient, so not counted as held."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    fields = row.split()
                    if fields[3] == "08":
                        inodes.add(fields[9])
        except FileNotFoundError:
            pass
    return inodes


def open_fds(pid):
    """The server's descriptors, without sockets its clients have closed."""
    closing = closing_socket_inodes()
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while listed
        if target.startswith("socket:[") and target[8:-1] in closing:
            continue
        count += 1
    return count


@test
def many_handovers_leak_nothing():
    svc = Service("hl-many").start()
    try:
        conns = [Conn(svc.port) for _ in range(100)]
        for i, c in enumerate(conns):
            c.set(b"m%d" % i, b"v%d" % i)
        svc.upgrade(overlapped=False)
        first = (open_fds(svc.pid()), len(test_upgrade.children_of(svc.pid())))
        for round in range(199):
            svc.upgrade(overlapped=round % 2 == 0)
            i = round % len(conns)
            assert conns[i].get(b"m%d" % i) == b"v%d" % i, round
        for i, c in enumerate(conns):
            assert c.get(b"m%d" % i) == b"v%d" % i
        last = (open_fds(svc.pid()), len(test_upgrade.children_of(svc.pid())))
        # A leak grows; one fewer (a lazily opened descriptor of the first
        # image's runtime, not made again) is not one.
        assert last[0] <= first[0] and last[1] == first[1], (
            f"fds and children after the first upgrade {first}, at the end {last}")
        for c in conns:
            c.close()
    finally:
        svc.stop()


def main():
    return test_upgrade.run_suite(SUITE, __doc__)


if __name__ == "__main__":
    sys.exit(main())
