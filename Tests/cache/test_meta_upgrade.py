#!/usr/bin/env python3
"""The meta protocol's item state survives `kho exec`, in place and
overlapped: CAS values, client flags, TTLs, the fetched bit (`mg h`), the
stale bit and the win token (`X`, `Z`, `W`), base64 keys (`b`) and
counters made by `ma`.

The state is built with meta commands, read back with `mg ... u` (which
changes nothing) before and after each upgrade, and the replies must be
the same, except that a TTL may have gone down by the seconds the upgrade
took. Uses test_upgrade.py's Service (a kho-cache with a FUSE control
mount, upgraded with the `kho` binary). Prints `N passed, M failed` last.
"""
import os
import re
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_upgrade  # noqa: E402
from harness import Suite  # noqa: E402

suite = Suite()

# Each entry builds one kind of state; READS reads all of it back.
SETUP = [
    b"ms plain 5 F42 T1000\r\nhello\r\n",
    b"ms never 3 T0\r\nabc\r\n",
    b"ms fetched 1\r\nx\r\nmg fetched\r\n",
    b"ms stale 3 T1000\r\nold\r\nmd stale I T900\r\nmg stale\r\n",
    # Stale, its win not yet taken: read only after the upgrade (the read takes it).
    b"ms untaken 3 T1000\r\nold\r\nmd untaken I\r\n",
    b"ms won 3 T1000\r\nold\r\nmd won I\r\nmg won\r\n",
    b"mg vivified N500\r\n",
    b"ms Zm9vYmFy 3 b\r\nbin\r\n",
    b"ma counter N0 J41\r\nma counter\r\n",
]
READS = [
    b"mg plain u v c f t h k\r\n",
    b"mg never u v c t h\r\n",
    b"mg fetched u c h\r\n",
    b"mg stale u v c t h\r\n",
    b"mg won u v c h\r\n",
    b"mg vivified u v c t\r\n",
    b"mg Zm9vYmFy b u v k c\r\n",
    b"mg counter u v c\r\n",
]


def exchange(port, data):
    """Sends `data` and an `mn`; returns the replies before `MN`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data + b"mn\r\n")
        buf = b""
        while not buf.endswith(b"MN\r\n"):
            chunk = s.recv(1 << 16)
            assert chunk, f"closed after {data!r}: {buf!r}"
            buf += chunk
        return buf[:-4]


TTL = re.compile(rb" t(\d+)")


def assert_same_state(before, after, elapsed_bound, what):
    for read, old, new in zip(READS, before, after):
        old_ttls = [int(t) for t in TTL.findall(old)]
        new_ttls = [int(t) for t in TTL.findall(new)]
        assert TTL.sub(b" t*", old) == TTL.sub(b" t*", new), (
            f"{what}: {read!r}\n  before {old!r}\n  after  {new!r}")
        for o, n in zip(old_ttls, new_ttls):
            assert o - elapsed_bound <= n <= o, f"{what}: TTL {o} became {n} ({read!r})"


def survives(overlapped):
    svc = test_upgrade.Service("meta").start()
    try:
        for data in SETUP:
            exchange(svc.port, data)
        before = [exchange(svc.port, r) for r in READS]
        # The state asked for is there before the upgrade.
        assert b" Z X" in before[3] and b"t9" in before[3], before[3]
        assert b" Z" in before[4] and b" X" in before[4], before[4]
        assert b"h1" in before[2] and b" k" + b"Zm9vYmFy b" in before[6], before
        assert before[7].endswith(b"\r\n42\r\n"), before[7]
        for round in range(2):
            svc.upgrade(overlapped=overlapped)
            after = [exchange(svc.port, r) for r in READS]
            # The cache clock runs only while an image runs, so an upgrade
            # costs a TTL at most the few seconds the test itself took.
            assert_same_state(before, after, 30, f"upgrade {round + 1}")
            if round == 0:
                untaken = exchange(svc.port, b"mg untaken v\r\n")
                assert untaken == b"VA 3 X W\r\nold\r\n", untaken
        # And it goes on working as memcached: the next fetch of a stale
        # item after its winner is still Z, a new md I frees the token.
        assert b" Z" in exchange(svc.port, b"mg won u\r\n")
        exchange(svc.port, b"md won I\r\n")
        assert b" W" in exchange(svc.port, b"mg won\r\n")
    finally:
        svc.stop()


@suite.test
def meta_state_survives_in_place_upgrades():
    survives(overlapped=False)


@suite.test
def meta_state_survives_overlapped_upgrades():
    survives(overlapped=True)


def main():
    return test_upgrade.run_suite(suite, __doc__)


if __name__ == "__main__":
    sys.exit(main())
