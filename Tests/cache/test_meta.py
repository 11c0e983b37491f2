#!/usr/bin/env python3
"""Differential test of kho-cache against Debian's memcached 1.6.18.

Starts /usr/bin/memcached and the kho-cache binary given by --server side
by side on free ports, sends each hand-written case and seeded random
streams of meta (mg ms md ma mn me) and classic commands to both, and
asserts byte-identical replies.

What may legitimately differ is masked, and only that (MASKS below):
seconds that depend on when each server's clock ticked (mg `t`/`l`, me
`exp=`/`la=`; `t-1`, "never expires", is kept) and me's `cls=`/`size=`
(item header sizes differ). Every stream ends with a sentinel request, so
the reader knows when all replies are in: no sleeps, no timeouts as
synchronisation.

Prints `N passed, M failed` last; exits non-zero on any failure.
    python3 Tests/cache/test_meta.py --server .build/debug/kho-cache [-k NAME]
"""
import argparse
import os
import random
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Suite, free_port  # noqa: E402

MEMCACHED = "/usr/bin/memcached"
SENTINEL = b"mg __sentinel__ Oend9sentinel\r\n"
SENTINEL_REPLY = b"EN Oend9sentinel\r\n"
MASKS = [
    (re.compile(rb"(?<= )t\d+"), b"t#"),
    (re.compile(rb"(?<= )l\d+"), b"l#"),
    (re.compile(rb"exp=-?\d+"), b"exp=#"),
    (re.compile(rb"la=\d+"), b"la=#"),
    (re.compile(rb"cls=\d+"), b"cls=#"),
    (re.compile(rb"size=\d+"), b"size=#"),
]

suite = Suite()
SERVERS = {}


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


def converse(port, data):
    """Sends `data` and the sentinel on one connection; returns every reply
    before the sentinel's."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data + SENTINEL)
        out = b""
        while not out.endswith(SENTINEL_REPLY):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"connection closed; got {out[-300:]!r}")
            out += chunk
    return out[: -len(SENTINEL_REPLY)]


def mask(reply):
    for pattern, replacement in MASKS:
        reply = pattern.sub(replacement, reply)
    return reply


def both(data):
    """The replies of memcached and kho-cache to `data`, masked."""
    return tuple(mask(converse(SERVERS[name][1], data)) for name in ("memcached", "kho-cache"))


def assert_same(data, label=""):
    expected, actual = both(data)
    if expected == actual:
        return expected
    e, a = expected.split(b"\r\n"), actual.split(b"\r\n")
    first = next((i for i in range(min(len(e), len(a))) if e[i] != a[i]), min(len(e), len(a)))
    raise AssertionError(
        f"{label} replies differ at line {first}:\n memcached: {e[first:first + 3]!r}\n"
        f" kho-cache: {a[first:first + 3]!r}\n input: {data[:2000]!r}")


def flush():
    assert_same(b"flush_all\r\n")


def case(name, text):
    """A hand-written case: `text` with \\n line ends, sent as one stream."""
    data = text.replace("\n", "\r\n").encode("latin-1")

    def run():
        flush()
        assert_same(data, name)

    run.__name__ = f"test_case_{name}"
    suite.test(run)


# Hand-written cases: every flag and reply code of each meta command.
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


# Random streams: a small key space, so that commands meet each other's items.
KEYS = [b"r%d" % i for i in range(6)]
MG_FLAGS = [b"v", b"k", b"f", b"t", b"c", b"s", b"h", b"l", b"u", b"q", b"O1", b"T0", b"T300",
            b"N0", b"N100", b"R30", b"R1000"]
MS_FLAGS = [b"F3", b"T0", b"T500", b"q", b"k", b"c", b"O2", b"I", b"ME", b"MA", b"MP", b"MR",
            b"MS", b"C1", b"C2", b"C5", b"C9", b"C20"]
MD_FLAGS = [b"q", b"k", b"O3", b"I", b"T0", b"T60", b"C3", b"C10"]
MA_FLAGS = [b"v", b"q", b"k", b"t", b"c", b"O4", b"N0", b"J3", b"D2", b"MD", b"MI", b"T0",
            b"C4", b"C12"]


def flag_set(rng, choices):
    """Up to 4 distinct flags, at most one of each first letter."""
    picked, letters = [], set()
    for flag in rng.sample(choices, rng.randint(0, 4)):
        if flag[:1] not in letters:
            letters.add(flag[:1])
            picked.append(flag)
    return picked


def random_command(rng):
    key = rng.choice(KEYS)
    kind = rng.randrange(11)
    if kind == 0:
        return b"mg " + b" ".join([key] + flag_set(rng, MG_FLAGS)) + b"\r\n"
    if kind in (1, 2):
        value = rng.choice([b"1", b"42", b"abc", b"", b"7 "])
        head = b" ".join([b"ms", key, b"%d" % len(value)] + flag_set(rng, MS_FLAGS))
        return head + b"\r\n" + value + b"\r\n"
    if kind == 3:
        return b"md " + b" ".join([key] + flag_set(rng, MD_FLAGS)) + b"\r\n"
    if kind == 4:
        return b"ma " + b" ".join([key] + flag_set(rng, MA_FLAGS)) + b"\r\n"
    if kind == 5:
        value = rng.choice([b"5", b"xy", b"123"])
        return b"set %s 1 0 %d\r\n%s\r\n" % (key, len(value), value)
    if kind == 6:
        return b"gets " + b" ".join(rng.sample(KEYS, 2)) + b"\r\n"
    if kind == 7:
        return b"incr %s %d\r\n" % (key, rng.randint(0, 9))
    if kind == 8:
        return b"cas %s 0 0 1 %d\r\nc\r\n" % (key, rng.randint(1, 30))
    if kind == 9:
        return b"me %s\r\n" % key
    return rng.choice([b"delete %s\r\n" % key, b"append %s 0 0 1\r\nz\r\n" % key, b"mn\r\n"])


def random_stream(seed):
    def run():
        rng = random.Random(seed)
        flush()
        for batch in range(20):
            data = b"".join(random_command(rng) for _ in range(25))
            assert_same(data, f"seed {seed} batch {batch}")

    run.__name__ = f"test_random_stream_{seed}"
    suite.test(run)


for seed in range(1, 9):
    random_stream(seed)


@suite.test
def test_masks_are_needed_only_for_clock_figures():
    """The masks hide nothing else: a reply without t/l/me differs when it should."""
    assert mask(b"HD c5 f3 s2\r\n") == b"HD c5 f3 s2\r\n"
    assert mask(b"HD t-1\r\n") == b"HD t-1\r\n"
    assert mask(b"HD t55 l3\r\n") == b"HD t# l#\r\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("-k", dest="only")
    args = parser.parse_args()
    mc_port, kc_port = free_port(), free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    start("memcached", [MEMCACHED, "-p", str(mc_port), "-U", "0", "-l", "127.0.0.1", "-m", "64",
                        "-t", "1", *user], mc_port)
    try:
        start("kho-cache", [os.path.abspath(args.server), "-p", str(kc_port), "-m", "64", "-t", "1"],
              kc_port)
        return suite.run(args.only)
    finally:
        for proc, _ in SERVERS.values():
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
