#!/usr/bin/env python3
"""Children for Tests/cli/test_run.py: small services that speak systemd's
notify protocol to `kho run` (NOTIFY_SOCKET, FDSTORE=1, LISTEN_FDS...).

  run_child.py MODE WORKDIR

Each writes what it saw into WORKDIR (JSON reports, marker files) and waits
for the test through marker files or signals; none sleeps to synchronise.
"""
import array
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

MODE, WORK = sys.argv[1], sys.argv[2]


def path(name):
    return os.path.join(WORK, name)


def notify_address():
    addr = os.environ["NOTIFY_SOCKET"]
    return "\0" + addr[1:] if addr.startswith("@") else addr


def send(payload, fds=()):
    """One datagram, with `fds` attached as SCM_RIGHTS."""
    if isinstance(payload, str):
        payload = payload.encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([payload], anc, 0, notify_address())
    finally:
        s.close()


def wait_file(name, attempts=20000):
    for _ in range(attempts):
        if os.path.exists(path(name)):
            return
        time.sleep(0.005)
    sys.exit(99)


def listen_env():
    return {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}


def report(name, data):
    tmp = path(name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path(name))


def write_atomic(name, text):
    """Writes `name` so that the test never reads it half-written."""
    tmp = path(name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path(name))


def open_fds():
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


def wait_forever():
    while True:
        signal.pause()


ARENA = b"kho-arena: bytes that must survive the crash\n" * 3


def store_crash():
    """First start: store a memfd and a listener, then crash when told.
    Restart: check LISTEN_*, the bytes and the queued connection."""
    env = listen_env()
    fds_at_start = open_fds()
    if env["LISTEN_FDS"] is None:
        memfd = os.memfd_create("kho-arena", 0)
        os.write(memfd, ARENA)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        write_atomic("port", str(lsock.getsockname()[1]))
        send("FDSTORE=1\nFDNAME=kho-arena", [memfd])
        send("FDSTORE=1\nFDNAME=listen", [lsock.fileno()])
        send("READY=1\nSTATUS=first generation serving")
        wait_file("crash")
        crash()
    wait_file("connected")
    n = int(env["LISTEN_FDS"])
    arena = os.pread(3, len(ARENA), 0)
    lsock = socket.socket(fileno=4)
    lsock.settimeout(30)
    conn, _ = lsock.accept()
    conn.settimeout(30)
    got = conn.recv(100)
    conn.sendall(b"bye")
    conn.close()
    report(
        "restored.json",
        {
            "env": env,
            "pid": os.getpid(),
            "n": n,
            "arena_ok": arena == ARENA,
            "got": got.decode(errors="replace"),
            "fds_at_start": fds_at_start,
            "fd3_cloexec": bool(__import__("fcntl").fcntl(3, __import__("fcntl").F_GETFD) & 1),
        },
    )
    send("READY=1")
    sys.exit(0)


def store_and_die():
    """Store an fd and die at once: the keeper must still keep it (it reads
    a dead child's datagrams before reaping it)."""
    if os.environ.get("LISTEN_FDS"):
        report("restored.json", {"env": listen_env(), "pid": os.getpid(),
                                 "arena_ok": os.pread(3, len(ARENA), 0) == ARENA})
        sys.exit(0)
    m = os.memfd_create("arena", 0)
    os.write(m, ARENA)
    send("FDSTORE=1\nFDNAME=kho-arena", [m])
    crash()


def crash_now():
    sys.exit(3)


def store_then_wait():
    """Store a memfd under one name at every start, ready, crash on SIGUSR1."""
    signal.signal(signal.SIGUSR1, lambda *_: crash())
    m = os.memfd_create("arena", 0)
    send("FDSTORE=1\nFDNAME=arena", [m])
    os.close(m)
    send("READY=1")
    wait_forever()


def ready_then_wait():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    send("READY=1")
    wait_forever()


def never_ready():
    wait_forever()


def never_ready_stubborn():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    wait_forever()


def term_exit():
    def on_hup(*_):
        open(path("got-sighup"), "w").close()

    def on_term(*_):
        open(path("got-sigterm"), "w").close()
        os._exit(7)

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    send("READY=1")
    wait_forever()


def handover():
    """Generation 1 hands over to a grandchild (MAINPID=) and exits 0; the
    grandchild serves until killed. Later generations just serve."""
    if os.path.exists(path("handed-over")):
        write_atomic("gen2-pid", str(os.getpid()))
        send("READY=1")
        wait_forever()
    open(path("handed-over"), "w").close()
    succ = subprocess.Popen([sys.executable, __file__, "successor", WORK])
    write_atomic("successor-pid", str(succ.pid))
    send(f"MAINPID={succ.pid}\nREADY=1")
    os._exit(0)


