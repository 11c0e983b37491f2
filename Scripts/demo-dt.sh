#!/usr/bin/env bash
# A short tour of `kho dt` on a blob the project generates.
set -euo pipefail
kho=${KHO:-.build/debug/kho}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "A KHO state blob, as a service's serialize writes it (libfdt layout):"
step "$kho" dt sample -o "$dir/state.dtb"
step "$kho" dt check "$dir/state.dtb"
step "$kho" dt dump "$dir/state.dtb"

echo
echo "The same bytes as dtc prints them (the reference for 'dump'):"
dtc -I dtb -O dts "$dir/state.dtb" > "$dir/dtc.dts"
step cmp "$dir/dtc.dts" <("$kho" dt dump "$dir/state.dtb")
echo "identical"

echo
echo "Rewritten in dtc's layout, byte-identical to 'dtc -I dtb -O dtb':"
step "$kho" dt convert "$dir/state.dtb" -o "$dir/state-dtc.dtb" --layout dtc
dtc -I dtb -O dtb -o "$dir/dtc.dtb" "$dir/state.dtb"
step cmp "$dir/state-dtc.dtb" "$dir/dtc.dtb"
echo "identical"

echo
echo "A corrupt blob is refused with the offset of the problem:"
cp "$dir/state.dtb" "$dir/bad.dtb"
printf '\xff\xff\xff\xff' | dd of="$dir/bad.dtb" bs=1 seek=60 conv=notrunc status=none
step "$kho" dt check "$dir/bad.dtb" || echo "(exit status $?)"
head -c 100 "$dir/state.dtb" > "$dir/short.dtb"
step "$kho" dt check "$dir/short.dtb" || echo "(exit status $?)"
