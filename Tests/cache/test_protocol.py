#!/usr/bin/env python3
"""Protocol tests for kho-cache with real memcached clients.

Starts the server binary given by --server on a free port, then talks to it
with pymemcache, libmemcached-tools (memccp/memccat) and raw sockets:
every command, memcached 1.6's exact error replies (each expected reply
below was checked byte for byte against memcached 1.6.18), oversize values,
pipelining, partial reads and abrupt disconnects.

Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError, MemcacheClientError

PORT = 0
RESULTS = {"passed": 0, "failed": 0}
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(data, expect_len=None, wait=0.3):
    """Sends `data` on a new connection and returns everything received
    until `expect_len` bytes arrived, the peer closed (b"<EOF>" appended)
    or `wait` seconds of silence."""
    s = connect()
    s.settimeout(wait)
    s.sendall(data)
    out = b""
    try:
        while expect_len is None or len(out) < expect_len:
            chunk = s.recv(1 << 20)
            if not chunk:
                out += b"<EOF>"
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


def check(got, expected, what=""):
    if got != expected:
        raise AssertionError(f"{what}\n  expected {expected[:300]!r}\n  got      {got[:300]!r}")


def client():
    return Client(("127.0.0.1", PORT), default_noreply=False, connect_timeout=5, timeout=5)


# --- pymemcache --------------------------------------------------------------


@test
def pymemcache_set_get_delete():
    c = client()
    assert c.set("a", b"hello", expire=0) is True
    assert c.get("a") == b"hello"
    assert c.get_many(["a", "missing"]) == {"a": b"hello"}
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert c.get("a") is None


@test
def pymemcache_add_replace_append_prepend():
    c = client()
    c.delete("k")
    assert c.replace("k", b"x") is False
    assert c.add("k", b"mid") is True
    assert c.add("k", b"other") is False
    assert c.append("k", b">") is True
    assert c.prepend("k", b"<") is True
    assert c.get("k") == b"<mid>"


@test
def pymemcache_cas():
    c = client()
    c.set("c", b"1")
    value, cas = c.gets("c")
    assert value == b"1"
    assert c.cas("c", b"2", cas) is True
    assert c.cas("c", b"3", cas) is False  # EXISTS
    assert c.cas("nope", b"3", cas) is None  # NOT_FOUND
    assert c.get("c") == b"2"


@test
def pymemcache_incr_decr():
    c = client()
    c.set("n", b"100")
    assert c.decr("n", 95) == 5
    assert c.get("n") == b"5  "  # memcached pads in place
    assert c.decr("n", 10) == 0
    assert c.incr("n", 2**64 - 1) == 2**64 - 1
    assert c.incr("n", 2) == 1  # wraps
    assert c.incr("missing", 1) is None
    c.set("s", b"abc")
    try:
        c.incr("s", 1)
        raise AssertionError("incr on non-numeric did not fail")
    except MemcacheClientError as e:
        assert b"non-numeric" in str(e).encode() or "non-numeric" in str(e)


@test
def pymemcache_touch_expire_flags():
    c = client()
    c.set("t", b"v", expire=1)
    assert c.touch("t", 100) is True
    assert c.touch("missing", 100) is False
    time.sleep(1.2)
    assert c.get("t") == b"v"  # touch moved the expiry
    c.set("e", b"v", expire=1)
    time.sleep(2.1)
    assert c.get("e") is None
    c.set("f", b"v", flags=12345)
    check(exchange(b"get f\r\n", expect_len=25), b"VALUE f 12345 1\r\nv\r\nEND\r\n")


@test
def pymemcache_flush_stats_version():
    c = client()
    c.set("x", b"1")
    assert c.flush_all() is True
    assert c.get("x") is None
    stats = c.stats()
    for name in [b"curr_items", b"total_items", b"bytes", b"evictions", b"get_hits", b"get_misses",
                 b"cmd_get", b"cmd_set", b"curr_connections", b"limit_maxbytes"]:
        assert name in stats, name
    assert c.version()


@test
def pymemcache_large_values():
    c = client()
    big = os.urandom((1 << 20) - 1024)
    assert c.set("big", big) is True
    assert c.get("big") == big
    try:
        c.set("huge", b"x" * (2 << 20))
        raise AssertionError("2 MiB value accepted")
    except MemcacheServerError as e:
        assert "object too large for cache" in str(e)
    assert c.get("big") == big  # the connection is still in sync after the swallow


@test
def pymemcache_noreply_pipeline():
    c = Client(("127.0.0.1", PORT), default_noreply=True)
    for i in range(500):
        c.set(f"nr{i}", str(i).encode())
    got = c.get_many([f"nr{i}" for i in range(500)])
    assert len(got) == 500 and got["nr499"] == b"499"


# --- exact replies on raw sockets (as memcached 1.6.18 answers) ---------------

RAW = [
    # memcached wants a key after bget (found by Fuzz/memcache_differential.py).
    (b"bget\r\n", b"ERROR\r\n"),
    (b"set a 1 0 3\r\nabc\r\nget a\r\n", b"STORED\r\nVALUE a 1 3\r\nabc\r\nEND\r\n"),
    (b"set a 1 0 3\r\nabcde\r\nget a\r\n", b"CLIENT_ERROR bad data chunk\r\nERROR\r\nVALUE a 1 3\r\nabc\r\nEND\r\n"),
    (b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    (b"get " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"get a " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set a 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set a x 0 1\r\nx\r\n", b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
    (b"set a 0 0\r\n", b"ERROR\r\n"),
    (b"bogus\r\n", b"ERROR\r\n"),
    (b"\r\n", b"ERROR\r\n"),
    (b"get\r\n", b"ERROR\r\n"),
    (b"set b 0 0 2000000\r\n" + b"x" * 2000000 + b"\r\nget b\r\n",
     b"SERVER_ERROR object too large for cache\r\nEND\r\n"),
    (b"set n 0 0 3\r\n100\r\ndecr n 95\r\nget n\r\nincr n x\r\nincr zz 1\r\nset s 0 0 2\r\nab\r\nincr s 1\r\n",
     b"STORED\r\n5\r\nVALUE n 0 3\r\n5  \r\nEND\r\nCLIENT_ERROR invalid numeric delta argument\r\nNOT_FOUND\r\n"
     b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
    (b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\ndecr n 5\r\n", b"STORED\r\n0\r\n0\r\n"),
    (b"set a 0 0 1\r\nx\r\ndelete a 0\r\ndelete a 1\r\ndelete a noreply\r\ndelete a 0 noreply\r\ndelete a x y\r\n",
     b"STORED\r\nDELETED\r\nCLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
     b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"),
    (b"delete b\r\nadd b 0 0 1\r\nx\r\nadd b 0 0 1\r\ny\r\nreplace c 0 0 1\r\nx\r\nappend b 0 0 2\r\nzz\r\n"
     b"prepend b 0 0 2\r\nqq\r\nget b\r\nappend q 0 0 1\r\nx\r\n",
     b"NOT_FOUND\r\nSTORED\r\nNOT_STORED\r\nNOT_STORED\r\nSTORED\r\nSTORED\r\nVALUE b 0 5\r\nqqxzz\r\nEND\r\nNOT_STORED\r\n"),
    (b"cas q 0 0 1 5\r\nx\r\ncas b 0 0 1 999999999\r\nx\r\n", b"NOT_FOUND\r\nEXISTS\r\n"),
    (b"touch b 10\r\ntouch zz 10\r\ntouch b x\r\ngat 10 b zz\r\ngats x b\r\n",
     b"TOUCHED\r\nNOT_FOUND\r\nCLIENT_ERROR invalid exptime argument\r\nVALUE b 0 5\r\nqqxzz\r\nEND\r\n"
     b"CLIENT_ERROR invalid exptime argument\r\n"),
    (b"verbosity\r\nverbosity 1\r\nverbosity x\r\nverbosity 1 noreply\r\n",
     b"ERROR\r\nOK\r\nCLIENT_ERROR bad command line format\r\n"),
    (b"set a 0 0 1 noreply\r\nx\r\nget a\r\nset a 0 0 1 noreply\r\nxyz\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\nERROR\r\n"),
    (b"stats reset\r\nstats foo\r\n", b"RESET\r\nERROR\r\n"),
    (b"quit\r\nget a\r\n", b"<EOF>"),
    (b"GET / HTTP/1.1\r\n", b"<EOF>"),
    (b"x" * 3000, b"<EOF>"),
    (b"set a 0 0 1\r\nx\r\n\nget a\n", b"STORED\r\nERROR\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),
    (b"incr\r\ndecr a\r\ntouch a\r\ncas a 0 0 1\r\nx\r\n", b"ERROR\r\nERROR\r\nERROR\r\nERROR\r\nERROR\r\n"),
    (b"set a 0 0 1 2 3\r\nx\r\n", b"ERROR\r\nERROR\r\n"),
    (b"set a 4294967296 0 1\r\nx\r\nget a\r\n", b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),
    (b"set a 0 -1 1\r\nx\r\nget a\r\n", b"STORED\r\nEND\r\n"),
    (b"set k 0 0 5\r\n  12 \r\nincr k 1\r\nget k\r\n", b"STORED\r\n13\r\nVALUE k 0 5\r\n13   \r\nEND\r\n"),
    (b"get  a   a\r\n", b"END\r\n"),
    (b"flush_all x\r\nflush_all 1 2 3\r\nflush_all noreply\r\nflush_all 0\r\n",
     b"CLIENT_ERROR invalid exptime argument\r\nERROR\r\nOK\r\n"),
    # append/prepend past the item size limit: NOT_STORED, not SERVER_ERROR.
    (b"set apx 0 0 600000\r\n" + b"x" * 600000 + b"\r\nappend apx 0 0 600000\r\n" + b"y" * 600000
     + b"\r\nprepend apx 0 0 600000\r\n" + b"z" * 600000 + b"\r\nappend apx 0 0 1\r\n!\r\n",
     b"STORED\r\nNOT_STORED\r\nNOT_STORED\r\nSTORED\r\n"),
    # A NUL byte ends the line (memcached tokenizes a C string).
    (b"set nul\x00x 0 0 1\r\nx\r\nget nul\r\nset nul 0 0 1\r\ny\r\nget nul\x00zzz\r\ndelete nul\x00 noreply\r\n",
     b"ERROR\r\nERROR\r\nEND\r\nSTORED\r\nVALUE nul 0 1\r\ny\r\nEND\r\nDELETED\r\n"),
]


@test
def raw_replies_match_memcached():
    failures = []
    for request, expected in RAW:
        got = exchange(request, expect_len=None if expected.endswith(b"<EOF>") else len(expected))
        if got != expected:
            failures.append(f"{request[:60]!r}\n    expected {expected[:200]!r}\n    got      {got[:200]!r}")
    assert not failures, "\n  ".join(failures)


@test
def pipelining_many_commands_in_one_write():
    request = b"".join(b"set p%d 0 0 %d\r\n%d\r\n" % (i, len(str(i)), i) for i in range(300))
    request += b"get " + b" ".join(b"p%d" % i for i in range(300)) + b"\r\n"
    expected = b"STORED\r\n" * 300
    expected += b"".join(b"VALUE p%d 0 %d\r\n%d\r\n" % (i, len(str(i)), i) for i in range(300)) + b"END\r\n"
    check(exchange(request, expect_len=len(expected), wait=3), expected)


@test
def partial_reads_byte_by_byte():
    s = connect()
    for byte in b"set slow 0 0 5\r\nhello\r\nget slow\r\n":
        s.sendall(bytes([byte]))
        time.sleep(0.001)
    expected = b"STORED\r\nVALUE slow 0 5\r\nhello\r\nEND\r\n"
    s.settimeout(3)
    got = b""
    while len(got) < len(expected):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    check(got, expected)


@test
def oversize_value_swallowed_across_reads():
    s = connect()
    s.sendall(b"set big 0 0 3000000\r\n")
    for _ in range(30):
        s.sendall(b"y" * 100000)
    s.sendall(b"\r\nversion\r\n")
    s.settimeout(3)
    got = b""
    while b"VERSION" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got.startswith(b"SERVER_ERROR object too large for cache\r\nVERSION "), got


@test
def abrupt_disconnects_leave_the_server_serving():
    before = int(client().stats()[b"curr_connections"])
    for request in [b"set cut 0 0 100\r\nhalf", b"get a b c", b"set x 0 0 1\r\nx\r\nget x\r\n" * 50,
                    b"set big 0 0 500000\r\n" + b"z" * 1000]:
        s = connect()
        s.sendall(request)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
    time.sleep(0.3)
    c = client()
    assert c.get("cut") is None  # a half-received block is never stored
    c.set("after", b"ok")
    assert c.get("after") == b"ok"
    assert int(c.stats()[b"curr_connections"]) <= before + 1


@test
def memccp_and_memccat():
    cp = shutil.which("memccp") or shutil.which("memcp")
    cat = shutil.which("memccat") or shutil.which("memcat")
    assert cp and cat, "libmemcached-tools not installed"
    servers = f"127.0.0.1:{PORT}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "payload.bin")
        data = os.urandom(200000)
        with open(path, "wb") as f:
            f.write(data)
        subprocess.run([cp, f"--servers={servers}", path], check=True, timeout=10)
        out = subprocess.run([cat, f"--servers={servers}", "payload.bin"], check=True, timeout=10,
                             capture_output=True).stdout
        # memccat ends what it prints with a newline of its own.
        assert out in (data, data + b"\n"), f"memccat returned {len(out)} bytes"
    assert client().get("payload.bin") == data


@test
def stats_count_hits_and_misses():
    c = client()
    before = c.stats()
    c.set("sh", b"1")
    c.get("sh")
    c.get("sh-missing")
    after = c.stats()
    assert int(after[b"get_hits"]) == int(before[b"get_hits"]) + 1
    assert int(after[b"get_misses"]) == int(before[b"get_misses"]) + 1
    assert int(after[b"cmd_set"]) == int(before[b"cmd_set"]) + 1


def run(server):
    global PORT
    PORT = free_port()
    proc = subprocess.Popen([server, "-p", str(PORT), "-m", "16"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    print("server did not start")
                    return 1
                time.sleep(0.05)
        for fn in TESTS:
            try:
                fn()
                RESULTS["passed"] += 1
                print(f"ok   {fn.__name__}")
            except Exception:
                RESULTS["failed"] += 1
                print(f"FAIL {fn.__name__}")
                traceback.print_exc()
            if proc.poll() is not None:
                print("server died")
                RESULTS["failed"] += 1
                break
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    sys.exit(run(parser.parse_args().server))
