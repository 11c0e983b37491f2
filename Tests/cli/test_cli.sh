#!/usr/bin/env bash
# End-to-end tests of `kho status|load|unload|exec` against a real service:
# kho-roundtrip --serve with a control mount (needs /dev/fuse, and root or
# fusermount3).
#
#   swift build --product kho && swift build --product kho-roundtrip
#   Tests/cli/test_cli.sh                 # binaries from .build/debug
#   KHO_BIN_DIR=.build-cli/debug Tests/cli/test_cli.sh
#
# Prints one line per check and a final `N passed, M failed`; exits 1 if a
# check failed.
set -euo pipefail

cd "$(dirname "$0")/../.."
BIN_DIR=${KHO_BIN_DIR:-.build/debug}
case "$BIN_DIR" in /*) ;; *) BIN_DIR=$PWD/$BIN_DIR ;; esac
KHO=$BIN_DIR/kho
RT=$BIN_DIR/kho-roundtrip
for b in "$KHO" "$RT"; do
  [[ -x $b ]] || { echo "missing $b (build it first)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/kho-cli-test.XXXXXX)
M=$WORK/mount
mkdir "$M"
SERVICE_PID=
PORT=
passed=0
failed=0

quit_service() {
  [[ -n $PORT ]] || return 0
  local reply=
  if exec 3<>"/dev/tcp/127.0.0.1/$PORT"; then
    printf 'QUIT\n' >&3 || true
    read -r -t 5 reply <&3 || true
    exec 3>&- 3<&- || true
  fi
  PORT=
  [[ $reply == BYE ]]
}

cleanup() {
  set +e
  quit_service 2>/dev/null
  # The pid this script started (in-place handovers keep it).
  if [[ -n $SERVICE_PID ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill "$SERVICE_PID" 2>/dev/null
  fi
  # Unconditionally: a killed service leaves a mount that mountpoint(1)
  # cannot stat (ENOTCONN) and so does not report.
  fusermount3 -u -z "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

ok() {
  passed=$((passed + 1))
  echo "ok   $1"
}
not_ok() {
  failed=$((failed + 1))
  echo "FAIL $1"
  [[ -s $WORK/out ]] && sed 's/^/       out: /' "$WORK/out"
  [[ -s $WORK/err ]] && sed 's/^/       err: /' "$WORK/err"
  return 0
}

# run CMD...: runs it, keeping stdout in $WORK/out, stderr in $WORK/err and
# the status in $rc.
rc=0
run() {
  rc=0
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
}

# expect_ok NAME CMD...: CMD exits 0.
expect_ok() {
  local name=$1
  shift
  run "$@"
  if [[ $rc -eq 0 ]]; then ok "$name"; else not_ok "$name (exit $rc)"; fi
}

# expect_fail NAME CMD...: CMD exits non-zero with a message on stderr.
expect_fail() {
  local name=$1
  shift
  run "$@"
  if [[ $rc -ne 0 && -s $WORK/err ]]; then ok "$name"; else not_ok "$name (exit $rc)"; fi
}

# expect_grep NAME FILE REGEX: the last output (out or err) matches.
expect_grep() {
  if grep -Eq -- "$3" "$WORK/$2"; then ok "$1"; else not_ok "$1 (no /$3/ in $2)"; fi
}

# json_field FIELD: a field of the JSON object in $WORK/out.
json_field() {
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(json.dumps(v))' \
    "$WORK/out" "$1"
}

# expect_json NAME FIELD VALUE: the JSON on stdout is valid and FIELD is VALUE
# (in JSON notation).
expect_json() {
  local got
  if ! python3 -m json.tool "$WORK/out" >/dev/null 2>&1; then
    not_ok "$1 (invalid JSON)"
    return
  fi
  got=$(json_field "$2" 2>/dev/null) || got='<missing>'
  if [[ $got == "$3" ]]; then ok "$1"; else not_ok "$1 ($2 is $got, expected $3)"; fi
}

generation() {
  "$KHO" status "$M" --format json >"$WORK/gen" && python3 -c \
    'import json,sys; print(json.load(open(sys.argv[1]))["generation"])' "$WORK/gen"
}

# --- help and usage -------------------------------------------------------
for verb in status load unload exec; do
  expect_ok "kho $verb --help exits 0" "$KHO" "$verb" --help
  expect_grep "kho $verb --help explains the control mount" out 'control'
done
expect_ok "kho --help lists the verbs" "$KHO" --help
expect_grep "kho --help lists exec" out 'exec'
expect_fail "kho status without M is a usage error" "$KHO" status
expect_grep "usage error shows usage" err 'Usage: kho status'
expect_fail "kho load without -- EXECUTABLE is a usage error" "$KHO" load "$M"
expect_grep "load usage error says what to give" err "give the next image after '--'"
expect_fail "kho status --format xml is a usage error" "$KHO" status "$M" --format xml
expect_fail "kho exec --timeout 0 is a usage error" "$KHO" exec "$M" --timeout 0
expect_fail "kho status of a plain directory fails" "$KHO" status "$WORK"
expect_grep "it says it is not a control mount" err 'not a control mount'
expect_fail "kho status of a missing directory fails" "$KHO" status "$WORK/nowhere"
expect_grep "it names the directory and the errno" err "$WORK/nowhere: No such file or directory"

# --- start the service ----------------------------------------------------
"$RT" --serve --control-mount "$M" --mode in-place >"$WORK/service.out" 2>"$WORK/service.err" &
SERVICE_PID=$!
for _ in $(seq 1 300); do
  grep -q '^MOUNTED ' "$WORK/service.out" 2>/dev/null && break
  kill -0 "$SERVICE_PID" 2>/dev/null || break
  sleep 0.1
done
PORT=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$WORK/service.out" | head -1)
if ! grep -q '^MOUNTED ' "$WORK/service.out"; then
  echo "the service did not mount its control files:" >&2
  cat "$WORK/service.out" "$WORK/service.err" >&2
  echo "$passed passed, $((failed + 1)) failed"
  exit 1
fi
ok "the service mounted $M (port $PORT)"

# --- status ---------------------------------------------------------------
expect_ok "kho status" "$KHO" status "$M"
expect_grep "status: cold boot" out '^boot: +cold$'
expect_grep "status: generation 0" out '^generation: +0$'
expect_grep "status: inactive" out '^active: +no$'
expect_grep "status: dt_max" out '^dt_max: +0xa00000 '
expect_grep "status: scratch" out '^scratch: +0x[0-9a-f]+ \+ 0x[0-9a-f]+ '
expect_grep "status: nothing loaded" out '^loaded: +no$'
expect_ok "kho status --format json" "$KHO" status "$M" --format json
expect_json "json: generation 0" generation 0
expect_json "json: not a KHO boot" khoBoot false
expect_json "json: inactive" active false
expect_json "json: dtMax" dtMax 10485760
expect_json "json: nothing loaded" image null
expect_json "json: mount" mount "\"$M\""

# --- load, status, unload -------------------------------------------------
expect_ok "kho load" "$KHO" load "$M" -- "$RT" --serve --control-mount "$M"
expect_grep "load says what it staged" out "^loaded $RT --serve --control-mount"
expect_ok "kho status after load" "$KHO" status "$M"
expect_grep "status shows it loaded" out '^loaded: +yes$'
expect_grep "status shows the image" out "^image: +$RT --serve --control-mount $M\$"
expect_grep "status shows the mode" out '^mode: +in-place$'
expect_ok "kho load --overlapped (relative path, json)" \
  bash -c "cd '$BIN_DIR' && '$KHO' load '$M' --overlapped --format json -- ./kho-roundtrip --serve"
PHYS_BIN_DIR=$(cd "$BIN_DIR" && pwd -P) # getcwd's view, symbolic links resolved
expect_json "load json: absolute executable" image "[\"$PHYS_BIN_DIR/kho-roundtrip\", \"--serve\"]"
expect_json "load json: overlapped" mode '"overlapped"'
expect_ok "kho status --format json after load" "$KHO" status "$M" --format json
expect_json "status json: loaded" loaded true
expect_json "status json: mode" mode '"overlapped"'
expect_json "status json: image" image "[\"$PHYS_BIN_DIR/kho-roundtrip\", \"--serve\"]"
expect_ok "kho status M/ (trailing slash)" "$KHO" status "$M/"
expect_grep "the mount is named without the slash" out "^mount: +$M\$"
expect_ok "kho unload" "$KHO" unload "$M"
expect_ok "kho status after unload" "$KHO" status "$M" --format json
expect_json "unloaded: nothing loaded" loaded false
expect_json "unloaded: no image" image null
expect_fail "kho load of a missing executable" "$KHO" load "$M" -- "$WORK/missing"
expect_grep "it names the file and the errno" err "$WORK/missing: No such file or directory"
printf 'data\n' >"$WORK/not-executable"
expect_fail "kho load of a non-executable file" "$KHO" load "$M" -- "$WORK/not-executable"
expect_grep "it says it is not executable" err "not-executable: Permission denied"
expect_fail "kho load of a name not in PATH" "$KHO" load "$M" -- kho-no-such-command
expect_grep "it says not found in PATH" err 'not found in \$PATH'
expect_ok "a failed load stages nothing" "$KHO" status "$M" --format json
expect_json "still nothing loaded" loaded false

# --- exec: three generations ----------------------------------------------
expect_fail "kho exec with nothing loaded" "$KHO" exec "$M"
expect_grep "it says nothing loaded" err 'nothing loaded; give -- EXECUTABLE'
expect_ok "kho exec -> generation 1 (in place)" \
  "$KHO" exec "$M" -- "$RT" --serve --control-mount "$M"
expect_grep "exec reports generation 1 and the blocked time" out \
  '^handed over to generation 1 in [0-9.]+ ms \(control mount blocked [0-9.]+ ms\)$'
expect_ok "kho status after the handover" "$KHO" status "$M"
expect_grep "status: KHO boot" out '^boot: +KHO '
expect_grep "status: generation 1" out '^generation: +1$'
expect_ok "kho exec --overlapped -> generation 2 (json)" \
  "$KHO" exec "$M" --overlapped --format json -- "$RT" --serve --control-mount "$M"
expect_json "exec json: ok" ok true
expect_json "exec json: generation 2" generation 2
expect_json "exec json: from generation 1" generationBefore 1
expect_json "exec json: overlapped" mode '"overlapped"'
expect_ok "kho load then kho exec -> generation 3" \
  "$KHO" load "$M" -- "$RT" --serve --control-mount "$M"
expect_ok "kho exec of the staged image" "$KHO" exec "$M"
expect_grep "exec reports generation 3" out '^handed over to generation 3 in '
[[ $(generation) == 3 ]] && ok "status: generation 3" || not_ok "status: generation 3"

# --- exec failures: the service rolls back --------------------------------
cp "$RT" "$WORK/vanishing"
expect_ok "kho load of a binary that then disappears" \
  "$KHO" load "$M" -- "$WORK/vanishing" --serve --control-mount "$M"
rm "$WORK/vanishing"
expect_fail "kho exec of the missing binary fails" "$KHO" exec "$M"
[[ $rc -eq 1 ]] && ok "it exits 1" || not_ok "it exits 1 (exit $rc)"
expect_grep "it gives the errno" err 'kernel/kexec/execute: No such file or directory'
expect_grep "it says the service rolled back" err 'rolled back: the old image is still serving \(generation 3, unchanged\)'
[[ $(generation) == 3 ]] && ok "generation unchanged" || not_ok "generation unchanged"
expect_ok "kho status after the rollback" "$KHO" status "$M" --format json
expect_json "rolled back: KHO inactive" active false
printf 'not a program\n' >"$WORK/garbage"
chmod +x "$WORK/garbage"
expect_fail "kho exec of a file that is no program (json)" \
  "$KHO" exec "$M" --format json -- "$WORK/garbage"
expect_json "exec json: not ok" ok false
expect_json "exec json: ENOEXEC" errno 8
expect_json "exec json: rolled back" state '"rolled-back"'
expect_json "exec json: generation unchanged" generation 3
expect_grep "exec json: the message on stderr too" err 'Exec format error'
expect_fail "kho exec of a missing executable is refused before anything" \
  "$KHO" exec "$M" -- "$WORK/missing"
[[ $(generation) == 3 ]] && ok "generation still 3" || not_ok "generation still 3"
expect_ok "the service still serves after the failures" \
  "$KHO" exec "$M" -- "$RT" --serve --control-mount "$M"
expect_grep "and hands over to generation 4" out '^handed over to generation 4 in '

# --- stop -----------------------------------------------------------------
if quit_service; then ok "QUIT answered BYE"; else not_ok "QUIT answered BYE"; fi
for _ in $(seq 1 100); do
  mountpoint -q "$M" || break
  sleep 0.1
done
if mountpoint -q "$M"; then not_ok "the mount is gone after QUIT"; else ok "the mount is gone after QUIT"; fi
expect_fail "kho status after the service stopped" "$KHO" status "$M"
expect_grep "it says it is not a control mount" err 'not a control mount'

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
