#!/usr/bin/env bash
# Installs the Debian packages a target needs, when their program is missing:
#   scripts/system-packages.sh PACKAGE=PROGRAM ...   (e.g. nginx-light=nginx chromium=chromium)
# As root with apt-get, installs them; otherwise says in one line what to install, and fails.
set -euo pipefail
missing=()
for pair in "$@"; do
    package=${pair%%=*} program=${pair#*=}
    if ! command -v "$program" >/dev/null && ! test -x "/usr/sbin/$program"; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "missing system packages: run 'sudo apt-get install ${missing[*]}' (Debian or Ubuntu), then try again" >&2
    exit 1
fi
