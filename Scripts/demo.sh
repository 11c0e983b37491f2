#!/usr/bin/env bash
# The main demo: a memcached-protocol cache keeps every item across an
# upgrade to its next binary, where a cold restart loses them all.
set -euo pipefail
bin=${BIN:-.build/debug}
cache=$(realpath "$bin/kho-cache")
kho=$(realpath "$bin/kho")
port=${PORT:-21211}
items=${ITEMS:-100000}
dir=$(mktemp -d)
mount="$dir/kho"
mkdir -p "$mount"
log="$dir/kho-cache.log"

cleanup() {
  pkill -TERM -f "$kho run .*-p $port" 2>/dev/null || true
  pkill -TERM -f "$cache -p $port" 2>/dev/null || true
  for _ in $(seq 50); do mountpoint -q "$mount" || break; sleep 0.1; done
  fusermount3 -u -z "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
start() {
  "$cache" -p "$port" -m 256 --kho-scratch 16M --control-mount "$mount" >>"$log" 2>&1 &
  for _ in $(seq 100); do mountpoint -q "$mount" && return; sleep 0.1; done
  echo "kho-cache did not start; its log:"; cat "$log"; exit 1
}
client() { python3 Scripts/demo_client.py --port "$port" "$@"; }

say "1. Start kho-cache (memcached protocol, items in a KHO arena) with its control mount at M"
run start
run "$kho" status "$mount"

say "2. Load $items keys with a real memcached client (pymemcache)"
run client load --items "$items"

say "3. Upgrade to the next binary while a client keeps asking (kho exec = kexec -l + kexec -e)"
python3 Scripts/demo_client.py --port "$port" probe --out "$dir/probe.txt" &
prober=$!
for _ in $(seq 100); do [ -s "$dir/probe.txt.ready" ] && break; sleep 0.05; done
run "$kho" exec "$mount" -- "$cache" -p "$port" -m 256 --kho-scratch 16M --control-mount "$mount"
kill -TERM "$prober"; wait "$prober" || true
cat "$dir/probe.txt"

say "4. Every key is there, in the next image"
run "$kho" status "$mount"
run client verify --items "$items"
run "$kho" dt decode "$mount/firmware/kho/dt"

say "5. Once more, overlapped: the next image starts beside the old one, which exits when it is ready"
run "$kho" exec "$mount" --overlapped -- "$cache" -p "$port" -m 256 --kho-scratch 16M --control-mount "$mount"
run client verify --items "$items"

say "6. A crash is survived: under kho run (the keeper of the arena and the listener), kill -9 the cache"
pkill -TERM -f "$cache -p $port"
for _ in $(seq 50); do mountpoint -q "$mount" || break; sleep 0.1; done
"$kho" run -- "$cache" -p "$port" -m 256 --kho-scratch 16M --control-mount "$mount" >>"$log" 2>&1 &
for _ in $(seq 100); do mountpoint -q "$mount" && break; sleep 0.1; done
run client load --items "$items"
serving_pid() { python3 -c "from pymemcache.client.base import Client; print(int(Client(('127.0.0.1', $port)).stats()[b'pid']))"; }
victim=$(serving_pid)
run kill -9 "$victim"
for _ in $(seq 200); do
  now=$(serving_pid 2>/dev/null || true)
  [ -n "$now" ] && [ "$now" != "$victim" ] && mountpoint -q "$mount" && break
  sleep 0.05
done
run "$kho" status "$mount"
run client verify --items "$items"
grep -E "crash boot|adopted the crashed" "$log" | tail -2

say "7. For comparison, a cold restart (stop, start again)"
pkill -TERM -f "$kho run .*-p $port"
for _ in $(seq 50); do mountpoint -q "$mount" || break; sleep 0.1; done
run start
run client verify --items "$items" --expect-lost || true
