#!/usr/bin/env python3
"""End-to-end tests of `kho run`, the keeper without systemd, with real
processes (Tests/cli/run_child.py) speaking the notify protocol:

  fd_store_survives_crash  a memfd and a listener stored with FDSTORE=1
                           come back after kill -9 as fds 3 and 4 with
                           LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES; same bytes,
                           and the connection queued while no child ran
  fd_stored_just_before_dying
                           FDSTORE=1 then kill -9 at once, 10 times: the fd
                           is always kept (read before the child is reaped)
  crash_loop_gives_up      back-off doubles up to --restart-delay-max, the
                           start limit ends it with exit 1
  no_fd_leak_over_restarts /proc/KEEPER/fd stays the same over 20 restarts
                           that each store an fd again
  healthy_run_resets_back_off
                           a run up longer than --start-limit-interval
                           resets the delay and the start count
  ready_timeout            a child that never sends READY=1 is stopped
                           (SIGTERM, then SIGKILL after --stop-timeout),
                           restarted, and the keeper gives up
  signals_forwarded        SIGHUP reaches the child; SIGTERM reaches it, the
                           keeper exits with its status and does not restart
  mainpid_handover         MAINPID= to a grandchild that the first child
                           leaves behind: supervised (reparented to the
                           keeper), restarted when it is killed
  mainpid_not_a_child      MAINPID= to a grandchild whose parent stays: its
                           death is seen through its pidfd, and restarts
  orphans_reaped           grandchildren left behind become the keeper's
                           children and are reaped: no zombies
  hostile_datagrams        garbage, oversized, NUL, bad names, 200 fds, fds
                           without FDSTORE=1, bad MAINPID, from inside the
                           tree and from outside: the keeper survives, holds
                           only what it should, and keeps supervising
  bad_options              --restart bogus, no command, a missing command

  python3 Tests/cli/test_run.py --kho .build/debug/kho [TEST...]

Prints `N passed, M failed` last; exits non-zero on any failure.
"""
import argparse
import array
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "run_child.py")
KHO = None
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def poll(cond, what, attempts=3000, interval=0.01):
    """Waits for `cond()` to be true, at most `attempts` checks."""
    for _ in range(attempts):
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Keeper:
    """`kho run OPTIONS -- python3 run_child.py MODE WORK`, its stderr
    collected line by line."""

    def __init__(self, mode, *options):
        self.work = tempfile.mkdtemp(prefix="kho-run-test.")
        argv = [KHO, "run", *options, "--", sys.executable, CHILD, mode, self.work]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self):
        return "\n".join(self.lines)

    def wait_line(self, pattern, count=1):
        """The `count`-th log line matching `pattern` (a regex), as a match."""
        rx = re.compile(pattern)

        def found():
            hits = [m for m in (rx.search(l) for l in list(self.lines)) if m]
            return hits[count - 1] if len(hits) >= count else None

        try:
            return poll(found, f"log line /{pattern}/ #{count}")
        except AssertionError:
            raise AssertionError(f"no log line /{pattern}/ #{count}; log:\n{self.log()}")

    def count(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for l in list(self.lines) if rx.search(l))

    def file(self, name):
        return os.path.join(self.work, name)

    def wait_file(self, name):
        poll(lambda: os.path.exists(self.file(name)), name)
        return self.file(name)

    def read_json(self, name):
        with open(self.wait_file(name)) as f:
            return json.load(f)

    def touch(self, name):
        open(self.file(name), "w").close()

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def wait_exit(self):
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kho run did not exit; log:\n{self.log()}")
        self.reader.join(timeout=10)
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # A failed test may leave children behind the killed keeper: they
        # are the processes whose command line names this work directory.
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if self.work.encode() in f.read():
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.work, ignore_errors=True)


def started_pid(k, generation):
    return int(k.wait_line(rf"started (\d+) \(generation {generation}\)").group(1))


