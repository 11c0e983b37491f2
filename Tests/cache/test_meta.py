#!/usr/bin/env python3
"""Differential test of memcached's meta protocol (mg, ms, md, ma, mn, me)
and the classic commands mixed with it: Debian's memcached 1.6.18
(/usr/bin/memcached) and kho-cache (--server) run side by side on free
ports, every hand-written case and every generated stream (seeded, so the
same bytes each run) is sent to both, and the replies must be byte for
byte the same, except for what `mask` lists:

  - `VERSION ...`: the version string;
  - `ME` lines: `la=`, `cls=` and `size=` (memcached's LRU bookkeeping,
    its own size classes and item header size);
  - mg's `l` (seconds since last access: memcached's segmented LRU updates
    it on other hits than kho-cache's once-a-minute bump);
  - mg/ma's `t` and ME's `exp=` may differ by one second: the two servers'
    clocks tick independently; and a `t` of an expiry already past (`T-1`)
    is 1 minus the server's clock as an unsigned number, which depends on
    where each clock started.

Each exchange ends with a sentinel `mg` whose answer says the server has
answered everything before it (no sleeps). An exchange is one batch: in
memcached a pipelined reply not yet written holds a reference on its item,
which makes a later incr in the same batch copy the item instead of
rewriting it in place (timing, not protocol), so the cases that look at an
incremented value read it in a batch of its own, and every exchange ends
with one more `mn` round trip (`settle`). For the same reason memcached
runs with `-o no_lru_maintainer,no_lru_crawler`: those threads take item
references at times of their own, which made an incr copy an item (and
lose its fetched/win bits) now and then. Prints `N passed, M failed` last.
"""
import argparse
import base64
import os
import random
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Suite, free_port  # noqa: E402

MEMCACHED = "/usr/bin/memcached"
suite = Suite()
SERVERS = {}  # name -> port


def start(args, port):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Ready when it accepts a connection and answers (retrying a refused
    # connect is waiting for the listen, not a timed assertion).
    for _ in range(2000):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"mn\r\n")
                if s.recv(16) == b"MN\r\n":
                    return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {proc.returncode}")
            os.sched_yield()
    raise RuntimeError(f"{args[0]} never listened on {port}")


class Connection:
    """One connection to each server, fed the same bytes."""

    def __init__(self):
        self.socks = {}
        for name, port in SERVERS.items():
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks[name] = s
        self.sent = 0

    def exchange(self, data):
        """Sends `data` then a sentinel to both; returns each one's replies
        up to the sentinel's (a miss on a key never stored, echoed with
        `k`, so no other reply can look like it), or up to <EOF>."""
        self.sent += 1
        sentinel = b"mg __end_%d k\r\n" % self.sent
        answer = b"EN k__end_%d\r\n" % self.sent
        out = {}
        for name, s in self.socks.items():
            s.sendall(data + sentinel)
        for name, s in self.socks.items():
            buf = b""
            while not buf.endswith(answer):
                try:
                    chunk = s.recv(1 << 20)
                except socket.timeout:
                    raise AssertionError(f"{name}: no sentinel after {data!r}; got {buf!r}")
                if not chunk:
                    buf += b"<EOF>"
                    break
                buf += chunk
            out[name] = buf[: -len(answer)] if buf.endswith(answer) else buf
        for name, s in self.socks.items():
            if not out[name].endswith(b"<EOF>"):
                self.settle(name, s)
        return out

    @staticmethod
    def settle(name, s):
        """One more round trip (`mn`), so that memcached has finished
        writing the batch before the next one arrives: until then its
        replies hold references on their items, and an incr meeting such a
        reference copies the item (losing its fetched/stale/win bits)
        instead of rewriting it in place."""
        s.sendall(b"mn\r\n")
        buf = b""
        while buf != b"MN\r\n":
            chunk = s.recv(16)
            assert chunk and b"MN\r\n".startswith(buf + chunk), f"{name}: {buf + chunk!r}"
            buf += chunk

    def close(self):
        for s in self.socks.values():
            s.close()


