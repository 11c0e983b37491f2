#!/usr/bin/env python3
"""Bad handovers: the next image refuses what it cannot trust, starts empty
(or drops only what is damaged), and serves. Never a crash, a hang, or a
value that was not stored for its key.

Each upgrade goes through Tests/cache/tamper_successor.py, which runs where
the next image runs, changes what it was handed, then execs the real
kho-cache (`kho exec M -- tamper_successor.py ACTIONS -- kho-cache ARGS`):

  downgrade_and_newer_format  the store node says an older (0) or a newer
                              (99) format-version: the next image logs the
                              refusal, starts empty, serves, and its next
                              ordinary upgrade keeps everything (in place
                              and overlapped)
  bad_named_fds               KHO_FDS malformed, empty, naming a closed or a
                              wrong fd, KHO_CONTROL_FUSE malformed or unset:
                              the store is kept where it can be, the
                              listener found again by its address, the
                              control mount made anew and answering
  damaged_store               the store region damaged in many ways (random
                              words and bytes, bucket heads outside the
                              region, self-referencing and cyclic chains,
                              huge value and key lengths, bad class ids, LRU
                              and free-list links, a clock of 2^40, counters):
                              after each upgrade the server answers, every
                              value it returns is the one stored for that
                              key, and sets, deletes and an evicting fill
                              work

  injected_system_call_failures
                              KHO_FAULT_SYSCALL fails the handover's own
                              system calls once (execve in place; posix_spawn
                              and the commit's sendmsg overlapped): `kho
                              exec` fails naming the call and its errno, the
                              old image serves every key, and the next
                              upgrade succeeds

Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import os
import random
import sys
import time

from harness import Suite
import test_upgrade
from test_upgrade import Service

HERE = os.path.dirname(os.path.abspath(__file__))
TAMPER = os.path.join(HERE, "tamper_successor.py")
SUITE = Suite()
test = SUITE.test


def tampered_upgrade(svc, actions, overlapped=False, expect_remount=False):
    """Upgrades through the tamper successor; returns kho exec's output."""
    argv = [sys.executable, TAMPER, *actions, "--", *svc.argv]
    rc, out, err = svc.kho_exec(argv, overlapped=overlapped)
    assert rc == 0, f"kho exec through {actions} failed ({rc}):\n{out}{err}\n{svc.log_tail()}"
    if expect_remount:
        assert "mounted the control files anew" in out, out
    return out


def value_for(key, size):
    rng = random.Random(key)
    return bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)


def populate(svc, count=1500, prefix="k"):
    """Stores `count` keys of varied sizes (small to 200 KiB); returns the model."""
    c = svc.client()
    model = {}
    try:
        sizes = [10, 100, 1000, 5000, 40000, 200000]
        for i in range(count):
            key = f"{prefix}-{i}"
            value = value_for(key, sizes[i % len(sizes)] + i % 13)[: sizes[i % len(sizes)] + i % 13]
            assert c.set(key, value, flags=i % 7) is True
            model[key] = (value, i % 7)
    finally:
        c.close()
    return model


def check_model(svc, model):
    """Every key answers a miss or exactly what was stored; misses are dropped
    from the model (a dropped item stays gone). Returns (hits, misses)."""
    c = svc.client()
    hits = misses = 0
    try:
        keys = list(model)
        for start in range(0, len(keys), 50):
            batch = keys[start:start + 50]
            got = c.get_many(batch)
            for key in batch:
                if key in got:
                    assert got[key] == model[key], (
                        f"{key}: got {len(got[key][0])} bytes flags {got[key][1]}, "
                        f"stored {len(model[key][0])} bytes flags {model[key][1]}")
                    hits += 1
                else:
                    del model[key]
                    misses += 1
        # Keys never stored are misses.
        assert c.get("never-stored") is None
    finally:
        c.close()
    return hits, misses


def check_serves(svc, rounds=200):
    """Sets, gets, deletes and an evicting fill all work."""
    c = svc.client()
    try:
        for i in range(rounds):
            key = f"fresh-{i}"
            assert c.set(key, b"v%d" % i) is True
            assert c.get(key) == (b"v%d" % i, 0)
        for i in range(0, rounds, 2):
            assert c.delete(f"fresh-{i}") is True
        assert c.get("fresh-0") is None
        big = b"x" * 300000
        for i in range(300):  # 90 MB through a 64 MB cache: evicts
            assert c.set(f"fill-{i}", big) is True, f"fill {i}"
        assert c.get("fill-299") == (big, 0)
        stats = svc.stats()
        assert int(stats["curr_items"]) > 0
        return stats
    finally:
        c.close()


