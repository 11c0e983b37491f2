#!/usr/bin/env python3
"""Upgrade tests for kho-sessions: sessions and rate-limit counters kept
across `kho exec`, in place and overlapped.

Starts the server binary given by --server with a FUSE control mount and
upgrades it with the `kho` binary given by --kho:

  sessions_and_counters_survive_upgrades  300 sessions and 20 clients'
                          request counts, then in-place and overlapped
                          upgrades: every session reads back its user, every
                          counter is what it was (plus the reads), deleted
                          sessions stay deleted, the generation counts up.
  rate_limit_carries_across_upgrade  a client at its limit is still refused
                          (429) by the next image; others are not.
  bad_requests_answered   unknown paths, oversized bodies and a garbage
                          request line get an error status, and the server
                          goes on serving.
  connections_are_bounded  past --max-connections a connection is closed
                          unanswered; once others close, it serves again.
  sighup_upgrades_and_sigterm_unmounts  SIGHUP hands over in place to the
                          same executable, twice, sessions kept; SIGTERM
                          exits 0 and leaves no mount behind.
  sighup_during_an_upgrade_ends_nothing  SIGHUPs sent without pause while
                          `kho exec` upgrades in place, 3 times: the service
                          lives on with every session.
  twenty_upgrades_leak_nothing  20 upgrades, in place and overlapped
                          alternately: after each, one serving process
                          (every overlapped predecessor exited 0), the same
                          open fds as after the first upgrade of its kind,
                          every session kept; then SIGTERM exits 0 and
                          unmounts.
  wrk_across_upgrade      (when wrk is installed) wrk holds 32 connections
                          for --wrk-seconds while the service upgrades
                          --wrk-upgrades times, in place and overlapped
                          alternately (0: the baseline): 0 socket errors,
                          0 non-2xx, every session kept. Prints wrk's figures.

Synchronises on events (the mount appearing, a request answered); only
wrk's own run lasts a fixed time. Prints `N passed, M failed` last.
"""
import argparse
from collections import Counter
import ctypes
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cache"))
from harness import Suite, free_port, release_mount  # noqa: E402