def handover_stay():
    """Generation 1 names a grandchild MAINPID= and stays alive, so the
    grandchild is never the keeper's child; later generations just serve."""
    if os.path.exists(path("handed-over")):
        send("READY=1")
        wait_forever()
    open(path("handed-over"), "w").close()
    succ = subprocess.Popen([sys.executable, __file__, "successor", WORK])
    write_atomic("successor-pid", str(succ.pid))
    send(f"MAINPID={succ.pid}\nREADY=1")
    wait_forever()  # never reaps it: a zombie the keeper cannot wait for


def orphans():
    """Leave 5 grandchildren behind (their parents exit at once): they
    become the keeper's children, and it must reap them when they exit."""
    for _ in range(5):
        mid = os.fork()
        if mid == 0:
            if os.fork() == 0:
                wait_file("release")
                os._exit(0)
            os._exit(0)
        os.waitpid(mid, 0)
    send("READY=1")
    wait_forever()


def successor():
    send("STATUS=successor serving")
    wait_forever()


def hostile():
    """From inside the tree: every kind of bad datagram, then a normal
    life (ready, crash on SIGUSR1, report LISTEN_* on the restart)."""
    signal.signal(signal.SIGUSR1, lambda *_: crash())
    if os.environ.get("LISTEN_FDS"):
        report("hostile-restart.json", {"env": listen_env(), "pid": os.getpid()})
        send("READY=1")
        wait_forever()
    wait_file("go")
    rnd = random.Random(1234)
    devnull = os.open("/dev/null", os.O_RDONLY)
    keys = [b"READY", b"RELOADING", b"STOPPING", b"STATUS", b"MAINPID", b"FDNAME",
            b"FDSTOREREMOVE", b"WATCHDOG", b"ERRNO", b"X"]
    sent = 0
    # Random bytes, NULs and newlines included, up to 4096 bytes.
    for _ in range(1000):
        send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 4097))))
        sent += 1
    # Structured fuzz: valid keys with random values, sometimes fds (never
    # with FDSTORE=1, so nothing may be kept).
    for _ in range(1000):
        lines = []
        for _ in range(rnd.randrange(1, 8)):
            k = rnd.choice(keys)
            v = rnd.choice([b"1", b"0", b"", b"-1", b"99999999999", b"a:b", b"\xff\xfe",
                            str(rnd.randrange(1, 1 << 22)).encode(), b"x" * rnd.randrange(300)])
            lines.append(k + b"=" + v)
        fds = [devnull] * rnd.choice([0, 0, 1, 3])
        send(b"\n".join(lines), fds)
        sent += 1
    # Oversized (the keeper reads at most 4096 bytes), with an fd.
    send(b"FDSTORE=1\nFDNAME=big\n" + b"x" * 8000, [devnull])
    send(b"READY=1\n" + b"y" * 5000)
    # A NUL byte, with an fd.
    send(b"FDSTORE=1\nFDNAME=nul\0", [devnull])
    # FDSTORE with an invalid name: closed.
    send(b"FDSTORE=1\nFDNAME=a:b", [devnull])
    send(b"FDSTORE=1\nFDNAME=" + b"n" * 300, [devnull])
    # Many fds in one message: more than --fd-store-max, refused and closed.
    send(b"FDSTORE=1\nFDNAME=many", [devnull] * 200)
    # fds without FDSTORE=1: closed.
    send(b"STATUS=fds without FDSTORE", [devnull] * 5)
    send(b"FDSTORE=0\nFDNAME=zero", [devnull] * 2)
    # MAINPID that is not ours, or not a pid.
    for v in [b"1", b"0", b"-5", b"abc", str(os.getppid()).encode(), str(os.getpid() + 100000).encode(), b""]:
        send(b"MAINPID=" + v)
    send(b"FDSTOREREMOVE=1\nFDNAME=nothing-here")
    # FDSTORE without a name: stored as "stored", like systemd.
    send(b"FDSTORE=1", [devnull])
    os.close(devnull)
    send("READY=1\nSTATUS=hostile done")
    open(path("hostile-done"), "w").close()
    wait_forever()


MODES = {
    "store-crash": store_crash,
    "store-and-die": store_and_die,
    "crash-now": crash_now,
    "store-then-wait": store_then_wait,
    "ready-then-wait": ready_then_wait,
    "never-ready": never_ready,
    "never-ready-stubborn": never_ready_stubborn,
    "term-exit": term_exit,
    "handover": handover,
    "handover-stay": handover_stay,
    "orphans": orphans,
    "successor": successor,
    "hostile": hostile,
}

MODES[MODE]()