@test
def fd_store_survives_crash():
    k = Keeper("store-crash", "--restart-delay", "1")
    try:
        pid1 = started_pid(k, 1)
        k.wait_line(r"holding 2 fds: kho-arena, listen")
        k.wait_line(rf"{pid1} ready")
        k.touch("crash")
        k.wait_line(rf"{pid1} killed by signal 9 \(SIGKILL\); restarting in 1 s")
        with open(k.file("port")) as f:
            port = int(f.read())
        # The keeper holds the listener: the connection is queued by the
        # kernel while no child runs.
        c = socket.create_connection(("127.0.0.1", port), timeout=30)
        queued_while_down = k.count(r"\(generation 2\)") == 0
        c.sendall(b"hello")
        k.touch("connected")
        pid2 = started_pid(k, 2)
        assert "with 2 fds: kho-arena, listen" in k.log(), k.log()
        assert c.recv(10) == b"bye"
        c.close()
        r = k.read_json("restored.json")
        assert r["pid"] == pid2, r
        assert r["env"] == {"LISTEN_FDS": "2", "LISTEN_PID": str(pid2),
                            "LISTEN_FDNAMES": "kho-arena:listen"}, r
        assert r["arena_ok"], r
        assert r["got"] == "hello", r
        assert r["fds_at_start"] == [0, 1, 2, 3, 4, 5], r  # 5: listdir's own
        assert not r["fd3_cloexec"], r
        rc = k.wait_exit()
        assert rc == 0, f"rc {rc}\n{k.log()}"
        assert "not restarting (--restart on-failure)" in k.log()
        print(f"    (connection queued while no child ran: {queued_while_down})")
    finally:
        k.close()


@test
def fd_stored_just_before_dying():
    for _ in range(10):
        k = Keeper("store-and-die", "--restart-delay", "0.01")
        try:
            pid2 = started_pid(k, 2)
            r = k.read_json("restored.json")
            assert r["pid"] == pid2 and r["arena_ok"], r
            assert r["env"] == {"LISTEN_FDS": "1", "LISTEN_PID": str(pid2),
                                "LISTEN_FDNAMES": "kho-arena"}, r
            assert k.wait_exit() == 0, k.log()
        finally:
            k.close()


@test
def crash_loop_gives_up():
    k = Keeper("crash-now", "--restart-delay", "0.01", "--restart-delay-max", "0.04",
               "--start-limit", "6", "--start-limit-interval", "600")
    try:
        rc = k.wait_exit()
        assert rc == 1, f"rc {rc}\n{k.log()}"
        delays = re.findall(r"exited with status 3; restarting in ([0-9.]+) s", k.log())
        assert delays == ["0.01", "0.02", "0.04", "0.04", "0.04"], k.log()
        assert k.count(r"started \d+ \(generation \d+\)") == 6, k.log()
        assert "6 starts within 600 s, giving up (--start-limit 6)" in k.log(), k.log()
    finally:
        k.close()


@test
def no_fd_leak_over_restarts():
    k = Keeper("store-then-wait", "--restart-delay", "0.01", "--restart-delay-max", "0.02",
               "--start-limit", "0")
    try:
        counts = []
        for gen in range(1, 22):
            pid = started_pid(k, gen)
            k.wait_line(rf"{pid} ready")
            k.wait_line(r"holding 1 fd: arena", count=gen)
            counts.append(k.fd_count())
            os.kill(k.proc.pid, signal.SIGUSR1)  # forwarded: the child kills itself
            k.wait_line(rf"{pid} killed by signal 9", count=1)
        assert len(set(counts)) == 1, f"keeper fd counts changed over restarts: {counts}"
        pid = started_pid(k, 22)
        k.wait_line(rf"{pid} ready")
        assert k.count(r"with 1 fd: arena") == 21, k.log()
        os.kill(k.proc.pid, signal.SIGTERM)
        rc = k.wait_exit()
        assert rc == 143, f"rc {rc}\n{k.log()}"
        print(f"    (keeper fds at every ready child: {counts[0]})")
    finally:
        k.close()