SERVER = None
KHO = None
WRK_SECONDS = 6
WRK_UPGRADES = 2
SUITE = Suite()
test = SUITE.test


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Service:
    """One kho-sessions with its control mount in a private temp dir."""

    def __init__(self, extra=()):
        self.dir = tempfile.mkdtemp(prefix="kho-sessions-")
        self.mount = os.path.join(self.dir, "mount")
        os.mkdir(self.mount)
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "server.log")
        self.log = open(self.log_path, "ab")
        self.argv = [os.path.abspath(SERVER), "--port", str(self.port),
                     "--control-mount", self.mount, "--state-megabytes", "16", *extra]
        self.proc = None
        self.pids = set()

    def start(self, timeout=30):
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.pids.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while subprocess.run(["mountpoint", "-q", self.mount]).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.log_tail()}")
            time.sleep(0.02)
        return self

    def request(self, method, path, body=None, client="tester"):
        """(status, body text) of one request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers={"X-Client": client})
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def stats(self):
        status, text = self.request("GET", "/stats", client="stats")
        assert status == 200, status
        words = text.split()
        return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}

    def upgrade(self, overlapped=False):
        before = self.stats()["generation"]
        cmd = [KHO, "exec", self.mount] + (["--overlapped"] if overlapped else [])
        out = subprocess.run(cmd + ["--"] + self.argv, capture_output=True, text=True, timeout=60)
        if self.proc:
            self.proc.poll()
        assert out.returncode == 0, f"kho exec failed:\n{out.stdout}{out.stderr}\n{self.log_tail()}"
        m = re.search(r"handed over to generation (\d+) in ([0-9.]+) ms", out.stdout)
        assert m and int(m.group(1)) == before + 1, out.stdout
        return float(m.group(2))

    def log_tail(self, n=30):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")

    def stop(self):
        """SIGTERM to the images this service started (their command line
        names our private mount), then unmount and remove the temp dir."""
        try:
            for pid in self.serving_pids():
                os.kill(pid, signal.SIGTERM)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            release_mount(self.mount)
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def serving_pids(self):
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.mount.encode() in cmdline and b"kho-sessions" in cmdline and pid_alive(int(entry)):
                pids.append(int(entry))
        return pids


def create_sessions(svc, n):
    sessions = {}
    for i in range(n):
        user = f"user-{i}-" + "x" * (i % 40)
        status, sid = svc.request("POST", "/sessions", body=user.encode())
        assert status == 201, (status, sid)
        sessions[sid] = user
    return sessions


def check_sessions(svc, sessions):
    for sid, user in sessions.items():
        status, text = svc.request("GET", f"/sessions/{sid}")
        assert (status, text) == (200, user), (sid, status, text, user)


@test
def sessions_and_counters_survive_upgrades():
    svc = Service().start()
    try:
        sessions = create_sessions(svc, 300)
        counts = {}
        for c in range(20):
            client = f"client-{c}"
            for _ in range(c + 1):
                assert svc.request("GET", "/stats", client=client)[0] == 200
            counts[client] = c + 1
        gone = list(sessions)[:10]
        for sid in gone:
            assert svc.request("DELETE", f"/sessions/{sid}")[0] == 204
            del sessions[sid]
        for overlapped in (False, True, False):
            svc.upgrade(overlapped=overlapped)
            check_sessions(svc, sessions)
            for sid in gone:
                assert svc.request("GET", f"/sessions/{sid}")[0] == 404, sid
            for client, n in counts.items():
                status, text = svc.request("GET", f"/rate/{client}", client="reader")
                assert (status, int(text)) == (200, n), (client, text, n)
        stats = svc.stats()
        assert stats["generation"] == 3, stats
        assert stats["sessions"] == len(sessions), stats
        assert stats["damage"] == 0, stats
    finally:
        svc.stop()


@test
def rate_limit_carries_across_upgrade():
    svc = Service(extra=["--rate-limit", "5"]).start()
    try:
        for _ in range(5):
            assert svc.request("GET", "/rate/x", client="greedy")[0] == 200
        assert svc.request("GET", "/rate/x", client="greedy")[0] == 429
        svc.upgrade()
        assert svc.request("GET", "/rate/x", client="greedy")[0] == 429
        assert svc.request("GET", "/rate/x", client="modest")[0] == 200
        svc.upgrade(overlapped=True)
        assert svc.request("GET", "/rate/x", client="greedy")[0] == 429
    finally:
        svc.stop()


@test
def bad_requests_answered():
    svc = Service().start()
    try:
        assert svc.request("GET", "/nowhere")[0] == 404
        assert svc.request("GET", "/sessions/does-not-exist")[0] == 404
        assert svc.request("POST", "/sessions", body=b"x" * 100_000)[0] >= 400
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            reply = s.recv(4096)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply
        assert svc.request("GET", "/stats")[0] == 200
    finally:
        svc.stop()


@test
def connections_are_bounded():
    svc = Service(extra=["--max-connections", "4"]).start()
    try:
        held = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(4)]
        for s in held:  # each answered: all four are admitted
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200"), "held connection not served"
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as extra:
            extra.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                reply = extra.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert reply == b"", f"a fifth connection was served: {reply!r}"
        for s in held:
            s.close()
        # The server sees the closes asynchronously: retry until it admits.
        for _ in range(1000):
            try:
                if svc.request("GET", "/stats")[0] == 200:
                    break
            except (ConnectionError, http.client.HTTPException):
                continue
        else:
            raise AssertionError("not served again after the held connections closed")
    finally:
        svc.stop()


@test
def sighup_upgrades_and_sigterm_unmounts():
    svc = Service().start()
    try:
        sessions = create_sessions(svc, 50)
        # Twice: the second image, which inherited the signal ignored while
        # it booted, traps it again.
        for generation in (1, 2):
            os.kill(svc.proc.pid, signal.SIGHUP)
            # The upgrade is over when the next image answers with the next generation.
            for _ in range(100_000):
                try:
                    if svc.stats()["generation"] == generation:
                        break
                except (ConnectionError, http.client.HTTPException, AssertionError):
                    continue
            else:
                raise AssertionError(f"SIGHUP did not upgrade:\n{svc.log_tail()}")
            check_sessions(svc, sessions)
        os.kill(svc.proc.pid, signal.SIGTERM)
        assert svc.proc.wait(timeout=30) == 0, svc.log_tail()
        assert subprocess.run(["mountpoint", "-q", svc.mount]).returncode != 0, "mount left behind"
    finally:
        svc.stop()


@test
def sighup_during_an_upgrade_ends_nothing():
    svc = Service().start()
    try:
        sessions = create_sessions(svc, 20)
        for _ in range(3):
            # SIGHUP after SIGHUP while `kho exec` upgrades in place: each
            # lands in the old image (a reload, or dropped while a handover
            # runs) or in the next one while it boots (which inherited it
            # ignored). `kho exec` may lose the race to a reload; the
            # service may not die.
            kho = subprocess.Popen([KHO, "exec", svc.mount, "--"] + svc.argv,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while kho.poll() is None:
                os.kill(svc.proc.pid, signal.SIGHUP)
            assert svc.stats()["damage"] == 0
            assert svc.proc.poll() is None, f"killed by a SIGHUP:\n{svc.log_tail()}"
        check_sessions(svc, sessions)
    finally:
        svc.stop()


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on):
    """Makes this process the parent of the images an overlapped handover
    orphans, so that it can wait for each and read how it exited."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def ends(pid, timeout=30):
    """Whether `pid` (any process) ends within `timeout`: waits on its
    pidfd, never a sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def wait_exit(pid, timeout=30):
    """The exit status of `pid`, a child (or an adopted orphan)."""
    assert ends(pid, timeout), f"pid {pid} did not exit in {timeout} s"
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def describe_processes(pids):
    """Each pid's state, parent and command line, for a failure message."""
    lines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid}: {status.get('State')} ppid {status.get('PPid')}: {cmdline}")
        except OSError as e:
            lines.append(f"{pid}: {e}")
    return "\n".join(lines)


