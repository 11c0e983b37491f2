#!/usr/bin/env python3
"""Hostile clients against kho-cache: nothing that comes in takes it down.

Starts the server binary given by --server (one process per test, on a
free port, some under a lowered RLIMIT_NOFILE) and attacks it over real
sockets: a client that pipelines thousands of gets of a 1 MB value and
never reads, a line without end, a data block without end, 3,000
connections against -c 1024, 1,100 clients against `ulimit -n 1024`.
In each, the server must stay alive, its resident memory (VmRSS) must stay
under a stated bound over its idle size, and a fresh client must be served
(a set/get round trip) while the hostile one is still connected.

No sleep is used as synchronisation: conditions are polled a bounded
number of times; nothing asserts on timing.

Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from harness import Suite, free_port

SERVER = None
SUITE = Suite()
test = SUITE.test
TESTS = SUITE.tests
MB = 1 << 20

# How much a hostile client may grow the server's resident memory. One
# connection's bound is its pending-output limit (4 MiB) plus a flush
# threshold and one value; the rest is allocator slack.
HOSTILE_RSS_GROWTH = 48 * MB




def poll(condition, attempts=200, interval=0.05):
    """condition() until it is truthy, at most `attempts` times; returns its
    last value."""
    value = None
    for _ in range(attempts):
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return value


class Server:
    """A kho-cache process on a free port; `nofile` lowers its
    RLIMIT_NOFILE (soft and hard) before exec, as `ulimit -n` would."""

    def __init__(self, *args, nofile=None):
        self.port = free_port()

        def limit():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [SERVER, "-p", str(self.port), "-m", "16", "--control-mount", "none", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit)
        self.stderr = b""
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if not poll(self._accepts, attempts=400):
            self.stop()
            raise AssertionError(f"server did not start: {self.stderr!r}")

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr += line

    def _accepts(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.stderr!r}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def connect(self, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def rss(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def alive(self):
        return self.proc.poll() is None

    def roundtrip(self, key=b"probe"):
        """A set and a get on a fresh connection; True if both answered right."""
        value = b"v%d" % time.monotonic_ns()
        s = self.connect()
        try:
            s.sendall(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key, len(value), value, key))
            expected = b"STORED\r\nVALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value)
            return read_exactly(s, len(expected)) == expected
        except ConnectionResetError:  # refused (and closed) at a limit
            return False
        finally:
            s.close()

    def stat(self, name):
        s = self.connect()
        try:
            s.sendall(b"stats\r\n")
            text = read_until(s, b"END\r\n")
        finally:
            s.close()
        for line in text.split(b"\r\n"):
            parts = line.split()
            if len(parts) == 3 and parts[1] == name.encode():
                return int(parts[2])
        raise AssertionError(f"no stat {name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def read_exactly(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(min(n - len(out), MB))
        if not chunk:
            break
        out += chunk
    return out


def read_until(s, suffix):
    out = b""
    while not out.endswith(suffix):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def settled(sample, attempts=100, interval=0.1):
    """Polls sample() until two readings in a row are equal (the server has
    stopped making progress for the hostile client); returns the reading."""
    previous = object()

    def same():
        nonlocal previous
        value = sample()
        stable = value == previous
        previous = value
        return stable

    poll(same, attempts=attempts, interval=interval)
    return previous


def check_bounded(server, idle_rss, what):
    grown = server.rss() - idle_rss
    print(f"     {what}: RSS {server.rss() / MB:.1f} MB (idle {idle_rss / MB:.1f} MB, +{grown / MB:.1f} MB)")
    assert server.alive(), f"{what}: the server died"
    assert grown < HOSTILE_RSS_GROWTH, f"{what}: RSS grew by {grown / MB:.1f} MB"
    assert server.roundtrip(), f"{what}: a fresh client was not served"


def send_in_background(s, data):
    """sendall on a thread (the server may rightly stop reading)."""

    def send():
        try:
            s.sendall(data)
        except OSError:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def raise_own_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted


# --- replies nobody reads ------------------------------------------------------


def store_big_value(server, size=1_000_000):
    s = server.connect()
    s.sendall(b"set big 0 0 %d\r\n" % size + b"x" * size + b"\r\n")
    assert read_exactly(s, 8) == b"STORED\r\n"
    s.close()


@test
def pipelined_gets_of_a_big_value_never_read():
    server = Server()
    try:
        store_big_value(server)
        idle = server.rss()
        hostile = server.connect()
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # 20,000 gets of 1 MB (20 GB of replies) in one stream, never read.
        send_in_background(hostile, b"get big\r\n" * 20000)
        written = settled(lambda: server.stat("bytes_written"))
        assert written < 64 * MB, f"{written} bytes queued for a client that reads nothing"
        check_bounded(server, idle, "20,000 unread gets of 1 MB")
        hostile.close()
    finally:
        server.stop()


@test
def fifty_clients_that_never_read():
    # Each connection may hold 4 MiB unsent; together they are held to a
    # 64 MiB budget, past which each non-reader keeps about one flush
    # (256 KiB plus one value): 64 + 50 x 1.3 MB, with slack.
    server = Server()
    try:
        store_big_value(server)
        idle = server.rss()
        hostile = []
        for _ in range(50):
            s = server.connect()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            send_in_background(s, b"get big\r\n" * 2000)
            hostile.append(s)
        settled(lambda: server.stat("bytes_written"))
        grown = server.rss() - idle
        print(f"     50 clients that never read: RSS +{grown / MB:.1f} MB")
        assert server.alive() and grown < 200 * MB, f"RSS grew by {grown / MB:.1f} MB"
        assert server.roundtrip(), "a fresh client was not served"
        # A client that reads still gets a 1 MB value while they wait.
        s = server.connect()
        s.sendall(b"get big\r\n")
        reply = read_exactly(s, len(b"VALUE big 0 1000000\r\n") + 1_000_000 + 7)
        assert reply.endswith(b"\r\nEND\r\n"), reply[-20:]
        s.close()
        for s in hostile:
            s.close()
    finally:
        server.stop()


@test
def multi_get_lines_of_a_big_value_never_read():
    server = Server()
    try:
        store_big_value(server)
        idle = server.rss()
        hostile = server.connect()
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # One get line of 250,000 keys (250 GB of reply), twice.
        line = b"get" + b" big" * 250000 + b"\r\n"
        send_in_background(hostile, line * 2)
        settled(lambda: server.stat("bytes_written"))
        check_bounded(server, idle, "unread multi-gets of 250,000 x 1 MB")
        hostile.close()
    finally:
        server.stop()


@test
def back_pressured_replies_arrive_whole_and_in_order():
    # The reply to a long pipeline and a multi-get, paused for back-pressure
    # and resumed between keys, is exactly what an eager reader gets.
    server = Server()
    try:
        store_big_value(server, size=300_000)
        s = server.connect(timeout=10)
        value = b"VALUE big 0 300000\r\n" + b"x" * 300_000 + b"\r\n"
        request = b"get big\r\n" * 60 + b"get" + b" big" * 60 + b" none\r\nversion\r\n"
        send_in_background(s, request)
        # Let the server fill the socket's buffers and its own before
        # reading anything: 36 MB of replies is more than they hold.
        written = settled(lambda: server.stat("bytes_written"))
        assert written < 36_000_000, f"{written} bytes written to a client that reads nothing"
        expected = (value + b"END\r\n") * 60 + value * 60 + b"END\r\n"
        got = read_exactly(s, len(expected))
        assert got == expected, f"got {len(got)} bytes, expected {len(expected)}"
        assert read_until(s, b"\r\n").startswith(b"VERSION ")
        s.close()
    finally:
        server.stop()


# --- input without end ---------------------------------------------------------


def stream_until_closed(server, s, head, filler, limit):
    """Sends `head`, then `filler` up to `limit` bytes; returns the bytes
    sent before the server closed the connection (or `limit`)."""
    sent = 0
    try:
        s.sendall(head)
        while sent < limit:
            s.sendall(filler)
            sent += len(filler)
    except OSError:
        pass
    return sent


@test
def endless_line():
    server = Server()
    try:
        idle = server.rss()
        for head in [b"set k 0 0 1", b"get k", b"    "]:
            hostile = server.connect()
            sent = stream_until_closed(server, hostile, head, b"k" * 65536, 256 * MB)
            assert sent < 64 * MB, f"{head!r}: {sent} bytes of one line taken"
            check_bounded(server, idle, f"endless line {head!r}")
            hostile.close()
    finally:
        server.stop()


@test
def endless_data_block():
    server = Server()
    try:
        idle = server.rss()
        # A block within the item size limit: after its length, the rest is
        # garbage lines, and the connection is closed.
        hostile = server.connect()
        sent = stream_until_closed(server, hostile, b"set k 0 0 1000000\r\n", b"d" * 65536, 256 * MB)
        assert sent < 64 * MB, f"{sent} bytes of one data block taken"
        check_bounded(server, idle, "endless data block of a 1 MB set")
        hostile.close()
        # A block over the limit (2 GiB): swallowed as it comes, never kept.
        hostile = server.connect()
        thread = send_in_background(hostile, b"set k 0 0 2147483645\r\n" + b"d" * (512 * MB))
        poll(lambda: not thread.is_alive(), attempts=600)
        check_bounded(server, idle, "512 MB into a 2 GiB data block")
        hostile.close()
    finally:
        server.stop()


# --- too many connections ------------------------------------------------------

REFUSAL = b"ERROR Too many open connections\r\n"


def open_and_classify(server, count, most_admitted):
    """Opens `count` connections; returns (admitted, refused): a refused one
    got memcached's error line, then end of file; an admitted one answers
    `version`. Any other outcome fails. Waits (a bounded number of polls)
    until at least `count - most_admitted` have been refused, then until no
    more answers come."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.setblocking(False)
        sockets.append(s)
    selector = selectors.DefaultSelector()
    received = {s: b"" for s in sockets}
    refused = set()
    for s in sockets:
        selector.register(s, selectors.EVENT_READ)

    # The refused ones are answered without asking.
    def gather(until_refused):
        progress = False
        for key, _ in selector.select(timeout=0.2):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                chunk = b""
            progress = True
            if not chunk:
                selector.unregister(s)
                refused.add(s)
            else:
                received[s] += chunk
        return len(refused) >= until_refused if until_refused is not None else not progress

    poll(lambda: gather(count - most_admitted), attempts=600, interval=0)
    # Any refusal beyond the expected ones would show up now.
    poll(lambda: gather(None), attempts=10, interval=0)
    for s in refused:
        assert received[s] == REFUSAL, f"a closed connection got {received[s]!r}"
    admitted = [s for s in sockets if s not in refused]
    for s in admitted:
        assert received[s] == b"", f"an open connection got {received[s]!r}"
        selector.unregister(s)
        s.setblocking(True)
        s.settimeout(30)
        s.sendall(b"version\r\n")
    for s in admitted:
        reply = read_until(s, b"\r\n")
        assert reply.startswith(b"VERSION "), f"an admitted connection answered {reply!r}"
    for s in refused:
        s.close()
    return admitted, len(refused)