NUM = re.compile(rb"^([tl])(\d+)$")


def mask(reply):
    """The reply with what legitimately differs replaced (see the module
    doc): a list of lines of tokens, numbers kept for the ±1 comparison."""
    lines = []
    for line in reply.split(b"\r\n"):
        if line.startswith(b"VERSION "):
            lines.append([b"VERSION", b"*"])
            continue
        tokens = line.split(b" ")
        if line.startswith(b"ME "):
            tokens = [
                b"*" if t.split(b"=")[0] in (b"la", b"cls", b"size") else t for t in tokens
            ]
        elif tokens[0] in (b"HD", b"VA", b"EN", b"NF", b"NS", b"EX"):
            tokens = [b"l*" if NUM.match(t) and t[:1] == b"l" else t for t in tokens]
        lines.append(tokens)
    return lines


def same(a, b):
    ma, mb = mask(a), mask(b)
    if len(ma) != len(mb):
        return False
    for la, lb in zip(ma, mb):
        if len(la) != len(lb):
            return False
        for ta, tb in zip(la, lb):
            if ta == tb:
                continue
            na, nb = NUM.match(ta), NUM.match(tb)
            if na and nb and na.group(1) == nb.group(1) == b"t":
                if abs(int(na.group(2)) - int(nb.group(2))) <= 1:
                    continue
                # An expiry in the past (T-1) prints as 1 minus the clock,
                # wrapped: the clocks' origins differ.
                if min(int(na.group(2)), int(nb.group(2))) >= 1 << 31:
                    continue
            ea, eb = ta.split(b"="), tb.split(b"=")
            if ea[0] == eb[0] == b"exp" and abs(int(ea[1]) - int(eb[1])) <= 1:
                continue
            return False
    return True


def check(conn, data, where=""):
    out = conn.exchange(data)
    mc, kho = out["memcached"], out["kho"]
    assert same(mc, kho), f"{where}\n  sent      {data!r}\n  memcached {mc!r}\n  kho-cache {kho!r}"
    return mc


def run_cases(cases, prefix):
    conn = Connection()
    try:
        for index, case in enumerate(cases):
            check(conn, case.replace(b"$", prefix), f"case {index}")
    finally:
        conn.close()


# Hand-written cases. "$" becomes a key prefix unique to each test, so the
# servers' earlier state does not matter (CAS values are global counters:
# both servers hand out the same ones as long as they see the same stream).

@suite.test
def basic_meta():
    run_cases([
        b"mn\r\n",
        b"mg $a v\r\n",
        b"mg $a\r\n",
        b"ms $a 2\r\nhi\r\n",
        b"mg $a v\r\n",
        b"mg $a s v f t\r\n",
        b"mg $a k v Oabc\r\n",
        b"mg $a q v\r\nmg $missing q v\r\nmg $missing v\r\n",
        b"ms $b 3 F77 T0\r\nabc\r\nmg $b f v t s\r\n",
        b"ms $b 3 q\r\nxyz\r\nms $b 3 q MX\r\nxyz\r\n",
        b"ms $c 1 k O123 q\r\n1\r\n",
        b"md $c\r\nmd $c\r\nmd $c q\r\nmd $c O9 k\r\n",
        b"mg $zz\r\nmg $zz k O1 q\r\nmg $zz k Oop\r\n",
        b"me $a\r\nme $nothing\r\n",
    ], b"bm")


@suite.test
def meta_set_modes():
    run_cases([
        b"ms $a 1 ME\r\nA\r\nms $a 1 ME\r\nB\r\nmg $a v\r\n",
        b"ms $a 1 MA\r\nC\r\nms $a 1 MP\r\nD\r\nmg $a v\r\n",
        b"ms $none 1 MA\r\nC\r\nms $none 1 MP\r\nD\r\nms $none 1 MR\r\nE\r\n",
        b"ms $a 1 MR\r\nF\r\nmg $a v\r\nms $a 1 MS\r\nG\r\nmg $a v\r\n",
        b"ms $a 1 MZ\r\nG\r\nms $a 1 Mxx\r\nG\r\n",
        b"ms $a 1 c\r\nH\r\nmg $a c\r\n",
        b"ms $a 1 C1\r\nI\r\nms $a 1 C0\r\nI\r\nms $none2 1 C5\r\nI\r\n",
        b"ms $none3 1 C5 c k\r\nI\r\nms $none3 1 ME C5 c\r\nJ\r\n",
    ], b"sm")


