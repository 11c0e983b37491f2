#!/usr/bin/env python3
"""The demo's memcached client: load keys, verify them, probe during an upgrade."""
import argparse
import signal
import socket
import sys
import time

from pymemcache.client.base import Client


def key(i):
    return f"demo:{i}"


def value(i):
    return f"value-{i}-".encode() * 4


def load(args):
    c = Client(("127.0.0.1", args.port))
    batch = {}
    start = time.monotonic()
    for i in range(args.items):
        batch[key(i)] = value(i)
        if len(batch) == 1000:
            c.set_many(batch, noreply=False)
            batch = {}
    if batch:
        c.set_many(batch, noreply=False)
    items = int(c.stats()[b"curr_items"])
    print(f"loaded {args.items} keys in {time.monotonic() - start:.1f} s; the server holds {items} items")


def verify(args):
    c = Client(("127.0.0.1", args.port))
    present = 0
    keys = [key(i) for i in range(args.items)]
    for start in range(0, len(keys), 1000):
        got = c.get_many(keys[start:start + 1000])
        present += sum(1 for k, v in got.items() if v == value(int(k.split(":")[1])))
    lost = args.items - present
    if args.expect_lost:
        print(f"cold restart: {present} of {args.items} keys left, {lost} lost")
        return 0
    print(f"{present} of {args.items} keys present with their values, {lost} lost")
    return 0 if lost == 0 else 1


def probe(args):
    """Asks for one key in a loop on fresh connections; reports the longest
    gap between two answers and any refused connection."""
    stop = False

    def on_int(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_int)
    last = None
    longest = 0.0
    answers = refused = errors = 0
    open(args.out + ".ready", "w").write("1")
    while not stop:
        try:
            s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
            s.sendall(f"get {key(0)}\r\n".encode())
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            s.close()
            now = time.monotonic()
            if last is not None:
                longest = max(longest, now - last)
            last = now
            answers += 1
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            errors += 1
    with open(args.out, "w") as f:
        f.write(f"client's view: {answers} answers, longest gap between two answers "
                f"{longest * 1000:.1f} ms, {refused} refused connections, {errors} retried requests\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("verb", choices=["load", "verify", "probe"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--items", type=int, default=100000)
    p.add_argument("--out")
    p.add_argument("--expect-lost", action="store_true")
    args = p.parse_args()
    sys.exit({"load": load, "verify": verify, "probe": probe}[args.verb](args) or 0)


if __name__ == "__main__":
    main()
