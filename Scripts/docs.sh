#!/usr/bin/env bash
# Builds the DocC documentation of every library module, failing on any
# warning (a broken symbol link, an undocumented parameter), and checks that
# no public declaration lacks a /// comment.
#
#   Scripts/docs.sh [MODULE...]     archives in .build/plugins/Swift-DocC/outputs
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
modules=("$@")
if [[ ${#modules[@]} -eq 0 ]]; then
  for catalog in Sources/*/*.docc; do modules+=("$(basename "${catalog%.docc}")"); done
fi
python3 Scripts/undocumented.py --check "${modules[@]}"
for module in "${modules[@]}"; do
  "$SWIFT" package --disable-sandbox generate-documentation --target "$module" \
    --warnings-as-errors >/tmp/kho-docs-$$.log 2>&1 ||
    { cat /tmp/kho-docs-$$.log; rm -f /tmp/kho-docs-$$.log; echo "docs: $module failed" >&2; exit 1; }
  echo "docs: $module: clean"
done
rm -f /tmp/kho-docs-$$.log