@suite.test
def meta_compare_and_swap():
    conn = Connection()
    try:
        p = b"cas"
        check(conn, b"ms %sa 3\r\none\r\n" % p)
        cas = check(conn, b"mg %sa c\r\n" % p).split(b" c")[1].split(b"\r\n")[0]
        check(conn, b"ms %sa 3 C%s c\r\ntwo\r\nmg %sa v c\r\n" % (p, cas, p))
        check(conn, b"ms %sa 5 C%s\r\nthree\r\n" % (p, cas))
        check(conn, b"ms %sa 1 MA C%s\r\nx\r\n" % (p, cas))
        cas = check(conn, b"mg %sa c\r\n" % p).split(b" c")[1].split(b"\r\n")[0]
        check(conn, b"ms %sa 1 MA C%s c\r\nx\r\nmg %sa v\r\n" % (p, cas, p))
        check(conn, b"md %sa C1\r\nmd %sa C%s\r\n" % (p, p, cas))
        cas = check(conn, b"mg %sa c\r\n" % p).split(b" c")[1].split(b"\r\n")[0]
        check(conn, b"md %sa C%s q\r\nmg %sa\r\n" % (p, cas, p))
        check(conn, b"set %sb 0 0 1\r\n1\r\ngets %sb\r\nmg %sb c v\r\n" % (p, p, p))
    finally:
        conn.close()


@suite.test
def stale_and_win():
    run_cases([
        b"ms $a 3 T100\r\nold\r\n",
        b"mg $a v c\r\n",
        b"md $a I T30\r\n",
        b"mg $a v c t\r\nmg $a v c t\r\nmg $a v\r\n",
        b"me $a\r\n",
        # A stale set with a lower CAS keeps the item stale.
        b"ms $a 3 C1 I\r\nnew\r\nmg $a v c\r\n",
        b"md $a I q\r\nmg $a\r\n",
        b"mg $b N30 v t c\r\nmg $b N30 v t\r\nmg $b v\r\n",
        b"ms $c 1 T10\r\nx\r\nmg $c R30 v\r\nmg $c R30 v\r\nmg $c R5 v\r\n",
        b"ms $d 1 T0\r\nx\r\nmg $d R30 v\r\n",
        b"mg $e N0 s v\r\nmg $e h l t\r\n",
        b"ms $f 1\r\nx\r\nmg $f h\r\nmg $f h\r\nmg $g u h\r\nms $g 1\r\nx\r\nmg $g u h\r\nmg $g h\r\n",
        b"mg $a T50 t\r\nmg $a t T60 t\r\n",
    ], b"st")


@suite.test
def meta_arithmetic():
    run_cases([
        b"ma $a\r\nma $a N0\r\nma $a\r\nma $a v\r\nma $a MD v\r\nma $a M- D10 v\r\n",
        b"ma $b N0 J13 v t\r\nma $b D5 v c\r\nma $b MI D1 q\r\nma $b v\r\nma $b M+ v\r\n",
        b"ma $b MX\r\nma $b Mxy\r\nma $b DX\r\nma $b Jx N0\r\n",
        b"ms $c 3\r\nabc\r\nma $c\r\nms $c 0\r\n\r\nma $c\r\n",
        b"ms $d 2\r\n99\r\nma $d v\r\n",
        b"mg $d v\r\n",
        b"ma $d MD D200 v\r\n",
        b"mg $d v\r\n",
        b"ma $e C1\r\nma $e q\r\nma $e O5 k\r\nma $e N0 q v\r\n",
        b"set $f 0 0 20\r\n18446744073709551615\r\nma $f v\r\n",
        b"ma $g N100 T20 t v\r\nma $g t\r\n",
    ], b"ar")