@test
def healthy_run_resets_back_off():
    k = Keeper("store-then-wait", "--restart-delay", "0.01", "--restart-delay-max", "1",
               "--start-limit", "3", "--start-limit-interval", "4")
    try:
        for gen, delay in [(1, "0.01"), (2, "0.02")]:
            pid = started_pid(k, gen)
            k.wait_line(rf"{pid} ready")
            os.kill(k.proc.pid, signal.SIGUSR1)
            k.wait_line(rf"{pid} killed by signal 9 \(SIGKILL\); restarting in {delay} s")
        pid = started_pid(k, 3)
        k.wait_line(rf"{pid} ready")
        # Let the third run stay up longer than the interval (a condition on
        # the clock, not a sleep standing in for an event).
        seen = time.monotonic()
        poll(lambda: time.monotonic() - seen > 4.5, "the interval to pass", attempts=1000)
        os.kill(k.proc.pid, signal.SIGUSR1)
        k.wait_line(rf"{pid} had been up 4 s or more: back-off and start count reset")
        k.wait_line(rf"{pid} killed by signal 9 \(SIGKILL\); restarting in 0.01 s")
        # And it goes on.
        pid = started_pid(k, 4)
        k.wait_line(rf"{pid} ready")
        assert "giving up" not in k.log(), k.log()
        os.kill(k.proc.pid, signal.SIGTERM)
        assert k.wait_exit() == 143, k.log()
    finally:
        k.close()


@test
def ready_timeout():
    k = Keeper("never-ready-stubborn", "--ready-timeout", "0.2", "--stop-timeout", "0.2",
               "--restart-delay", "0.01", "--start-limit", "2")
    try:
        rc = k.wait_exit()
        assert rc == 1, f"rc {rc}\n{k.log()}"
        assert k.count(r"not ready within 0.2 s \(--ready-timeout\); sending SIGTERM") == 2, k.log()
        assert k.count(r"still running 0.2 s after SIGTERM; sending SIGKILL") == 2, k.log()
        assert k.count(r"killed by signal 9 \(SIGKILL\); restarting in 0.01 s") == 1, k.log()
        assert "giving up (--start-limit 2)" in k.log(), k.log()
    finally:
        k.close()
    # A child that does stop on SIGTERM: no SIGKILL needed.
    k = Keeper("never-ready", "--ready-timeout", "0.2", "--restart", "no")
    try:
        rc = k.wait_exit()
        assert rc == 128 + 15, f"rc {rc}\n{k.log()}"
        assert "killed by signal 15 (SIGTERM); not restarting (--restart no)" in k.log(), k.log()
        assert "SIGKILL" not in k.log(), k.log()
    finally:
        k.close()


@test
def signals_forwarded():
    k = Keeper("term-exit")
    try:
        pid = started_pid(k, 1)
        k.wait_line(rf"{pid} ready")
        os.kill(k.proc.pid, signal.SIGHUP)
        k.wait_file("got-sighup")
        assert k.proc.poll() is None
        os.kill(k.proc.pid, signal.SIGTERM)
        rc = k.wait_exit()
        assert os.path.exists(k.file("got-sigterm"))
        assert rc == 7, f"rc {rc}\n{k.log()}"
        assert f"{pid} exited with status 7 (stopped by SIGTERM)" in k.log(), k.log()
        assert k.count(r"generation 2") == 0, k.log()
    finally:
        k.close()
    # SIGINT also stops it; the child dies of it: 128 + 2.
    k = Keeper("ready-then-wait")
    try:
        pid = started_pid(k, 1)
        k.wait_line(rf"{pid} ready")
        os.kill(k.proc.pid, signal.SIGINT)
        rc = k.wait_exit()
        assert rc == 130, f"rc {rc}\n{k.log()}"
    finally:
        k.close()


