#!/usr/bin/env python3
"""The client matrix: real memcached clients against a real kho-cache,
before and after a live upgrade.

One kho-cache with a FUSE control mount (Tests/cache/test_upgrade.py's
Service) serves every client. Each client stores, reads, CAS-es (where it
can) and deletes through it, leaving one key behind; then `kho exec`
upgrades the server, in place and then overlapped. After each upgrade every
key left behind must still read back, a CAS unique read before it must
still swap, an nginx started before the upgrades still serves a page
stored before each one from the new image, and every client runs again on
the new image:

  pymemcache, python-memcached, pylibmc (libmemcached), Perl's
  Cache::Memcached::Fast, PHP's memcached extension, nginx's
  memcached_pass serving a page straight from the cache, and the
  libmemcached tools (memccp, memccat, memcrm, memcstat, memcflush,
  memccapable, memcslap).

A client that is not installed is reported as `skip NAME: reason` and is
counted as skipped, never as passed. Prints `N passed, M failed, K skipped`
last; exits non-zero on any failure.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cache"))
import test_upgrade  # noqa: E402  (its Service starts and upgrades kho-cache)
from harness import free_port  # noqa: E402

TOOL_TIMEOUT = 60


class Skip(Exception):
    """The client cannot run here; the message says why."""


def run(argv, **kw):
    """Runs a client program; raises with its output if it fails."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, **kw)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


def need_module(name, package):
    try:
        return __import__(name)
    except ImportError as e:
        raise Skip(f"Python module {name} not importable ({e}); install {package}")


def need_program(name, package):
    path = shutil.which(name)
    if path is None:
        raise Skip(f"{name} not on PATH; install {package}")
    return path


def raw_get(port, key):
    """The value of key read with a bare socket, or None: the oracle the
    clients' results are checked against."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"get {key}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("server closed the connection")
            data += chunk
    if data == b"END\r\n":
        return None
    header, rest = data.split(b"\r\n", 1)
    length = int(header.split()[3])
    return rest[:length]


# Each client function runs one round under `prefix` and returns the key it
# left behind with its expected value.


def client_pymemcache(port, prefix):
    base = need_module("pymemcache.client.base", "pip pymemcache")
    c = base.Client(("127.0.0.1", port), connect_timeout=10, timeout=10, default_noreply=False)
    try:
        key = f"{prefix}:pymemcache"
        assert c.set(key, b"v1")
        assert c.get(key) == b"v1"
        value, unique = c.gets(key)
        assert value == b"v1"
        assert c.cas(key, b"v2", unique) is True
        assert c.cas(key, b"v3", unique) is False, "cas with a stale unique succeeded"
        assert c.get(key) == b"v2"
        assert c.delete(key) is True
        assert c.get(key) is None
        kept = f"{prefix}:pymemcache:kept"
        assert c.set(kept, b"kept-pymemcache")
        return kept, b"kept-pymemcache"
    finally:
        c.close()


def client_python_memcached(port, prefix):
    memcache = need_module("memcache", "pip python-memcached")
    c = memcache.Client([f"127.0.0.1:{port}"], cache_cas=True, socket_timeout=10)
    try:
        key = f"{prefix}:python-memcached"
        assert c.set(key, "v1")
        assert c.gets(key) == "v1"
        assert c.cas(key, "v2"), "cas with the current unique failed"
        # python-memcached keeps the unique gets returned (keyed by the encoded
        # key), now a stale one; without one its cas would be a plain set.
        assert key.encode() in c.cas_ids, "python-memcached holds no unique"
        assert not c.cas(key, "v3"), "cas with a stale unique succeeded"
        assert c.get(key) == "v2"
        assert c.delete(key)
        assert c.get(key) is None
        kept = f"{prefix}:python-memcached:kept"
        assert c.set(kept, "kept-python-memcached")
        return kept, b"kept-python-memcached"
    finally:
        c.disconnect_all()


def client_pylibmc(port, prefix):
    pylibmc = need_module("pylibmc", "pip pylibmc (needs libmemcached-dev)")
    c = pylibmc.Client([f"127.0.0.1:{port}"], behaviors={"cas": True})
    try:
        key = f"{prefix}:pylibmc"
        assert c.set(key, b"v1")
        value, unique = c.gets(key)
        assert value == b"v1"
        assert c.cas(key, b"v2", unique)
        assert not c.cas(key, b"v3", unique), "cas with a stale unique succeeded"
        assert c.get(key) == b"v2"
        assert c.delete(key)
        assert c.get(key) is None
        kept = f"{prefix}:pylibmc:kept"
        assert c.set(kept, b"kept-pylibmc")
        return kept, b"kept-pylibmc"
    finally:
        c.disconnect_all()


def client_perl_fast(port, prefix):
    need_program("perl", "perl")
    probe = subprocess.run(["perl", "-MCache::Memcached::Fast", "-e", "1"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise Skip("Perl module Cache::Memcached::Fast missing; install libcache-memcached-fast-perl")
    out = run(["perl", os.path.join(HERE, "client_fast.pl"), f"127.0.0.1:{port}", prefix])
    assert out.strip() == "ok", out
    return f"{prefix}:perl:kept", b"kept"


def client_php_memcached(port, prefix):
    php = need_program("php", "php-cli")
    probe = subprocess.run([php, "-r", "exit(class_exists('Memcached') ? 0 : 1);"], capture_output=True)
    if probe.returncode != 0:
        raise Skip("PHP class Memcached missing; install php-memcached")
    out = run([php, os.path.join(HERE, "client_memcached.php"), "127.0.0.1", str(port), prefix])
    assert out.strip() == "ok", out
    return f"{prefix}:php:kept", b"kept"


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{http_port};
        location /page/ {{
            set $memcached_key "$uri";
            memcached_pass 127.0.0.1:{cache_port};
            default_type text/html;
        }}
    }}
}}
"""


