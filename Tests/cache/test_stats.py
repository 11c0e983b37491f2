#!/usr/bin/env python3
"""The rest of the text protocol against Debian's memcached 1.6.18: `stats
settings`, `stats items`, `stats slabs`, `stats sizes`, `stats detail`,
`cache_memlimit`, `verbosity`, `shutdown` (-A) and a binary-protocol first
byte. Both servers run side by side on free ports; the replies that can be
byte-identical are compared byte for byte, the stats are compared by their
keys (the figures are each server's own), and kho-cache's figures are
checked against what it was sent.

Prints `N passed, M failed` last; exits non-zero on any failure.
    python3 Tests/cache/test_stats.py --server .build/debug/kho-cache [-k NAME]
"""
import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Suite, free_port  # noqa: E402

MEMCACHED = "/usr/bin/memcached"
suite = Suite()
SERVERS = {}  # name -> (process, port)
SERVER = None


def start(name, argv, port):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start")
            time.sleep(0.02)
    SERVERS[name] = (proc, port)
    return proc


def converse(port, data):
    """`data` then `mn` on one connection: everything before the MN."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data + b"mn\r\n")
        out = b""
        while not out.endswith(b"MN\r\n"):
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {out[-200:]!r}"
            out += chunk
    return out[:-4]


def both(data):
    return [converse(SERVERS[name][1], data) for name in ("memcached", "kho-cache")]


def stat_map(reply):
    lines = reply.decode().split("\r\n")
    assert lines[-2:] == ["END", ""], lines[-3:]
    out = {}
    for line in lines[:-2]:
        tag, key, value = line.split(" ", 2)
        assert tag == "STAT", line
        out[key] = value
    return out


def fill(port):
    """One small and one 2000-byte item."""
    converse(port, b"set small 0 0 3\r\nabc\r\nset big 0 0 2000\r\n" + b"x" * 2000 + b"\r\n")


@suite.test
def test_identical_replies():
    cases = [b"stats sizes\r\n", b"stats detail on\r\n", b"stats detail off\r\n",
             b"stats detail\r\n", b"stats detail x\r\n", b"stats bogus\r\n",
             b"cache_memlimit\r\n", b"cache_memlimit x\r\n", b"cache_memlimit 4\r\n",
             b"cache_memlimit 2000000000\r\n", b"cache_memlimit 64\r\n",
             b"cache_memlimit 64 noreply\r\n", b"verbosity 1\r\n", b"verbosity\r\n",
             b"verbosity x\r\n", b"verbosity 0 noreply\r\n", b"shutdown\r\n",
             b"shutdown graceful\r\n", b"slabs automove invalid\r\n", b"slabs automove 0\r\n",
             b"slabs automove 3\r\n", b"slabs automove ratio 0.5\r\n",
             b"slabs automove ratio x\r\n", b"slabs\r\n", b"slabs automove\r\n",
             b"slabs automove 1 noreply\r\n", b"stats detail on\r\nstats detail dump\r\nstats detail off\r\n"]
    for case in cases:
        expected, actual = both(case)
        assert expected == actual, (case, expected, actual)


@suite.test
def test_detail_dump_counts_per_prefix():
    data = (b"stats detail on\r\nset pfx:1 0 0 1\r\na\r\nget pfx:1 pfx:2 nopfx\r\n"
            b"gets pfx:1\r\ndelete pfx:1\r\ndelete pfx:1\r\nset other:x 0 0 1\r\nb\r\n"
            b"stats detail off\r\nget pfx:1\r\ndelete other:x\r\nstats detail dump\r\n")
    expected, actual = both(data)
    assert b"PREFIX pfx get 3 hit 2 set 1 del 2\r\n" in actual, actual
    # One prefix per reply so that the order (memcached's hash order) cannot differ.
    only = lambda r: [l for l in r.split(b"\r\n") if l.startswith(b"PREFIX pfx ")]
    assert only(expected) == only(actual), (expected, actual)


@suite.test
def test_settings_keys_are_memcacheds():
    expected, actual = (stat_map(r) for r in both(b"stats settings\r\n"))
    missing = set(actual) - set(expected)
    assert not missing, f"keys memcached does not have: {missing}"
    for key in ("maxbytes", "maxconns", "tcpport", "growth_factor", "chunk_size", "num_threads",
                "item_size_max", "cas_enabled", "evictions", "detail_enabled", "verbosity"):
        assert key in actual, key
    assert actual["maxbytes"] == expected["maxbytes"] == str(64 << 20)
    assert actual["growth_factor"] == expected["growth_factor"]
    assert actual["chunk_size"] == expected["chunk_size"]
    assert actual["item_size_max"] == expected["item_size_max"]
    assert actual["tcpport"] == str(SERVERS["kho-cache"][1])


@suite.test
def test_settings_follow_verbosity_and_detail():
    port = SERVERS["kho-cache"][1]
    converse(port, b"verbosity 3\r\nstats detail on\r\n")
    s = stat_map(converse(port, b"stats settings\r\n"))
    assert (s["verbosity"], s["detail_enabled"]) == ("3", "yes"), s
    converse(port, b"verbosity 0\r\nstats detail off\r\n")
    s = stat_map(converse(port, b"stats settings\r\n"))
    assert (s["verbosity"], s["detail_enabled"]) == ("0", "no"), s


def per_class_keys(stats, pattern):
    keys = {}
    for key in stats:
        m = re.fullmatch(pattern, key)
        if m:
            keys.setdefault(int(m.group(1)), set()).add(m.group(2))
    return keys


@suite.test
def test_items_keys_are_memcacheds():
    for name in SERVERS:
        fill(SERVERS[name][1])
    expected, actual = (stat_map(r) for r in both(b"stats items\r\n"))
    e = per_class_keys(expected, r"items:(\d+):(\w+)")
    a = per_class_keys(actual, r"items:(\d+):(\w+)")
    assert len(a) == 2, sorted(a)
    names = next(iter(e.values()))
    for classId, keys in a.items():
        assert keys == names, (classId, keys ^ names)
    numbers = sorted(int(actual[f"items:{c}:number"]) for c in a)
    assert numbers == [1, 1], numbers


@suite.test
def test_slabs_keys_are_memcacheds():
    for name in SERVERS:
        fill(SERVERS[name][1])
    expected, actual = (stat_map(r) for r in both(b"stats slabs\r\n"))
    e = per_class_keys(expected, r"(\d+):(\w+)")
    a = per_class_keys(actual, r"(\d+):(\w+)")
    shared = {"chunk_size", "chunks_per_page", "total_pages", "total_chunks", "used_chunks",
              "free_chunks", "free_chunks_end"}
    for classId, keys in a.items():
        assert keys == shared, (classId, keys)
        assert shared <= next(iter(e.values()))
        total = int(actual[f"{classId}:total_chunks"])
        used, free = int(actual[f"{classId}:used_chunks"]), int(actual[f"{classId}:free_chunks"])
        assert used + free == total, (classId, used, free, total)
    for key in ("active_slabs", "total_malloced"):
        assert key in actual and key in expected, key
    assert int(actual["active_slabs"]) == len(a)
    pages = sum(int(actual[f"{c}:total_pages"]) for c in a)
    assert int(actual["total_malloced"]) == pages << 20


@suite.test
def test_class_numbers_are_memcacheds():
    """`me` names the class: the same for the same value size (away from a
    class limit: kho-cache's item header is 5 bytes bigger)."""
    for size in (1, 60, 1000, 5000, 66560, 200000, 400000):
        data = b"set cls%d 0 0 %d\r\n%s\r\nme cls%d\r\n" % (size, size, b"x" * size, size)
        expected, actual = (re.search(rb"cls=(\d+)", r).group(1) for r in both(data))
        assert expected == actual, (size, expected, actual)


@suite.test
def test_evictions_counted_per_class():
    port = SERVERS["kho-cache"][1]
    value = b"v" * 100_000
    data = b"".join(b"set ev%d 0 0 %d\r\n%s\r\n" % (i, len(value), value) for i in range(1000))
    converse(port, data)
    items = stat_map(converse(port, b"stats items\r\n"))
    general = stat_map(converse(port, b"stats\r\n"))
    evicted = sum(int(v) for k, v in items.items() if k.endswith(":evicted"))
    assert evicted > 0 and evicted == int(general["evictions"]), (evicted, general["evictions"])
    converse(port, b"stats reset\r\n")
    items = stat_map(converse(port, b"stats items\r\n"))
    assert all(v == "0" for k, v in items.items() if k.endswith(":evicted")), items


@suite.test
def test_binary_magic_byte_gets_an_error_and_a_close():
    request = struct.pack(">BBHBBHIIQ", 0x80, 0x00, 1, 0, 0, 0, 1, 0x12345678, 0) + b"a"
    with socket.create_connection(("127.0.0.1", SERVERS["kho-cache"][1]), timeout=30) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
    magic, opcode, keylen, extlen, _, status, bodylen, opaque, cas = struct.unpack(
        ">BBHBBHIIQ", out[:24])
    assert (magic, opcode, keylen, extlen, status, opaque, cas) == (
        0x81, 0, 0, 0, 0x0081, 0x12345678, 0), out
    assert out[24:] == b"kho-cache speaks only memcached's text protocol" and bodylen == len(out) - 24


@suite.test
def test_shutdown_with_A_stops_the_server():
    port = free_port()
    proc = subprocess.Popen([SERVER, "-p", str(port), "-m", "16", "-A"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.02)
        assert converse(port, b"shutdown x\r\n") == b"CLIENT_ERROR invalid shutdown mode\r\n"
        s = stat_map(converse(port, b"stats settings\r\n"))
        assert s["shutdown_command"] == "yes", s["shutdown_command"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"shutdown\r\n")
            assert c.recv(100) == b"", "shutdown answered instead of closing"
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    global SERVER
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("-k", dest="only")
    args = parser.parse_args()
    SERVER = os.path.abspath(args.server)
    mc_port, kc_port = free_port(), free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    try:
        start("memcached", [MEMCACHED, "-p", str(mc_port), "-U", "0", "-l", "127.0.0.1", "-m", "64",
                            *user], mc_port)
        start("kho-cache", [SERVER, "-p", str(kc_port), "-m", "64"], kc_port)
        return suite.run(args.only)
    finally:
        for proc, _ in SERVERS.values():
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