@test
def three_thousand_connections_at_c_1024():
    if not raise_own_fd_limit(3200):
        raise AssertionError("cannot open 3,200 files in the test process (raise ulimit -n)")
    server = Server("-c", "1024")
    try:
        idle = server.rss()
        admitted, refused = open_and_classify(server, 3000, 1024)
        print(f"     3,000 connections at -c 1024: {len(admitted)} admitted, {refused} refused")
        assert len(admitted) == 1024 and refused == 1976, (len(admitted), refused)
        # The refused ones do not count: close one admitted, and a fresh
        # client is served.
        admitted.pop().close()
        assert poll(server.roundtrip, attempts=100), "no connection admitted after one closed"
        check_bounded_connections(server, idle, admitted, "3,000 connections at -c 1024")
        for s in admitted:
            s.close()
        assert poll(lambda: server.stat("curr_connections") == 1, attempts=200)
    finally:
        server.stop()


def check_bounded_connections(server, idle, admitted, what):
    grown = server.rss() - idle
    print(f"     {what}: RSS {server.rss() / MB:.1f} MB (idle {idle / MB:.1f} MB, +{grown / MB:.1f} MB)")
    assert server.alive(), f"{what}: the server died"
    assert grown < 128 * MB, f"{what}: RSS grew by {grown / MB:.1f} MB"
    # Still serving the held connections.
    admitted[0].sendall(b"version\r\n")
    assert read_until(admitted[0], b"\r\n").startswith(b"VERSION ")


