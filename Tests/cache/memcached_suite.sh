#!/bin/bash
# Runs test files of memcached's own suite (t/*.t of memcached 1.6.18)
# against a server, one fresh daemon per file, through the suite's
# T_MEMD_USE_DAEMON hook (the tests connect to host:port instead of
# starting memcached-debug themselves).
#
#   Tests/cache/memcached_suite.sh SUITE_DIR [FILE...] -- SERVER [ARGS...]
#
# SUITE_DIR holds memcached's t/ directory, e.g. from a clone of
# github.com/memcached/memcached: `git archive 1.6.18 t | tar -x -C DIR`.
# The server is started with `-p PORT` appended. Prints one line per file:
# its ok and not-ok counts. Files that restart or reconfigure the daemon
# (expirations.t, flush-all.t move the clock with `debugtime` on a daemon
# of their own) fail under T_MEMD_USE_DAEMON with memcached itself too.
set -u
suite=$1
shift
files=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  files+=("$1")
  shift
done
shift
# The server's path as given, before the cd below.
server=("$(command -v "$1" | xargs realpath)" "${@:2}")
[ ${#files[@]} -gt 0 ] || files=(metaget cas getset incrdecr noreply flags getandtouch)
# The suite refuses to run without a memcached-debug binary in its
# directory, even when it never starts it.
[ -e "$suite/memcached-debug" ] || ln -s /usr/bin/memcached "$suite/memcached-debug"
cd "$suite" || exit 2
status=0
for name in "${files[@]}"; do
  port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  "${server[@]}" -p "$port" >/dev/null 2>&1 &
  pid=$!
  # Wait for the listen socket (bounded: 10 s), not a timed assertion.
  for _ in $(seq 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.02
  done
  out=$(T_MEMD_USE_DAEMON=127.0.0.1:$port timeout 300 perl -Ilib "t/$name.t" 2>&1)
  ok=$(grep -c '^ok' <<<"$out")
  bad=$(grep -c '^not ok' <<<"$out")
  echo "$name.t: $ok ok, $bad not ok"
  [ "$bad" -eq 0 ] && [ "$ok" -gt 0 ] || status=1
  kill "$pid"
  wait "$pid" 2>/dev/null
done
exit $status
