#!/bin/bash
# Runs memcached's own t/*.t files against kho-cache and prints, per file,
# its exit status and how many checks failed.
#   Tests/cache/memcached-suite/run.sh MEMCACHED_SOURCE KHO_CACHE [NAME...]
# MEMCACHED_SOURCE: a memcached 1.6.18 source tree (its t/ directory is
# used; nothing is built). Each file gets 60 s (`timeout`).
set -u
source=$(cd "$1" && pwd); server=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/kho-memcached-suite.XXXXXX)
cp -r "$source/t" "$work/t"
cp "$here/memcached-debug" "$here/timedrun" "$work/"
ln -s memcached-debug "$work/memcached"
cd "$work"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=($(cd t && ls *.t | sed 's/\.t$//')); fi
for name in "${names[@]}"; do
  KHO_CACHE=$server timeout 60 perl "t/$name.t" > "$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc failed=$(grep -c '^not ok' "$name.log") $(grep -m1 -E '^1\.\.' "$name.log")"
done
echo "logs in $work"
