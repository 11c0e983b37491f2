#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, idempotently:
# Debian packages through apt-get, Python test clients through pip.
set -euo pipefail

apt_packages=(device-tree-compiler libfdt-dev libfuse3-dev fuse3 pkg-config
  memcached libmemcached-tools swig python3-dev systemd wrk)
# The client matrix (Tests/clients) and the C load generator (issue 14).
apt_packages+=(libmemcached-dev libcache-memcached-fast-perl php-cli php-memcached
  nginx-light curl gcc)
pip_packages=(pylibfdt pymemcache python-memcached pylibmc)

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Another apt (unattended-upgrades, a provisioning script) may hold the dpkg
# lock: wait for it, saying so, for at most APT_LOCK_TIMEOUT seconds.
apt_lock_timeout=${APT_LOCK_TIMEOUT:-600}
apt_get() {
  if command -v fuser >/dev/null &&
    fuser /var/lib/dpkg/lock-frontend /var/lib/apt/lists/lock >/dev/null 2>&1; then
    echo "deps: another apt-get holds the dpkg lock; waiting up to ${apt_lock_timeout} s" >&2
  fi
  if ! sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get \
    -o DPkg::Lock::Timeout="$apt_lock_timeout" "$@"; then
    echo "deps: apt-get $* failed (a lock still held after ${apt_lock_timeout} s says so above)" >&2
    exit 1
  fi
}
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  apt_get update -qq
  apt_get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
for p in "${pip_packages[@]}"; do
  module=$p
  [ "$p" = pylibfdt ] && module=libfdt
  [ "$p" = python-memcached ] && module=memcache
  # pylibmc from source, so that it is built against Debian's libmemcached
  # (libmemcached-dev) rather than the copy its binary wheel bundles.
  from_source=()
  [ "$p" = pylibmc ] && from_source=(--no-binary pylibmc)
  if ! "$python" -c "import $module" 2>/dev/null; then
    echo "deps: pip installing $p"
    "$python" -m pip install -q "${from_source[@]}" "$p" 2>&1 | grep -v "Running pip as the 'root' user" || true
    "$python" -c "import $module"
  fi
done
