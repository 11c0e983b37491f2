<?php
// PHP's memcached extension (libmemcached) against one server: set, get,
// get with the CAS token, cas, delete.
// Usage: php client_memcached.php HOST PORT PREFIX; prints "ok" or exits 1 saying what failed.
[$self, $host, $port, $prefix] = $argv;
function fail($what) { fwrite(STDERR, "$what\n"); exit(1); }
$mc = new Memcached();
$mc->addServer($host, (int)$port);
$key = "$prefix:php";
$mc->set($key, "v1") or fail("set failed: " . $mc->getResultMessage());
$mc->get($key) === "v1" or fail("get did not return v1");
$got = $mc->get($key, null, Memcached::GET_EXTENDED);
is_array($got) or fail("get with GET_EXTENDED failed: " . $mc->getResultMessage());
$mc->cas($got["cas"], $key, "v2") or fail("cas with the current token failed: " . $mc->getResultMessage());
!$mc->cas($got["cas"], $key, "v3") or fail("cas with a stale token succeeded");
$mc->get($key) === "v2" or fail("value after cas is not v2");
$mc->set("$prefix:php:kept", "kept") or fail("set kept failed");
$mc->delete($key) or fail("delete failed");
$mc->get($key) === false or fail("key still there after delete");
echo "ok\n";