@test
def downgrade_and_newer_format():
    svc = Service("downgrade").start()
    try:
        for version, overlapped in ((0, False), (99, True), (0, True)):
            populate(svc, count=200, prefix=f"v{version}")
            gen = svc.generation()
            tampered_upgrade(svc, [f"format-version={version}"], overlapped=overlapped)
            assert svc.generation() == gen + 1
            stats = svc.stats()
            assert int(stats["curr_items"]) == 0, f"format {version}: {stats['curr_items']} items kept"
            relation = "older" if version == 0 else "newer"
            assert f"format-version {version} is {relation}" in svc.log_tail(60), svc.log_tail()
            # It serves, and the next ordinary upgrade keeps everything.
            model = populate(svc, count=300, prefix=f"after-{version}")
            svc.upgrade(overlapped=not overlapped)
            hits, misses = check_model(svc, model)
            assert misses == 0, f"{misses} keys lost by the upgrade after a cold start"
    finally:
        svc.stop()


@test
def bad_named_fds():
    svc = Service("fds").start()
    try:
        model = populate(svc, count=300)
        cases = [
            (["env:KHO_FDS=garbage"], True),
            (["env:KHO_FDS="], True),
            (["env:KHO_FDS=listen:1,kho-control:2"], True),
            (["env:KHO_FDS=listen:999"], True),
            (["env:KHO_CONTROL_FUSE=kho-fuse-v9:zz"], True),
            (["unset:KHO_CONTROL_FUSE"], True),
        ]
        for actions, remount in cases:
            for overlapped in (False, True):
                gen = svc.generation()
                # Overlapped, the old image answers the write itself.
                tampered_upgrade(svc, actions, overlapped=overlapped,
                                 expect_remount=remount and not overlapped)
                assert svc.generation() == gen + 1, actions
                hits, misses = check_model(svc, model)
                assert misses == 0, f"{actions}: {misses} keys lost"
                # The fresh mount hands over as usual.
                svc.upgrade(overlapped=not overlapped)
                hits, misses = check_model(svc, model)
                assert misses == 0, f"{actions}: {misses} keys lost by the next upgrade"
    finally:
        svc.stop()


DAMAGE = ["random", "random-slab", "random-bytes", "bucket-heads", "self-chain", "cycle",
          "huge-value", "key-length", "class-id", "lru-links", "free-list", "clock", "counters"]


@test
def damaged_store():
    svc = Service("damage").start()
    try:
        seeds = ARGS.damage_seeds
        for kind in DAMAGE:
            for seed in range(seeds):
                model = populate(svc, count=600, prefix=f"{kind}-{seed}")
                tampered_upgrade(svc, [f"store:{kind}:{seed}"], overlapped=seed % 2 == 1)
                hits, misses = check_model(svc, model)
                stats = check_serves(svc)
                print(f"     {kind}:{seed}: {hits} kept, {misses} dropped, "
                      f"damaged {stats.get('damaged', '?')}")
                # And the store handed over after the damage is sound: what
                # is there before the next upgrade (the fill above may make
                # some of these evict others) is all there after it.
                model = populate(svc, count=100, prefix=f"{kind}-{seed}-after")
                check_model(svc, model)
                svc.upgrade(overlapped=seed % 2 == 0)
                hits, misses = check_model(svc, model)
                assert misses == 0, f"{kind}:{seed}: {misses} keys lost by the next upgrade"
    finally:
        svc.stop()


@test
def injected_system_call_failures():
    cases = [("execve:EACCES:0:1", False, "execve"),
             ("posix_spawn:EAGAIN:0:1", True, "posix_spawn"),
             ("sendmsg:EPIPE:0:1", True, "it was gone when the commit was sent")]
    for spec, overlapped, said in cases:
        svc = Service("fault", env={"KHO_FAULT_SYSCALL": spec}).start()
        try:
            model = populate(svc, count=300)
            pid = svc.pid()
            rc, out, err = svc.kho_exec(svc.argv, overlapped=overlapped)
            assert rc != 0, f"{spec}: kho exec succeeded:\n{out}{err}"
            assert said in out + err + svc.log_tail(), (
                f"{spec}: the failure does not say {said!r}:\n{out}{err}\n{svc.log_tail()}")
            assert svc.pid() == pid, f"{spec}: another image serves after a failed handover"
            hits, misses = check_model(svc, model)
            assert misses == 0, f"{spec}: {misses} keys lost by a failed handover"
            check_serves(svc, rounds=50)
            # The fault fired once: this upgrade goes through.
            svc.upgrade(overlapped)
            hits, misses = check_model(svc, model)
            assert misses == 0, f"{spec}: {misses} keys lost after the retried upgrade"
        finally:
            svc.stop()


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--kho", required=True, help="path to the kho binary")
    parser.add_argument("--damage-seeds", type=int, default=2, help="seeds per kind of damage")
    parser.add_argument("-k", dest="only", help="run only tests whose name contains this")
    ARGS = parser.parse_args()
    test_upgrade.SERVER = os.path.abspath(ARGS.server)
    test_upgrade.KHO = os.path.abspath(ARGS.kho)
    return SUITE.run(ARGS.only)

if __name__ == "__main__":
    sys.exit(main())
