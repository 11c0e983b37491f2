#!/usr/bin/env python3
"""Replays memcache fuzz inputs against kho-cache and memcached 1.6, byte for byte.

The fuzz target checks the grammar of kho-cache's replies, not their
meaning; this script checks their meaning where a reference exists: for
each input of a corpus (the format of Fuzz/MemcacheFuzz.swift: control
header, then the command stream), both servers are started afresh (so CAS
uniques and counters start equal), the stream is sent on one connection,
and everything the server answers (until it closes or falls silent) is
compared.

Inputs whose replies may rightly differ are skipped: a freeze (memcached
has none), `stats` and meta or memcached-only commands, lines past the 2 KiB
limit (which depends on read sizes), a leading 0x80 (binary protocol), and
retrievals with keys over 250 bytes (see comparable()).
VERSION lines are normalised.

  Fuzz/memcache_differential.py --server .build/debug/kho-cache DIR... [--limit N]

Prints each input whose replies differ (with both replies), then
"N passed, N failed"; exits 1 on a difference. memcached holds its queued
replies while it waits for the rest of a data block, kho-cache does not: an
input after which memcached is still waiting agrees when memcached's
replies are a prefix of kho-cache's (counted apart, as "held").
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

MEMCACHED_ONLY = {b"mg", b"ms", b"md", b"ma", b"mn", b"me", b"lru_crawler", b"slabs", b"lru",
                  b"watch", b"cache_memlimit", b"extstore", b"misbehave", b"debugtime",
                  b"debug", b"stats", b"verbosity"}


def stream_of(data):
    """The command stream of a fuzz input, or None when it freezes or is too short."""
    if not data:
        return None
    control, index = data[0], 1
    if control & 0x20:
        return None
    index += control & 7
    return data[index:] if index <= len(data) else None


def known_difference(stream):
    """Differences found by this script and reported (Fuzz/regressions/memcache-diff-*),
    skipped so that others show: memcached ends a command line at its first NUL
    (it tokenizes a C string), kho-cache tokenizes the whole line; and
    memcached answers `bget` without a key with ERROR, kho-cache with END."""
    for line in stream.split(b"\n"):
        if b"\0" in line:
            return True
        words = [w for w in line.rstrip(b"\r").split(b" ") if w]
        if words == [b"bget"]:
            return True
    return False


def comparable(stream, skip_known=True):
    if not stream or stream[0] == 0x80:
        return False
    if skip_known and known_difference(stream):
        return False
    for line in stream.split(b"\n"):
        if len(line) > 2000:
            return False
        words = line.split(b" ")
        first = next((w for w in words if w), b"")
        if first.rstrip(b"\r") in MEMCACHED_ONLY or b"stats" in line:
            return False
        # memcached answers a retrieval with a key over 250 bytes by dropping
        # every reply not yet sent, those of earlier pipelined commands too;
        # kho-cache drops only that command's values.
        # A line ending in HTTP/... closes both; memcached drops the replies
        # of earlier pipelined commands it has not sent yet, kho-cache sends them.
        if words and words[-1].startswith(b"HTTP/"):
            return False
        if first in (b"get", b"gets", b"gat", b"gats", b"bget") and any(
                len(w.rstrip(b"\r")) > 250 for w in words):
            return False
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command):
    port = free_port()
    proc = subprocess.Popen([part.replace("PORT", str(port)) for part in command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start")
            time.sleep(0.005)


def replay(port, stream, idle=0.15):
    """Everything the server sends in answer to `stream`, until it closes
    (b"<EOF>" appended) or is silent for `idle` seconds. Not a half-close
    after the stream: memcached drops the replies it has queued when the
    client's EOF comes while it waits for a data block."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(stream)
    s.settimeout(idle)
    out = b""
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                out += b"<EOF>"
                break
            out += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        out += b"<RST>"
    s.close()
    return re.sub(rb"VERSION [^\r]*\r\n", b"VERSION x\r\n", out)


def stop(proc):
    # SIGKILL: memcached takes a second to end on SIGTERM, and nothing of
    # either server needs saving.
    proc.kill()
    proc.wait(timeout=5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--memcached", default="memcached")
    parser.add_argument("--limit", type=int, default=0, help="compare at most N inputs")
    parser.add_argument("--all", action="store_true",
                        help="compare the inputs of known differences too")
    parser.add_argument("dirs", nargs="+", help="corpus directories or files")
    args = parser.parse_args()
    kho = [args.server, "-p", "PORT", "-m", "16"]
    reference = [args.memcached, "-p", "PORT", "-U", "0", "-l", "127.0.0.1", "-m", "16",
                 "-B", "ascii"] + (["-u", "root"] if os.geteuid() == 0 else [])
    files = []
    for d in args.dirs:
        files += [os.path.join(d, f) for f in sorted(os.listdir(d))] if os.path.isdir(d) else [d]
    passed = failed = held = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                stream = stream_of(f.read())
        except FileNotFoundError:  # a live corpus: libFuzzer replaced it
            continue
        if not comparable(stream, skip_known=not args.all):
            continue
        replies = []
        for command in (kho, reference):
            proc, port = start(command)
            try:
                replies.append(replay(port, stream))
            finally:
                stop(proc)
        kho_reply, reference_reply = replies
        if kho_reply == reference_reply:
            passed += 1
        elif (kho_reply.startswith(reference_reply) and not reference_reply.endswith(b">")
              and not kho_reply.endswith(b">")):
            # memcached holds every queued reply while it waits for the rest
            # of a data block (or swallows one); kho-cache sends them at once.
            # What memcached did send agrees: not a difference.
            held += 1
        else:
            failed += 1
            print(f"DIFF {path}\n  stream    {stream[:400]!r}\n  kho-cache {replies[0][:400]!r}"
                  f"\n  memcached {replies[1][:400]!r}")
        if args.limit and passed + failed >= args.limit:
            break
    print(f"({held} more agreed as far as memcached answered before waiting for data)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
