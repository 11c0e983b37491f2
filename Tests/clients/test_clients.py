#!/usr/bin/env python3
"""The memcached clients people use, against a real kho-cache, before and
after upgrades: each stores, reads, CAS-es and deletes, and what it stored
before an upgrade reads back after it.

  pymemcache, python-memcached, pylibmc (libmemcached), Perl's
  Cache::Memcached::Fast, PHP's memcached extension, nginx's memcached_pass
  serving a page straight from the cache, and the libmemcached tools
  (memccp, memccat, memcrm, memcstat, memcflush, memcexist, memctouch,
  memccapable, memcslap).

A client that is not installed is reported as skipped with the reason (the
README's `make test` installs them all through Scripts/deps.sh); it never
passes silently. Each client's round runs before the first upgrade, after an
in-place one and after an overlapped one, on the same kho-cache.

  Tests/clients/test_clients.py --server .build/debug/kho-cache --kho .build/debug/kho

Prints `N passed, M failed, K skipped` last; exits non-zero on any failure.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cache"))
import test_upgrade  # noqa: E402
from harness import free_port  # noqa: E402
from test_upgrade import Service  # noqa: E402

RESULTS = {"passed": 0, "failed": 0, "skipped": 0}


def report(status, name, detail=""):
    RESULTS[status] += 1
    word = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}[status]
    print(f"{word} {name}" + (f": {detail}" if detail else ""), flush=True)


# Each client: a function (port, tag) that stores, reads, CAS-es and
# deletes keys carrying `tag`, and leaves `keep-<client>-<tag>` stored, and
# a check (port, tag) that an earlier round's kept key is still there.


def pymemcache_round(port, tag):
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port))
    key = f"pymemcache-{tag}"
    assert c.set(key, b"one") is True
    assert c.get(key) == b"one"
    value, cas = c.gets(key)
    assert value == b"one"
    assert c.cas(key, b"two", cas) is True
    assert c.cas(key, b"three", cas) is False, "a stale CAS went through"
    assert c.get(key) == b"two"
    assert c.delete(key) is True
    assert c.get(key) is None
    assert c.set(f"keep-pymemcache-{tag}", b"kept-" + tag.encode()) is True
    c.close()


def pymemcache_check(port, tag):
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port))
    assert c.get(f"keep-pymemcache-{tag}") == b"kept-" + tag.encode()
    c.close()


def python_memcached_round(port, tag):
    import memcache
    c = memcache.Client([f"127.0.0.1:{port}"], cache_cas=True)
    key = f"pymc-{tag}"
    assert c.set(key, "one")
    assert c.gets(key) == "one"
    assert c.cas(key, "two")
    assert c.get(key) == "two"
    assert c.delete(key)
    assert c.get(key) is None
    assert c.set(f"keep-pymc-{tag}", f"kept-{tag}")
    c.disconnect_all()


def python_memcached_check(port, tag):
    import memcache
    c = memcache.Client([f"127.0.0.1:{port}"])
    assert c.get(f"keep-pymc-{tag}") == f"kept-{tag}"
    c.disconnect_all()


def pylibmc_round(port, tag):
    import pylibmc
    c = pylibmc.Client([f"127.0.0.1:{port}"], behaviors={"cas": True})
    key = f"pylibmc-{tag}"
    assert c.set(key, b"one")
    value, cas = c.gets(key)
    assert value == b"one"
    assert c.cas(key, b"two", cas)
    assert not c.cas(key, b"three", cas), "a stale CAS went through"
    assert c.get(key) == b"two"
    assert c.delete(key)
    assert c.get(key) is None
    assert c.set(f"keep-pylibmc-{tag}", b"kept-" + tag.encode())
    c.disconnect_all()


def pylibmc_check(port, tag):
    import pylibmc
    c = pylibmc.Client([f"127.0.0.1:{port}"])
    assert c.get(f"keep-pylibmc-{tag}") == b"kept-" + tag.encode()
    c.disconnect_all()


PERL = r'''
use strict; use Cache::Memcached::Fast;
my ($port, $tag, $mode) = @ARGV;
my $m = Cache::Memcached::Fast->new({servers => ["127.0.0.1:$port"]});
sub ok { my ($c, $what) = @_; die "$what\n" unless $c; }
if ($mode eq "check") { ok(($m->get("keep-perl-$tag") // "") eq "kept-$tag", "kept key"); exit 0; }
my $k = "perl-$tag";
ok($m->set($k, "one"), "set");
ok($m->get($k) eq "one", "get");
my $g = $m->gets($k); ok($g && $g->[1] eq "one", "gets");
ok($m->cas($k, $g->[0], "two"), "cas");
ok(!$m->cas($k, $g->[0], "three"), "stale cas refused");
ok($m->get($k) eq "two", "get after cas");
ok($m->delete($k), "delete");
ok(!defined $m->get($k), "gone");
ok($m->set("keep-perl-$tag", "kept-$tag"), "set kept");
'''


def perl_round(port, tag, mode="round"):
    out = subprocess.run(["perl", "-e", PERL, str(port), tag, mode], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, f"perl: {out.stderr.strip()}"


PHP = r'''
[$_, $port, $tag, $mode] = $argv;
$m = new Memcached();
$m->addServer("127.0.0.1", (int)$port);
function ok($c, $what) { if (!$c) { fwrite(STDERR, "$what\n"); exit(1); } }
if ($mode === "check") { ok($m->get("keep-php-$tag") === "kept-$tag", "kept key"); exit(0); }
$k = "php-$tag";
ok($m->set($k, "one"), "set");
ok($m->get($k) === "one", "get");
$r = $m->get($k, null, Memcached::GET_EXTENDED);
ok($r["value"] === "one", "get extended");
ok($m->cas($r["cas"], $k, "two"), "cas");
ok(!$m->cas($r["cas"], $k, "three"), "stale cas refused");
ok($m->get($k) === "two", "get after cas");
ok($m->delete($k), "delete");
ok($m->get($k) === false && $m->getResultCode() === Memcached::RES_NOTFOUND, "gone");
ok($m->set("keep-php-$tag", "kept-$tag"), "set kept");
'''


def php_round(port, tag, mode="round"):
    out = subprocess.run(["php", "-r", PHP, "--", str(port), tag, mode], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, f"php: {out.stderr.strip()} {out.stdout.strip()}"


def tools_round(port, tag, mode="round"):
    servers = f"--servers=127.0.0.1:{port}"
    run = lambda *cmd: subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if mode == "check":
        out = run("memccat", servers, f"keep-tools-{tag}")
        # memccat ends what it prints with a newline.
        assert out.returncode == 0 and out.stdout == f"kept-{tag}\n", f"memccat kept: {out}"
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"tools-{tag}")
        with open(path, "w") as f:
            f.write("payload-" + tag)
        assert run("memccp", servers, path).returncode == 0, "memccp"
        out = run("memccat", servers, f"tools-{tag}")
        assert out.returncode == 0 and out.stdout == f"payload-{tag}\n", f"memccat: {out}"
        assert run("memcexist", servers, f"tools-{tag}").returncode == 0, "memcexist"
        assert run("memctouch", servers, "--expire=0", f"tools-{tag}").returncode == 0, "memctouch"
        assert run("memcrm", servers, f"tools-{tag}").returncode == 0, "memcrm"
        assert run("memccat", servers, f"tools-{tag}").returncode != 0, "memccat after memcrm"
        keep = os.path.join(d, f"keep-tools-{tag}")
        with open(keep, "w") as f:
            f.write(f"kept-{tag}")
        assert run("memccp", servers, keep).returncode == 0, "memccp kept"
    stat = run("memcstat", servers)
    assert stat.returncode == 0 and "curr_items" in stat.stdout, f"memcstat: {stat}"
    slap = run("memcslap", servers, "--concurrency=2", "--execute-number=2000", "--test=set")
    assert slap.returncode == 0, f"memcslap: {slap.stderr}"
    slap = run("memcslap", servers, "--concurrency=2", "--execute-number=2000", "--test=get")
    assert slap.returncode == 0, f"memcslap get: {slap.stderr}"


def capable(port):
    """memccapable's ASCII tests, on a server of its own (they flush)."""
    out = subprocess.run(["memccapable", "-a", "-p", str(port), "-h", "127.0.0.1"],
                         capture_output=True, text=True, timeout=120)
    failed = [line for line in out.stdout.splitlines() if "[FAIL]" in line]
    assert out.returncode == 0 and not failed, f"memccapable: {failed or out.stderr}"


NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      set $memcached_key "$uri";
      memcached_pass 127.0.0.1:{cache};
      default_type text/html;
      error_page 404 = @miss;
    }}
    location @miss {{ return 404 "miss\\n"; }}
  }}
}}
"""


class Nginx:
    def __init__(self, cache_port):
        self.dir = tempfile.mkdtemp(prefix="kho-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port, cache=cache_port))
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        test_upgrade_wait(self.port, self.proc)

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_upgrade_wait(port, proc, timeout=20):
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("nginx did not start")
            time.sleep(0.02)


def nginx_round(nginx, port, tag):
    from pymemcache.client.base import Client
    page = f"<html><body>served from kho-cache, {tag}</body></html>".encode()
    c = Client(("127.0.0.1", port))
    assert c.set(f"/page-{tag}", page) is True
    c.close()
    status, body = nginx.get(f"/page-{tag}")
    assert status == 200 and body == page, f"nginx served {status} {body[:80]!r}"
    status, body = nginx.get(f"/absent-{tag}")
    assert status == 404, f"nginx answered {status} for a key never stored"


CLIENTS = [
    ("pymemcache", "pymemcache", pymemcache_round, pymemcache_check),
    ("python-memcached", "memcache", python_memcached_round, python_memcached_check),
    ("pylibmc", "pylibmc", pylibmc_round, pylibmc_check),
    ("Cache::Memcached::Fast (Perl)", "perl", perl_round,
     lambda p, t: perl_round(p, t, "check")),
    ("memcached extension (PHP)", "php", php_round, lambda p, t: php_round(p, t, "check")),
    ("libmemcached tools", "memccp", tools_round, lambda p, t: tools_round(p, t, "check")),
]


def available(requirement):
    if requirement in ("perl",):
        return subprocess.run(["perl", "-MCache::Memcached::Fast", "-e", "1"],
                              capture_output=True).returncode == 0, \
            "Cache::Memcached::Fast is not installed (libcache-memcached-fast-perl)"
    if requirement == "php":
        ok = shutil.which("php") and subprocess.run(
            ["php", "-r", "exit(class_exists('Memcached') ? 0 : 1);"]).returncode == 0
        return bool(ok), "php with the memcached extension is not installed (php-memcached)"
    if requirement == "memccp":
        return shutil.which("memccp") is not None, "libmemcached-tools is not installed"
    if requirement == "nginx":
        return shutil.which("nginx") is not None, "nginx is not installed"
    try:
        __import__(requirement)
        return True, ""
    except ImportError:
        return False, f"the Python module {requirement} is not installed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--kho", required=True)
    args = parser.parse_args()
    test_upgrade.SERVER = os.path.abspath(args.server)
    test_upgrade.KHO = os.path.abspath(args.kho)

    usable = []
    for name, requirement, round_, check in CLIENTS:
        ok, why = available(requirement)
        if ok:
            usable.append((name, round_, check))
        else:
            report("skipped", name, why)
    nginx_ok, nginx_why = available("nginx")
    if not nginx_ok:
        report("skipped", "nginx memcached_pass", nginx_why)

    svc = Service("clients", memory_mb=64).start()
    nginx = Nginx(svc.port) if nginx_ok else None
    try:
        stages = [("before any upgrade", None), ("after an in-place upgrade", False),
                  ("after an overlapped upgrade", True)]
        for stage, (label, overlapped) in enumerate(stages):
            if overlapped is not None:
                svc.upgrade(overlapped)
            for name, round_, check in usable:
                try:
                    for earlier in range(stage):
                        check(svc.port, f"s{earlier}")
                    round_(svc.port, f"s{stage}")
                    report("passed", f"{name}, {label}")
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    report("failed", f"{name}, {label}", f"{type(e).__name__}: {e}")
            if nginx:
                try:
                    nginx_round(nginx, svc.port, f"s{stage}")
                    report("passed", f"nginx memcached_pass, {label}")
                except Exception as e:  # noqa: BLE001
                    report("failed", f"nginx memcached_pass, {label}", f"{type(e).__name__}: {e}")
    finally:
        if nginx:
            nginx.stop()
        svc.stop()

    if available("memccp")[0]:
        own = Service("capable", memory_mb=64).start()
        try:
            capable(own.port)
            report("passed", "memccapable -a (every ASCII test)")
        except Exception as e:  # noqa: BLE001
            report("failed", "memccapable -a", str(e))
        finally:
            own.stop()
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed, {RESULTS['skipped']} skipped")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
