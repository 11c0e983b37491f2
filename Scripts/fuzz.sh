#!/usr/bin/env bash
# Fuzz with libFuzzer (and ASan) the parts that read bytes from peers.
#
#   Scripts/fuzz.sh [TARGET] [SECONDS | -runs=N] [more libFuzzer flags...]
#
# TARGET (default fdt):
#   fdt       the FDT reader, and the writer through round-trips
#             (Fuzz/FDTFuzz.swift; seeds: Fuzz/corpus-src/*.dts through dtc,
#             and Tests/FDTTests/Fuzz)
#   memcache  kho-cache's memcached text protocol: MemcacheHandler in an
#             EmbeddedChannel over a fresh CacheStore (Fuzz/MemcacheFuzz.swift;
#             seeds: the command streams in Fuzz/corpus-memcache, each with a
#             few read-splitting headers; dictionary Fuzz/memcache.dict)
#   fuse      the control file system's FUSE request decoding, INIT
#             negotiation and request handling over a control tree
#             (Fuzz/FUSEFuzz.swift; seeds: Fuzz/corpus-fuse)
#   all       each of them in turn, each for the given time
# SECONDS: how long each target runs (default 60); -runs=N: how many inputs.
# Other flags go to libFuzzer unchanged (-jobs=2, -only_ascii=1, a crash
# file to reproduce...).
#
# SwiftPM cannot link a libFuzzer executable (libFuzzer brings its own
# main), so:
#   fdt, fuse  swiftc -sanitize=fuzzer,address compiles the module's sources
#              with the fuzz file into one executable (for fuse, clang
#              compiles the CFUSEKernel shim first);
#   memcache   swift build -c release -Xswiftc -sanitize=fuzzer,address
#              -Xcc -fsanitize=fuzzer-no-link,address builds KHOCacheServer,
#              KHOCacheStore and swift-nio (NIOEmbedded too) into
#              .build-fuzz, then swiftc compiles Fuzz/MemcacheFuzz.swift
#              against those modules and links it with their objects.
# Binaries are rebuilt when a source is newer.
#
# Output in $FUZZ_OUT (fuzz-out/) per target: the growing corpus, seeds,
# crash artifacts, last-run.log. Fuzz/memcache_differential.py then replays
# fuzz-out/memcache/corpus against kho-cache and memcached, byte for byte. Exits non-zero if libFuzzer finds a
# crash, a leak, a timeout or an OOM in any target.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/fuzz-out}
SWIFTC=${SWIFTC:-swiftc}
SWIFT=${SWIFT:-swift}
CLANG=${CLANG:-clang}
SCRATCH=$ROOT/.build-fuzz

target=fdt
if [[ $# -gt 0 ]]; then
  case $1 in
    fdt | memcache | fuse | all) target=$1; shift ;;
  esac
fi
limit=(-max_total_time=60)
if [[ $# -gt 0 ]]; then
  case $1 in
    -runs=* | -max_total_time=*) limit=("$1"); shift ;;
    '' | *[!0-9]*) ;;
    *) limit=(-max_total_time="$1"); shift ;;
  esac
fi

# True when $1 is missing or older than any of the other arguments.
stale() {
  local bin=$1 s
  shift
  [[ -x $bin ]] || return 0
  for s in "$@"; do [[ $s -nt $bin ]] && return 0; done
  return 1
}

# Runs swiftc, hiding ASan's harmless warnings about local symbols.
swiftc_fuzz() {
  "$SWIFTC" -sanitize=fuzzer,address -parse-as-library -O -g "$@" 2>&1 |
    { grep -v "Cannot export local symbol '__asan" || true; }
  return "${PIPESTATUS[0]}"
}