@test
def mainpid_handover():
    k = Keeper("handover", "--restart-delay", "0.01")
    try:
        pid1 = started_pid(k, 1)
        succ = int(open(k.wait_file("successor-pid")).read())
        k.wait_line(rf"main process now {succ} \(was {pid1}\)")
        k.wait_line(rf"{pid1} \(the former main process\) exited with status 0")
        k.wait_line(rf"{succ} status: successor serving")

        def ppid(pid):
            with open(f"/proc/{pid}/status") as f:
                return int(re.search(r"PPid:\s+(\d+)", f.read()).group(1))

        # Orphaned, it became the keeper's child (a subreaper), not init's.
        poll(lambda: ppid(succ) == k.proc.pid, "successor reparented to the keeper")
        assert k.proc.poll() is None and k.count(r"generation 2") == 0, k.log()
        os.kill(succ, signal.SIGKILL)
        k.wait_line(rf"{succ} killed by signal 9 \(SIGKILL\); restarting in 0.01 s")
        pid2 = started_pid(k, 2)
        assert int(open(k.wait_file("gen2-pid")).read()) == pid2
        k.wait_line(rf"{pid2} ready")
        os.kill(k.proc.pid, signal.SIGTERM)
        rc = k.wait_exit()
        assert rc == 143, f"rc {rc}\n{k.log()}"
    finally:
        k.close()


@test
def mainpid_not_a_child():
    k = Keeper("handover-stay", "--restart-delay", "0.01")
    try:
        pid1 = started_pid(k, 1)
        succ = int(open(k.wait_file("successor-pid")).read())
        k.wait_line(rf"main process now {succ} \(was {pid1}\)")
        k.wait_line(rf"{succ} status: successor serving")
        os.kill(succ, signal.SIGKILL)
        # Its parent still lives: the keeper learns of its death by its pidfd.
        k.wait_line(rf"{succ} exited \(status unknown: not a child of kho run\); restarting in 0.01 s")
        pid2 = started_pid(k, 2)
        k.wait_line(rf"{pid2} ready")
        os.kill(k.proc.pid, signal.SIGTERM)
        rc = k.wait_exit()
        assert rc == 143, f"rc {rc}\n{k.log()}"
    finally:
        k.close()