class Nginx:
    """One nginx, not a daemon, with its own prefix and config in a temp dir,
    serving /page/X from the cache key /page/X on a free port."""

    def __init__(self, cache_port):
        binary = need_program("nginx", "nginx")
        self.work = tempfile.mkdtemp(prefix="kho-nginx-")
        self.port = free_port()
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.work, http_port=self.port, cache_port=cache_port))
        self.proc = subprocess.Popen([binary, "-p", self.work, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_listening(self.port, self.proc)
        except BaseException:
            self.stop()
            raise

    def page(self, path):
        """(status, body) of GET path."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.work, ignore_errors=True)


def client_nginx(port, prefix):
    """nginx serves /page/X straight from the cache key /page/X
    (memcached_pass), and answers 404 once the key is deleted."""
    nginx = Nginx(port)
    c = pymemcache_client(port)
    try:
        key = f"/page/{prefix}"
        page = f"<h1>served from kho-cache ({prefix})</h1>".encode()
        assert c.set(key, page)
        assert nginx.page(key) == (200, page), nginx.page(key)
        assert c.delete(key)
        status, _ = nginx.page(key)
        assert status == 404, f"nginx answered {status} for a deleted key"
        kept = f"/page/{prefix}:kept"
        assert c.set(kept, b"kept-nginx")
        return kept, b"kept-nginx"
    finally:
        c.close()
        nginx.stop()


def serves_across(nginx, mode):
    """The nginx started before the upgrades still serves the page stored
    before this one, now from the new image."""
    status, body = nginx.page("/page/across-upgrades")
    assert (status, body) == (200, b"stored before the upgrades"), \
        f"after the {mode} upgrade nginx answered {status} {body!r}"


def wait_listening(port, proc):
    """Connects until nginx accepts (it binds before serving); fails at once
    if nginx exited."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.02)


def tool(name):
    """Debian ships the libmemcached tools as memcX; others as X."""
    for candidate in (name, name[4:] if name.startswith("memc") else "memc" + name):
        path = shutil.which(candidate)
        if path:
            return path
    raise Skip(f"{name} not on PATH; install libmemcached-tools")


def client_libmemcached_tools(port, prefix):
    servers = f"--servers=127.0.0.1:{port}"
    work = tempfile.mkdtemp(prefix="kho-memcp-")
    try:
        name = f"{prefix}-file"
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(b"copied by memccp\n")
        run([tool("memccp"), servers, path])
        stored = raw_get(port, name)
        assert stored == b"copied by memccp\n", f"memccp stored {stored!r}"
        # memccat ends what it prints with a newline of its own.
        printed = run([tool("memccat"), servers, name])
        assert printed == "copied by memccp\n\n", f"memccat printed {printed!r}"
        run([tool("memcrm"), servers, name])
        assert raw_get(port, name) is None, "memcrm left the key"
        stats = run([tool("memcstat"), servers])
        assert "curr_items" in stats and "pid" in stats, f"memcstat printed {stats!r}"
        run([tool("memccapable"), "-h", "127.0.0.1", "-p", str(port), "-a"])
        run([tool("memcslap"), servers, "--concurrency=2", "--execute-number=200",
             "--test=set"])
        run([tool("memcslap"), servers, "--concurrency=2", "--execute-number=200",
             "--test=get"])
        run([tool("memcflush"), servers])
        kept = f"{prefix}-kept"
        path = os.path.join(work, kept)
        with open(path, "wb") as f:
            f.write(b"kept-tools")
        run([tool("memccp"), servers, path])
        return kept, b"kept-tools"
    finally:
        shutil.rmtree(work, ignore_errors=True)


# memcflush empties the cache, so the tools run first in each round.
CLIENTS = [
    ("libmemcached-tools", client_libmemcached_tools),
    ("pymemcache", client_pymemcache),
    ("python-memcached", client_python_memcached),
    ("pylibmc", client_pylibmc),
    ("perl Cache::Memcached::Fast", client_perl_fast),
    ("php memcached", client_php_memcached),
    ("nginx memcached_pass", client_nginx),
]


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def attempt(self, label, fn, *args):
        try:
            result = fn(*args)
        except Skip as e:
            self.skipped += 1
            print(f"skip {label}: {e}")
            return None
        except Exception as e:  # a failing client: report it and go on
            self.failed += 1
            # The failing line too: many checks are bare asserts.
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAIL {label}: {type(e).__name__}: {e}\n     at {os.path.basename(where.filename)}:"
                  f"{where.lineno}: {where.line}")
            return None
        self.passed += 1
        print(f"ok   {label}")
        sys.stdout.flush()
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="path to the kho-cache binary")
    parser.add_argument("--kho", required=True, help="path to the kho binary")
    args = parser.parse_args()
    test_upgrade.SERVER = os.path.abspath(args.server)
    test_upgrade.KHO = os.path.abspath(args.kho)
    for path in (test_upgrade.SERVER, test_upgrade.KHO):
        if not os.access(path, os.X_OK):
            print(f"not executable: {path} (build it with `swift build`)")
            return 2
    tally = Tally()
    svc = test_upgrade.Service("clients").start()
    nginx = None
    try:
        kept = run_round(tally, svc.port, "before")
        nginx = tally.attempt("nginx started before the upgrades", Nginx, svc.port)
        for mode, overlapped in (("in place", False), ("overlapped", True)):
            unique = tally.attempt(f"pymemcache gets before the {mode} upgrade", gets_unique, svc.port, mode)
            if nginx is not None:
                store_page_across(svc.port)
            tally.attempt(f"kho exec {mode}", svc.upgrade, overlapped)
            for name, (key, value) in kept.items():
                tally.attempt(f"{name}'s key survives the {mode} upgrade", check_kept, svc.port, key, value)
            if nginx is not None:
                tally.attempt(f"nginx serves a page stored before the {mode} upgrade", serves_across,
                              nginx, mode)
            if unique is not None:
                tally.attempt(f"a CAS unique from before the {mode} upgrade still swaps", cas_with,
                              svc.port, mode, unique)
            kept = run_round(tally, svc.port, f"after {mode}")
    finally:
        if nginx is not None:
            nginx.stop()
        svc.stop()
    print(f"{tally.passed} passed, {tally.failed} failed, {tally.skipped} skipped")
    return 1 if tally.failed else 0