build_fdt() {
  local bin=$1 sources=("$ROOT"/Sources/FDT/*.swift "$ROOT/Fuzz/FDTFuzz.swift")
  stale "$bin" "${sources[@]}" || return 0
  echo "fuzz.sh: building $bin" >&2
  swiftc_fuzz -module-name FDTFuzz "${sources[@]}" -o "$bin"
}

build_memcache() {
  local bin=$1 build=$SCRATCH/release
  stale "$bin" "$ROOT"/Sources/KHOCacheServer/*.swift "$ROOT"/Sources/KHOCacheStore/*.swift \
    "$ROOT/Fuzz/MemcacheFuzz.swift" "$ROOT/Package.swift" || return 0
  echo "fuzz.sh: building swift-nio and KHOCacheServer in $SCRATCH" >&2
  # Instrumented for coverage and ASan; libraries only, so nothing links
  # here. Not `--sanitize fuzzer --sanitize address`: SwiftPM passes them to
  # swiftc as two -sanitize= flags, and the last one alone takes effect.
  local t
  for t in KHOCacheServer NIOEmbedded; do
    "$SWIFT" build --package-path "$ROOT" --scratch-path "$SCRATCH" -c release \
      -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address \
      --target "$t" || return 1
  done
  echo "fuzz.sh: building $bin" >&2
  # The objects of every module built in the scratch folder: exactly the
  # two targets' closure, as nothing else is built there. A Swift module's
  # come from its output file map, so that the object of a source since
  # renamed or removed is not linked; C modules have no map.
  local objects=() maps=() includes=() file dir
  for dir in "$build"/*.build; do
    if [[ -f $dir/output-file-map.json ]]; then
      while IFS= read -r file; do
        if [[ -f $file ]]; then objects+=("$file"); fi
      done < <(sed -n 's/^ *"object" *: *"\(.*\)",*$/\1/p' "$dir/output-file-map.json")
    else
      while IFS= read -r -d '' file; do objects+=("$file"); done \
        < <(find "$dir" -name '*.o' -print0)
    fi
  done
  # The C modules the Swift modules import, as SwiftPM passes them.
  for file in "$build"/*.build/module.modulemap; do maps+=(-Xcc "-fmodule-map-file=$file"); done
  for file in "$SCRATCH"/checkouts/*/Sources/*/include; do includes+=(-Xcc "-I$file"); done
  swiftc_fuzz -module-name MemcacheFuzz -I "$build/Modules" "${maps[@]}" "${includes[@]}" \
    "$ROOT/Fuzz/MemcacheFuzz.swift" "${objects[@]}" -o "$bin"
}

build_fuse() {
  local bin=$1 shim=$OUT/fuse/cfuse
  # One module of KHOControlFS's and KHOSystem's sources, so that the target
  # reaches the decoder's internals; `import KHOSystem` then finds an empty
  # module of that name.
  local sources=("$ROOT"/Sources/KHOControlFS/*.swift "$ROOT"/Sources/KHOSystem/*.swift
    "$ROOT/Fuzz/FUSEFuzz.swift")
  local shims=("$ROOT"/Sources/CKHOSystem/*.c)
  stale "$bin" "${sources[@]}" "${shims[@]}" "$ROOT"/Sources/CFUSEKernel/include/*.h \
    "$ROOT"/Sources/CKHOSystem/include/*.h || return 0
  echo "fuzz.sh: building $bin" >&2
  mkdir -p "$shim"
  # The C targets as SwiftPM would present them: module maps over their headers.
  printf 'module CFUSEKernel {\n  header "%s"\n  export *\n}\nmodule CKHOSystem {\n  header "%s"\n  export *\n}\n' \
    "$ROOT/Sources/CFUSEKernel/include/CFUSEKernel.h" \
    "$ROOT/Sources/CKHOSystem/include/CKHOSystem.h" >"$shim/module.modulemap"
  local objects=() c
  for c in "${shims[@]}"; do
    "$CLANG" -fsanitize=fuzzer-no-link,address -O1 -g -c "$c" \
      -I "$ROOT/Sources/CKHOSystem/include" -o "$shim/$(basename "${c%.c}").o" || return 1
    objects+=("$shim/$(basename "${c%.c}").o")
  done
  : >"$shim/Empty.swift"
  "$SWIFTC" -emit-module -module-name KHOSystem -parse-as-library "$shim/Empty.swift" \
    -emit-module-path "$shim/KHOSystem.swiftmodule" || return 1
  swiftc_fuzz -module-name FUSEFuzz -package-name swift_kho -I "$shim" "${sources[@]}" \
    "${objects[@]}" -o "$bin"
}

seed_fdt() {
  local seeds=$1 dts
  command -v dtc >/dev/null ||
    { echo "fuzz.sh: dtc not found (apt-get install device-tree-compiler)" >&2; return 2; }
  for dts in "$ROOT"/Fuzz/corpus-src/*.dts; do
    dtc -q -I dts -O dtb -o "$seeds/$(basename "${dts%.dts}").dtb" "$dts" || return 1
  done
  if compgen -G "$ROOT/Tests/FDTTests/Fuzz/*" >/dev/null; then
    cp "$ROOT"/Tests/FDTTests/Fuzz/* "$seeds/"
  fi
}

seed_memcache() {
  # Each command stream with a few control headers (Fuzz/MemcacheFuzz.swift):
  # one read; four reads; three reads a second apart; frozen at the second
  # read then unfrozen; frozen from the start until the wait expires; an
  # hour between reads.
  local seeds=$1 stream name header i
  local headers=('\x00' '\x03\x04\x10\x00' '\x0a\x07\x20' '\x61\x01\x0f' '\x21\x00\x10' '\x19\x1f')
  for stream in "$ROOT"/Fuzz/corpus-memcache/*; do
    name=$(basename "$stream")
    for i in "${!headers[@]}"; do
      { printf "${headers[$i]}"; cat "$stream"; } >"$seeds/$name.$i"
    done
  done
  copy_regressions "$seeds" memcache
}

seed_fuse() {
  cp "$ROOT"/Fuzz/corpus-fuse/* "$1/" || return 1
  copy_regressions "$1" fuse
}

# Past findings of a target, Fuzz/regressions/TARGET-*, seed it too.
copy_regressions() {
  if compgen -G "$ROOT/Fuzz/regressions/$2-*" >/dev/null; then
    cp "$ROOT"/Fuzz/regressions/"$2"-* "$1/"
  fi
}

# Builds, seeds and runs one target; returns libFuzzer's status. (Called
# from `||` lists, where set -e does not apply: each step checks itself.)
fuzz_one() {
  local name=$1 dir=$OUT/$1
  shift
  local bin=$dir/$name-fuzz flags=()
  mkdir -p "$dir/corpus" "$dir/seeds" "$dir/artifacts"
  "build_$name" "$bin" || { echo "fuzz.sh: $name: build failed" >&2; return 1; }
  "seed_$name" "$dir/seeds" || return
  case $name in
    fdt) flags=(-dict="$ROOT/Fuzz/fdt.dict" -max_len=4096) ;;
    memcache) flags=(-dict="$ROOT/Fuzz/memcache.dict" -max_len=16384) ;;
    fuse) flags=(-dict="$ROOT/Fuzz/fuse.dict" -max_len=8192) ;;
  esac
  local log=$dir/last-run.log status
  echo "fuzz.sh: $name: ${limit[*]} $* (log: $log)" >&2
  set +e
  # Swift's own crash handler would race ASan and libFuzzer: leave crashes to them.
  SWIFT_BACKTRACE=enable=no "$bin" "$dir/corpus" "$dir/seeds" \
    "${flags[@]}" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "${limit[@]}" "$@" 2>&1 | tee "$log" |
    grep -v '^#[0-9]*.*\(NEW\|REDUCE\|pulse\)'
  status=${PIPESTATUS[0]}
  set -e
  local runs secs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if [[ $status -ne 0 ]]; then
    echo "fuzz.sh: $name: FAILED (libFuzzer exit $status) after ${runs:-?} executions; artifacts in $dir/artifacts" >&2
    return "$status"
  fi
  echo "fuzz.sh: $name: ${runs:-?} executions ran clean${secs:+ in $secs s}" >&2
}

if [[ $target != all ]]; then
  fuzz_one "$target" "$@"
  exit
fi
failed=0
for t in fdt memcache fuse; do
  fuzz_one "$t" "$@" || failed=1
done
exit "$failed"