@suite.test
def base64_keys():
    run_cases([
        b"ms Zm9vYmFy 3 b\r\nabc\r\nmg Zm9vYmFy b v k\r\nget foobar\r\n",
        b"mg Zm9vYmFy b k c\r\nme Zm9vYmFy b\r\nme foobar\r\n",
        b"mg Zm9v b k\r\nmg Zm9 b k\r\nmg ==== b\r\nmg Z!m9v b k\r\n",
        b"md Zm9vYmFy b k q\r\nmd Zm9vYmFy b k\r\n",
        b"ma YWJj b N0 k v\r\nma YWJj b k\r\n",
        b"ms Zm9 2 b\r\nhi\r\nms $x 2 b\r\nhi\r\n",
        # A vivified item's key is not marked binary, nor an appended one's.
        b"mg YmFy b N30 k v\r\nmg YmFy b k v\r\nme YmFy b\r\n",
        b"ma Y291bnQ= b N0 k\r\nmg Y291bnQ= b k\r\n",
        b"ms YXBw b 1\r\nx\r\nms YXBw 1 b MA k\r\ny\r\nmg YXBw b k v\r\n",
        b"ms YXBw 1 b k c MP\r\nz\r\nms YXBw 1 b MS\r\nw\r\nmg YXBw b k v\r\n",
    ], b"b6")


@suite.test
def meta_errors():
    run_cases([
        b"mg\r\nms\r\nmd\r\nma\r\nme\r\nmz a\r\nmgx a\r\n",
        b"mg $a v v\r\nmg $a zz\r\nmg $a \x80\r\n",
        b"ms $a\r\nms $a x\r\nms $a -1\r\nms $a 2 T\r\nhi\r\n",
        b"ms $a 2 Fx\r\nhi\r\nms $a 2 Cx\r\nhi\r\nms $a 2 q q\r\nhi\r\n",
        b"mg $a Tx\r\nmg $a Nx\r\nmg $a Rx\r\n",
        b"md $a x\r\nmd $a q q\r\nma $a zz\r\n",
        b"mg " + b"k" * 251 + b" v\r\nms " + b"k" * 251 + b" 1\r\nx\r\n",
        b"md " + b"k" * 251 + b"\r\nma " + b"k" * 251 + b"\r\nme " + b"k" * 251 + b"\r\n",
        b"mg $a " + b" ".join(b"O%d" % i for i in range(19)) + b"\r\n",
        b"ms $a 1 " + b" ".join(b"O%d" % i for i in range(19)) + b"\r\nx\r\n",
        b"md $a " + b" ".join(b"O%d" % i for i in range(19)) + b"\r\n",
        b"mg $a O" + b"x" * 40 + b"\r\nms $a 1 O" + b"x" * 40 + b"\r\nx\r\n",
        b"md $a O" + b"x" * 40 + b"\r\nma $a N0 O" + b"x" * 40 + b"\r\n",
        b"ms $a 2\r\nhiX\r\n",
        b"ms $big 2000000 T0\r\n" + b"x" * 2000000 + b"\r\nmg $big\r\n",
        b"ms $a 1 q\r\nx\r\nms $a 2 q\r\nabc\r\n",
    ], b"er")


# More hand-written cases, one flag and reply code after another (with
# \n line ends; each is one exchange after a flush_all).

def case(name, text):
    data = text.replace("\n", "\r\n").encode("latin-1")

    def run():
        conn = Connection()
        try:
            check(conn, b"flush_all\r\n")
            check(conn, data, name)
        finally:
            conn.close()

    run.__name__ = f"case_{name}"
    suite.test(run)


case("mn", "mn\nmn\n")
case("mg_miss", "mg nokey\nmg nokey v\nmg nokey k O123\nmg nokey q\nmg nokey q k\nmg nokey k v t\n")
case("mg_hit_flags", "set a 5 0 2\nhi\nmg a\nmg a v\nmg a s v f c k t O9\nmg a h l\nmg a h\n"
     "mg a k q\nmg a v q\n")
