#!/bin/sh
# What the tests need from the system beside the Python packages (make installs those): Debian's
# packages named on the command line (the Makefile's SYSTEM_PACKAGES). Missing ones are installed
# with apt-get when this runs as root (CI does, and a fresh machine's `make test`); otherwise one
# line says what to install, and the exit status is 1. `make test` runs this first; .ci/run too.
set -eu
missing=""
for package in "$@"; do
  if ! dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null | grep -q '^ii'; then
    missing="$missing $package"
  fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the Debian packages the tests need:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  exit 0
fi
echo "make test needs Debian packages that are missing:$missing; install them (sudo apt-get install -y$missing) or run make test as root, which installs them" >&2
exit 1