@test
def eleven_hundred_clients_under_ulimit_1024():
    if not raise_own_fd_limit(1300):
        raise AssertionError("cannot open 1,300 files in the test process (raise ulimit -n)")
    server = Server(nofile=1024)  # -c 1024 by default: more than fits
    try:
        idle = server.rss()
        assert b"allowing" in server.stderr and b"LimitNOFILE=" in server.stderr, server.stderr
        # The limit the server announced is the one it keeps, and every
        # client gets an answer (open_and_classify).
        allowed = int(server.stderr.split(b"allowing ")[1].split()[0])
        assert 900 <= allowed < 1024, allowed
        admitted, refused = open_and_classify(server, 1100, allowed)
        print(f"     1,100 clients under ulimit -n 1024: {len(admitted)} admitted, {refused} refused")
        assert len(admitted) == allowed and refused == 1100 - allowed, (allowed, len(admitted), refused)
        admitted.pop().close()
        assert poll(server.roundtrip, attempts=100), "no connection admitted after one closed"
        check_bounded_connections(server, idle, admitted, "1,100 clients under ulimit -n 1024")
        for s in admitted:
            s.close()
    finally:
        server.stop()


@test
def clients_past_the_descriptor_limit_are_answered():
    # The descriptors run out before -c is reached (the open-file limit is
    # lowered under the running server, as if something else used them):
    # accept(2) fails with EMFILE. The server must neither spin nor leave
    # the clients in its backlog unanswered: each gets memcached's refusal.
    if not raise_own_fd_limit(1300):
        raise AssertionError("cannot open 1,300 files in the test process (raise ulimit -n)")
    server = Server()
    try:
        idle = server.rss()
        held = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (held + 5, held + 5))
        # About 5 fit (the count of held descriptors may include one of the
        # start-up probe's, closing).
        admitted, refused = open_and_classify(server, 1000, 8)
        print(f"     1,000 clients with 5 descriptors left: {len(admitted)} admitted, {refused} refused")
        assert 1 <= len(admitted) <= 8 and refused == 1000 - len(admitted), (len(admitted), refused)
        # The first descriptor freed goes back into reserve, the second to
        # a client.
        admitted.pop().close()
        admitted.pop().close()
        assert poll(server.roundtrip, attempts=100), "no connection admitted after one closed"
        check_bounded_connections(server, idle, admitted, "1,000 clients at EMFILE")
        for s in admitted:
            s.close()
    finally:
        server.stop()


def run():
    return SUITE.run()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("tests", nargs="*", help="run only these tests")
    arguments = parser.parse_args()
    SERVER = arguments.server
    if arguments.tests:
        TESTS[:] = [fn for fn in TESTS if fn.__name__ in arguments.tests]
    sys.exit(run())