def open_fds(pid):
    """What `pid` holds open, by kind (inode numbers dropped), sorted."""
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds.append(re.sub(r"\[\d+\]", "[]", os.readlink(f"/proc/{pid}/fd/{fd}")))
        except OSError:
            continue
    return sorted(kinds)


def served_and_closed(svc, path="/stats"):
    """One request with `Connection: close`, read to the end."""
    with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Client: leak\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return reply


@test
def twenty_upgrades_leak_nothing():
    set_child_subreaper(True)
    svc = Service().start()
    try:
        sessions = create_sessions(svc, 50)
        pid = svc.proc.pid
        first = {}
        for i in range(20):
            overlapped = i % 2 == 1
            svc.upgrade(overlapped=overlapped)
            if overlapped:
                # The next image is the other one serving our mount; the old
                # one leaves as soon as it committed, with status 0.
                successors = [p for p in svc.serving_pids() if p != pid]
                assert len(successors) == 1, (pid, successors)
                status = svc.proc.wait(timeout=30) if pid == svc.proc.pid else wait_exit(pid)
                assert status == 0, f"image {pid} exited {status} after committing:\n{svc.log_tail()}"
                pid = successors[0]
            # An exec in place leaves the old address space to a helper
            # child (KHORuntime's AddressSpaceHolder, the same command line)
            # that exits once it is torn down: wait for it, and for anything
            # else, to end; what does not end is a leak.
            for other in [p for p in svc.serving_pids() if p != pid]:
                assert ends(other), (
                    f"upgrade {i + 1}: another process stays:\n{describe_processes([pid, other])}")
            assert svc.serving_pids() == [pid], describe_processes(svc.serving_pids())
            # Settled once this image serves the mount (it adopted it last).
            # Counted before any request to it: a closed connection's
            # socket stays open in the server a moment after the client
            # saw the end (NIO shuts down, then closes).
            with open(os.path.join(svc.mount, "kernel/kho/generation")) as f:
                assert int(f.read()) == i + 1
            fds = open_fds(pid)
            served_and_closed(svc)
            kind = "overlapped" if overlapped else "in place"
            first.setdefault(kind, fds)
            assert fds == first[kind], (
                f"upgrade {i + 1} ({kind}): {len(fds)} fds, {len(first[kind])} after the first:\n"
                f"now {Counter(fds) - Counter(first[kind])}, gone {Counter(first[kind]) - Counter(fds)}")
        check_sessions(svc, sessions)
        assert svc.stats()["generation"] == 20
        os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid) == 0, svc.log_tail()
        assert subprocess.run(["mountpoint", "-q", svc.mount]).returncode != 0, "mount left behind"
    finally:
        svc.stop()
        set_child_subreaper(False)


def parse_wrk(text):
    """Requests, failures (socket errors and non-2xx) and requests/s."""
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m else 0
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    p99 = re.search(r"99%\s+(\S+)", text)
    shape = f"latency avg {latency.group(1)} max {latency.group(3)}, p99 {p99.group(1) if p99 else '?'}"
    return requests, errors, non2xx, rate, shape


@test
def wrk_across_upgrade():
    if shutil.which("wrk") is None:
        print("skip wrk_across_upgrade: wrk is not installed (Scripts/deps.sh installs it)")
        return
    svc = Service().start()
    try:
        sessions = create_sessions(svc, 100)
        sid = next(iter(sessions))
        wrk = subprocess.Popen(
            ["wrk", "-t2", "-c32", "--latency", f"-d{WRK_SECONDS}s", "-H", "X-Client: wrk",
             f"http://127.0.0.1:{svc.port}/sessions/{sid}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Upgrade once wrk's requests are being served (counted for its client).
        while int(svc.request("GET", "/rate/wrk", client="watcher")[1]) < 1000:
            assert wrk.poll() is None, wrk.stdout.read()
        # Alternately in place and overlapped; 0 upgrades is the baseline.
        times = [svc.upgrade(overlapped=i % 2 == 1) for i in range(WRK_UPGRADES)]
        out, _ = wrk.communicate(timeout=WRK_SECONDS + 60)
        requests, errors, non2xx, rate, shape = parse_wrk(out)
        print(f"wrk: {requests} requests, {rate:.0f} req/s, {shape}, {errors} socket errors, "
              f"{non2xx} non-2xx, {len(times)} upgrades (ms, in place/overlapped alternately): "
              + ", ".join(f"{t:.1f}" for t in times))
        assert errors == 0 and non2xx == 0, out
        check_sessions(svc, sessions)
    finally:
        svc.stop()


def main():
    global SERVER, KHO, WRK_SECONDS, WRK_UPGRADES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--kho", required=True)
    parser.add_argument("--wrk-seconds", type=int, default=WRK_SECONDS)
    parser.add_argument("--wrk-upgrades", type=int, default=WRK_UPGRADES)
    parser.add_argument("only", nargs="?")
    args = parser.parse_args()
    SERVER, KHO, WRK_SECONDS = args.server, args.kho, args.wrk_seconds
    WRK_UPGRADES = args.wrk_upgrades
    sys.exit(SUITE.run(args.only))


if __name__ == "__main__":
    main()
