"""What the Python test files share: a registry of tests, the loop that runs
them and prints `N passed, M failed` last, and a free loopback port."""
import socket
import subprocess
import sys
import time
import traceback


def release_mount(mount):
    """Detaches a control mount a test service left (lazily: a caller may
    still hold a file open); fusermount3 as a user, umount as root."""
    if subprocess.run(["fusermount3", "-u", "-z", mount],
                      stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Suite:
    """`@suite.test` registers a function; `suite.run(only)` runs them in
    order (those whose name contains `only`, if given) and returns the exit
    status: 1 if any failed."""

    def __init__(self):
        self.tests = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def run(self, only=None, after=None):
        passed = failed = 0
        began = time.monotonic()
        for fn in self.tests:
            if only and only not in fn.__name__:
                continue
            t = time.monotonic()
            try:
                fn()
                passed += 1
                print(f"ok   {fn.__name__} ({time.monotonic() - t:.1f} s)")
            except Exception:
                failed += 1
                print(f"FAIL {fn.__name__} ({time.monotonic() - t:.1f} s)")
                traceback.print_exc()
            sys.stdout.flush()
        if after:
            after()
        print(f"     total {time.monotonic() - began:.1f} s")
        print(f"{passed} passed, {failed} failed")
        return 1 if failed else 0