case("mg_order", "set a 7 100 3\nabc\nmg a O1 k c f s v\nmg a f s c\nmg a t\n")
case("mg_touch", "set a 0 0 1\nx\nmg a T100 t\nmg a t\nmg a T0 t\nmg a T-1 t\nmg a\n")
case("mg_no_update", "set a 0 0 1\nx\nmg a u h\nmg a h\nmg a h\nmg a u h\n")
case("mg_vivify", "mg v1 N30 t\nmg v1 N30 t\nmg v1 v c\nmg v1 s v\nmg v2 N0 v k\nmg v2 N0 v k\n")
case("mg_recache", "set r 0 100 1\nx\nmg r R30 c\nmg r R200\nmg r R200\nmg r\n"
     "set r2 0 0 1\nx\nmg r2 R200\n")
case("mg_errors", "mg\nmg a b c\nmg a vv\nmg a v v\nmg a Tx\nmg a N\nmg a R-\nmg a !\nmg a ~\n"
     "mg a " + "O" + "x" * 40 + "\n" + "mg " + "k" * 251 + " v\nmg " + "k" * 250 + " v\n"
     "mg a 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20\n"
     "mg a v k f t c s h l u q O1 T1 N1 R1 P L\n")
case("mg_errors_on_hit", "set a 0 0 1\nx\nmg a O" + "y" * 40 + " v\nmg a v\n")
case("mg_base64", "mg Zm9v b v\nms Zm9v 3 b\nbar\nmg Zm9v b v k\nmg foo v k\nme foo\n"
     "mg Zm9 b\nmg !!!! b\nmg Zm9vYmFy b k O1\nmd Zm9v b k\nmg foo\n")
case("ms_modes", "ms m 1\na\nms m 1 ME\nb\nms m2 1 ME\nb\nmg m2 v\nms m 1 MA\nc\nmg m v\n"
     "ms m 1 MP\nd\nmg m v\nms m 1 MR\ne\nmg m v\nms nom 1 MR\ne\nms nom 1 MA\ne\n"
     "ms nom 1 MP\ne\nms m 1 MS\nf\nmg m v\nms m 1 Ms\nf\nms m 1 MSS\nf\nmg m v\n")
case("ms_flags", "ms f 2 F42 T100 k c O7\nhi\nmg f f t v\nms f 2 q\nyo\nms f 2 q MR\nyo\n"
     "ms nof 2 q MR\nyo\nms f 0\n\nmg f v s\nms f 2 F-1\nhi\nms f 2 Fx\nhi\nmg f v f\n"
     "ms f 2 F4294967296\nhi\nmg f f\n")
case("ms_cas", "ms c 1\na\nmg c c\nms c 1 C1\nb\nms c 1 C2\nb\nmg c c v\nms c 1 C999\nb\n"
     "ms none 1 C5\nb\nms c 1 C3 MR c\nz\nms c 1 C0\nq\nms c 1 C4 MA\nw\nms c 1 C1 MA\nw\n"
     "ms c 1 C9 ME\nw\nmg c v c\n")
case("ms_invalidate", "ms s 1 T100\na\nmg s c\nms s 1 C1 I\nb\nmg s v c t\nms s 1 C0 I\nc\n"
     "mg s v c\nmd s I T30\nmg s c t v\nmg s c v\nms s 1 C2 I\nd\nmg s v c\nmg s v c\n"
     "ms s 1 I\ne\nmg s v\n")
case("ms_errors", "ms\nms a\nms a x\nhi\nms a -1\nms a 2 Mx\nhi\nmg a\nms a 2 MAA\nhi\n"
     "ms a 2 !\nhi\nms a 2 O" + "z" * 40 + "\nhi\nms a 2 C-\nhi\nms a 2 v v\nhi\nmg a\n"
     "ms a 2\nhello\nmg a v\nms " + "k" * 251 + " 2\nhi\n"
     "ms a 2 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18\nhi\n")
