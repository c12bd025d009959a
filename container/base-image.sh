#!/usr/bin/env bash
# Prints the name of a Debian base image with Python 3, building it first when it is not there:
# debootstrap from this machine's own Debian mirror, then `podman import`. For machines that
# reach a Debian mirror but no image registry. Kept between runs: a second call costs nothing.
set -euo pipefail
image=${1:-localhost/debian-python:bookworm}
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "building $image: debootstrap $suite" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