def run_round(tally, port, phase):
    """Every client once; returns {client: (key, value)} of the keys they
    left behind."""
    kept = {}
    prefix = phase.replace(" ", "-")
    for name, fn in CLIENTS:
        left = tally.attempt(f"{name} {phase} upgrade" if phase == "before" else f"{name} {phase}",
                             fn, port, prefix)
        if left:
            kept[name] = left
    return kept


def pymemcache_client(port):
    base = need_module("pymemcache.client.base", "pip pymemcache")
    return base.Client(("127.0.0.1", port), connect_timeout=10, timeout=10, default_noreply=False)


def store_page_across(port):
    """The page the long-lived nginx must serve after the next upgrade (set
    again before each: the tools' memcflush in each round empties the cache)."""
    c = pymemcache_client(port)
    try:
        assert c.set("/page/across-upgrades", b"stored before the upgrades")
    finally:
        c.close()


def gets_unique(port, mode):
    c = pymemcache_client(port)
    try:
        key = f"cas-across:{mode.replace(' ', '-')}"
        assert c.set(key, b"old")
        value, unique = c.gets(key)
        assert value == b"old"
        return unique
    finally:
        c.close()


def cas_with(port, mode, unique):
    c = pymemcache_client(port)
    try:
        key = f"cas-across:{mode.replace(' ', '-')}"
        assert c.cas(key, b"new", unique) is True, "the unique did not survive"
        assert c.get(key) == b"new"
    finally:
        c.close()


def check_kept(port, key, value):
    got = raw_get(port, key)
    assert got == value, f"{key}: {got!r} != {value!r}"


if __name__ == "__main__":
    sys.exit(main())