case("ms_too_large", "set big 0 0 1\nx\nms big 2000000 T0\n" + "x" * 2000000 + "\nmg big v\n"
     "ms big 1048400\n" + "y" * 1048400 + "\nmg big s\n")
case("md", "set d 0 0 1\nx\nmd d\nmd d\nmd d q\nset d 0 0 1\nx\nmd d q\nmg d\n"
     "set d 0 0 1\nx\nmd d k O5 C1\nmg d c\nmd d k O5 C2\nmd d k O6\nmd nod k O6 q\n")
case("md_invalidate", "set d 0 0 1\nx\nmd d I\nmg d c v\nmg d c v\nmd d I T0 q\nmg d c v t\n"
     "ms d 1 C1 I\ny\nmg d v c\nmd nod I\n")
case("md_errors", "md\nmd a v v\nmd a !\nmd a O" + "z" * 40 + "\nmd a Tx\nmd a Cx\n"
     "md a 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19\n")
case("ma", "ma n\nset n 0 0 1\n5\nma n\nmg n v\nma n v\nma n D10 v\nma n MD v\nma n M- D100 v\n"
     "ma n MI D3 v c t k O1\nma n M+ q\nmg n v\nma n q v\nma n MD D18446744073709551615 v\n"
     "ma n D18446744073709551615 v\nma n D2 v\n")
case("ma_vivify", "ma a N0 J7 v\nma a N0 J7 v\nma b N100 J13 v t\nma c N0 v\nma d N0 q J5\n"
     "mg d v\nma e q\nma e N0 J99 q v\n")
case("ma_cas", "set n 0 0 1\n1\nma n C1 v\nmg n c\nma n C3 v c\nma n C99 v O2 k\nma z C1 v\n")
case("ma_errors", "set s 0 0 3\nabc\nma s\nma s v\nset e 0 0 0\n\nma e\nma n Mx\nma n MII\n"
     "ma n Dx\nma n J-1\nma n D-1\nma n v v\nma n !\nma n O" + "z" * 40 + "\n"
     "set n 0 0 1\n1\nma n O" + "z" * 40 + " v\nma\n")
case("ma_padding", "set p 0 0 3\n100\nma p MD D95 v\nmg p v\nma p D1 v\nincr p 1000\nmg p v s\n")
case("me", "me nokey\nset e 3 0 3\nabc\nme e\nmg e\nme e\nme\nme Zm9v b\nme !! b\n")
case("quiet_pipeline", "mg q1 q v\nmg q2 q v\nms q1 1 q\na\nmg q1 q v\nmd q2 q\nmd q1 q\n"
     "mg q1 q\nmn\n")
case("meta_and_classic", "ms a 3 F5 T0\nabc\nget a\ngets a\nappend a 0 0 1\nd\nmg a v f c\n"
     "cas a 0 0 1 99\nz\nmg a c\ntouch a 100\nmg a t\ndelete a\nmg a\n")
case("other_m_commands", "mx a\nm\nmgg a\nmG a\n")


# Generated streams: random mixes of meta and classic commands on a few
# keys, so that they interact (CAS, stale, win, arithmetic on stored values).

KEYS = [b"g%d" % i for i in range(6)]
GET_FLAGS = [b"v", b"k", b"c", b"f", b"s", b"t", b"q", b"h", b"u", b"O7", b"Oxy", b"T0",
             b"T100", b"N0", b"N50", b"R30", b"R200", b"l", b"T-1", b"b"]
SET_FLAGS = [b"c", b"k", b"q", b"F5", b"T0", b"T100", b"ME", b"MA", b"MP", b"MR", b"MS",
             b"I", b"O1"]


def random_value(rng):
    if rng.random() < 0.3:
        return b"%d" % rng.randrange(0, 1000)
    return bytes(rng.choice(b"abcxyz019") for _ in range(rng.randrange(0, 12)))


def flags(rng, pool, cas_values):
    chosen = rng.sample(pool, rng.randrange(0, 4))
    if cas_values and rng.random() < 0.3:
        chosen.append(b"C%d" % rng.choice(cas_values))
    return chosen