def children_of(pid):
    """{child pid: state letter} of the processes whose parent is `pid`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                text = f.read()
        except OSError:
            continue
        if int(re.search(r"PPid:\s+(\d+)", text).group(1)) == pid:
            found[int(entry)] = re.search(r"State:\s+(\S)", text).group(1)
    return found


@test
def orphans_reaped():
    k = Keeper("orphans")
    try:
        pid = started_pid(k, 1)
        k.wait_line(rf"{pid} ready")
        # The five grandchildren, orphaned, are the keeper's children now.
        poll(lambda: len(children_of(k.proc.pid)) == 6, "orphans reparented to the keeper")
        k.touch("release")
        poll(lambda: list(children_of(k.proc.pid)) == [pid], "orphans reaped (no zombies)")
        assert k.proc.poll() is None and k.count(r"generation 2") == 0, k.log()
        os.kill(k.proc.pid, signal.SIGTERM)
        assert k.wait_exit() == 143, k.log()
    finally:
        k.close()


def send_from_outside(address, payload, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([payload], anc, 0, address)
    finally:
        s.close()


def notify_socket_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    return b"\0" + env[b"NOTIFY_SOCKET"][1:]


@test
def hostile_datagrams():
    k = Keeper("hostile", "--fd-store-max", "16", "--restart-delay", "0.01")
    try:
        pid = started_pid(k, 1)
        address = notify_socket_of(pid)
        before = poll(lambda: k.fd_count(), "keeper fd count")
        # From outside the supervised tree (this test is the keeper's parent).
        devnull = os.open("/dev/null", os.O_RDONLY)
        for payload in [b"READY=1", b"MAINPID=1", b"FDSTORE=1\nFDNAME=evil", b"\xff" * 4096]:
            send_from_outside(address, payload, [devnull, devnull])
        os.close(devnull)
        k.wait_line(r"ignored a datagram from \d+, not in the supervised tree; 2 fds closed", count=4)
        assert k.fd_count() == before, k.log()
        assert k.count(rf"{pid} ready") == 0, k.log()
        # From inside: the barrage.
        k.touch("go")
        k.wait_file("hostile-done")
        # The last datagram with an fd: once it is held, all before it were read.
        k.wait_line(r"holding 1 fd: stored")
        after = k.fd_count()
        assert after == before + 1, f"keeper fds {before} -> {after}\n{k.log()}"
        assert k.proc.poll() is None
        assert "holding 2" not in k.log() and "main process now" not in k.log(), k.log()
        # Refusals are logged, but only so many.
        assert k.count(r"ignored ") <= 30, k.log()
        # Still supervising: crash it, the restart gets the stored fd.
        os.kill(k.proc.pid, signal.SIGUSR1)
        k.wait_line(rf"{pid} killed by signal 9")
        pid2 = started_pid(k, 2)
        r = k.read_json("hostile-restart.json")
        assert r["pid"] == pid2
        assert r["env"] == {"LISTEN_FDS": "1", "LISTEN_PID": str(pid2),
                            "LISTEN_FDNAMES": "stored"}, r
        k.wait_line(rf"{pid2} ready")
        os.kill(k.proc.pid, signal.SIGTERM)
        rc = k.wait_exit()
        assert rc == 143, f"rc {rc}\n{k.log()}"
    finally:
        k.close()


@test
def bad_options():
    def run(*args):
        p = subprocess.run([KHO, "run", *args], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stderr

    rc, err = run("--restart", "bogus", "--", "true")
    assert rc == 64 and "'bogus' is invalid for '--restart" in err, (rc, err)
    rc, err = run()
    assert rc == 64 and "give the command to supervise after '--'" in err, (rc, err)
    rc, err = run("--", "kho-no-such-command-anywhere")
    assert rc == 1 and "kho-no-such-command-anywhere: command not found in $PATH" in err, (rc, err)
    rc, err = run("--", "/nonexistent/kho-svc")
    assert rc == 1 and "/nonexistent/kho-svc: No such file or directory" in err, (rc, err)
    work = tempfile.mkdtemp(prefix="kho-run-test.")
    try:
        plain = os.path.join(work, "plain")
        garbage = os.path.join(work, "garbage")
        for p, mode in [(plain, 0o644), (garbage, 0o755)]:
            with open(p, "wb") as f:
                f.write(b"\x00\x01 not a program")
            os.chmod(p, mode)
        rc, err = run("--", plain)
        assert rc == 1 and "not an executable file" in err, (rc, err)
        # execve itself fails: the first start is fatal, with errno's words.
        rc, err = run("--", garbage)
        assert rc == 1 and "cannot start" in err and "Exec format error" in err, (rc, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rc, err = run("--restart-delay", "2", "--restart-delay-max", "1", "--", "true")
    assert rc == 64 and "--restart-delay-max must not be less" in err, (rc, err)
    rc, err = run("--fd-store-max", "0", "--", "true")
    assert rc == 64 and "--fd-store-max" in err, (rc, err)


def main():
    global KHO
    ap = argparse.ArgumentParser()
    ap.add_argument("--kho", default=".build/debug/kho")
    ap.add_argument("tests", nargs="*")
    args = ap.parse_args()
    KHO = os.path.abspath(args.kho)
    passed = failed = 0
    for fn in TESTS:
        if args.tests and fn.__name__ not in args.tests:
            continue
        try:
            fn()
            print(f"ok   {fn.__name__}")
            passed += 1
        except Exception:
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
            failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
