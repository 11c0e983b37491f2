#!/usr/bin/env bash
# Fuzz the FDT reader (and the writer, through round-trips) with libFuzzer.
#
#   Scripts/fuzz.sh [SECONDS | -runs=N] [more libFuzzer flags...]
#
# Default: 60 seconds. SwiftPM cannot link a libFuzzer executable (libFuzzer
# brings its own main), so the FDT sources and Fuzz/FDTFuzz.swift are
# compiled together with swiftc. Seeds: the DTS files in Fuzz/corpus-src
# (compiled with dtc) and the regression inputs in Tests/FDTTests/Fuzz.
# The growing corpus and any crash artifacts go to $FUZZ_OUT (fuzz-out/).
# Exits non-zero if libFuzzer finds a crash, a leak, a timeout or an OOM.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/fuzz-out}
SWIFTC=${SWIFTC:-swiftc}
BIN=$OUT/fdt-fuzz

limit=(-max_total_time=60)
if [[ $# -gt 0 ]]; then
  case $1 in
    -runs=* | -max_total_time=*) limit=("$1"); shift ;;
    '' | *[!0-9]*) ;;
    *) limit=(-max_total_time="$1"); shift ;;
  esac
fi

mkdir -p "$OUT/corpus" "$OUT/seeds" "$OUT/artifacts"

# Build when a source is newer than the binary.
sources=("$ROOT"/Sources/FDT/*.swift "$ROOT/Fuzz/FDTFuzz.swift")
rebuild=0
[[ -x $BIN ]] || rebuild=1
for s in "${sources[@]}"; do [[ $s -nt $BIN ]] && rebuild=1; done
if [[ $rebuild == 1 ]]; then
  echo "fuzz.sh: building $BIN" >&2
  "$SWIFTC" -sanitize=fuzzer,address -parse-as-library -O -g \
    -module-name FDTFuzz "${sources[@]}" -o "$BIN" 2>&1 |
    { grep -v "Cannot export local symbol '__asan" || true; }
  [[ ${PIPESTATUS[0]} == 0 ]] || exit 1
fi

# Seeds: every DTS under Fuzz/corpus-src as dtc's DTB, plus the regressions.
command -v dtc >/dev/null || { echo "fuzz.sh: dtc not found (apt-get install device-tree-compiler)" >&2; exit 2; }
for dts in "$ROOT"/Fuzz/corpus-src/*.dts; do
  dtc -q -I dts -O dtb -o "$OUT/seeds/$(basename "${dts%.dts}").dtb" "$dts"
done
if compgen -G "$ROOT/Tests/FDTTests/Fuzz/*" >/dev/null; then
  cp "$ROOT"/Tests/FDTTests/Fuzz/* "$OUT/seeds/"
fi

log=$OUT/last-run.log
echo "fuzz.sh: ${limit[*]} $* (log: $log)" >&2
set +e
# Swift's own crash handler would race ASan and libFuzzer: leave crashes to them.
SWIFT_BACKTRACE=enable=no "$BIN" "$OUT/corpus" "$OUT/seeds" \
  -dict="$ROOT/Fuzz/fdt.dict" -max_len=4096 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$OUT/artifacts/" "${limit[@]}" "$@" 2>&1 | tee "$log" | grep -v '^#[0-9]*.*\(NEW\|REDUCE\|pulse\)'
status=${PIPESTATUS[0]}
set -e

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
if [[ $status -ne 0 ]]; then
  echo "fuzz.sh: FAILED (libFuzzer exit $status) after ${runs:-?} executions; artifacts in $OUT/artifacts" >&2
  exit "$status"
fi
echo "fuzz.sh: ${runs:-?} executions ran clean${secs:+ in $secs s}" >&2