def command(rng, cas_values):
    key = rng.choice(KEYS)
    kind = rng.randrange(12)
    if kind <= 2:
        f = [x for x in flags(rng, GET_FLAGS, []) if x != b"b"]
        if rng.random() < 0.15:
            # The same key, base64-encoded.
            key, f = base64.b64encode(key), f + [b"b"]
        verb = b"me" if rng.random() < 0.05 else b"mg"
        return b" ".join([verb, key] + (f if verb == b"mg" else [])) + b"\r\n"
    if kind <= 4:
        value = random_value(rng)
        f = flags(rng, SET_FLAGS, cas_values)
        return b" ".join([b"ms", key, b"%d" % len(value)] + f) + b"\r\n" + value + b"\r\n"
    if kind == 5:
        # T45, not T30: an `mg ... R30` right after an `md ... I T30` met
        # the threshold exactly, and whether 30 or 29 seconds were left
        # depended on whether each server's seconds clock ticked between
        # the two commands (a W flag from one server and not the other).
        f = flags(rng, [b"q", b"I", b"T45", b"k", b"O3"], cas_values)
        return b" ".join([b"md", key] + f) + b"\r\n"
    if kind == 6:
        f = flags(rng, [b"N0", b"J5", b"D3", b"MD", b"MI", b"v", b"t", b"c", b"q", b"k"],
                  cas_values)
        return b" ".join([b"ma", key] + f) + b"\r\n"
    if kind == 7:
        value = random_value(rng)
        verb = rng.choice([b"set", b"add", b"replace", b"append", b"prepend"])
        return b"%s %s %d 0 %d\r\n%s\r\n" % (verb, key, rng.randrange(3), len(value), value)
    if kind == 8:
        return b"%s %s\r\n" % (rng.choice([b"get", b"gets"]), b" ".join(rng.sample(KEYS, 2)))
    if kind == 9:
        return b"%s %s %d\r\n" % (rng.choice([b"incr", b"decr"]), key, rng.randrange(5))
    if kind == 10:
        cas = rng.choice(cas_values) if cas_values else 1
        return b"cas %s 0 0 1 %d\r\nz\r\n" % (key, cas)
    return rng.choice([b"delete %s\r\n" % key, b"touch %s 100\r\n" % key, b"mn\r\n"])


def run_stream(seed, length):
    rng = random.Random(seed)
    conn = Connection()
    try:
        # A fresh start for the generated keys on both servers.
        check(conn, b"".join(b"md %s q\r\n" % k for k in KEYS))
        cas_values = []
        for step in range(length):
            data = command(rng, cas_values)
            reply = check(conn, data, f"seed {seed} step {step}")
            cas_values += [int(c) for c in re.findall(rb"(?:^| )c(\d+)", reply)]
            cas_values += [int(c) for c in re.findall(rb"VALUE \S+ \d+ \d+ (\d+)", reply)]
            cas_values = cas_values[-8:]
    finally:
        conn.close()


for seed in range(16):
    def stream(seed=seed):
        run_stream(seed, 400)
    stream.__name__ = f"generated_stream_seed_{seed}"
    suite.test(stream)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="the kho-cache binary")
    parser.add_argument("--memcached", default=MEMCACHED)
    parser.add_argument("--only", help="run only the tests whose name contains this")
    args = parser.parse_args()
    mc_port, kho_port = free_port(), free_port()
    procs = [
        start([args.memcached, "-p", str(mc_port), "-U", "0", "-l", "127.0.0.1", "-m", "64",
               "-o", "no_lru_maintainer,no_lru_crawler"]
              + (["-u", "nobody"] if os.geteuid() == 0 else []), mc_port),
        start([args.server, "-p", str(kho_port), "-m", "64"], kho_port),
    ]
    SERVERS["memcached"] = mc_port
    SERVERS["kho"] = kho_port
    try:
        status = suite.run(args.only)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    sys.exit(status)


if __name__ == "__main__":
    main()
