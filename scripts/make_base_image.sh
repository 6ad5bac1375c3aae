#!/usr/bin/env bash
# Build a local Debian bookworm + Python 3.11 base image without Docker Hub:
# debootstrap a minimal root filesystem, then `docker import` it.
#
# The result stands in for the official python:3.11-slim image (same Debian release,
# same Python minor version) where Docker Hub is unreachable. The root filesystem tarball
# is kept in a cache folder so later runs only re-import it (seconds instead of minutes).
#
# Usage: scripts/make_base_image.sh [IMAGE_TAG]     (default rtlab-base:bookworm)
# Env:   RTLAB_DOCKER_CACHE  cache folder (default /var/cache/rtlab-docker)
#        DEBIAN_MIRROR       (default http://deb.debian.org/debian)
#        DOCKER              docker client to use (default: docker on PATH)
set -euo pipefail

image_tag="${1:-rtlab-base:bookworm}"
cache_dir="${RTLAB_DOCKER_CACHE:-/var/cache/rtlab-docker}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
docker_cmd="${DOCKER:-docker}"
suite=bookworm
# What the Dockerfile needs from its base: python3 with venv/ensurepip (pip comes from it),
# CA certificates for pip, and nothing else (minbase has no docs tooling, no systemd).
packages=python3,python3-venv,ca-certificates
# The cache key changes when the package set or suite changes.
tarball="$cache_dir/base-$suite-$(echo "$packages" | sha256sum | cut -c1-8).tar.gz"

if "$docker_cmd" image inspect "$image_tag" >/dev/null 2>&1; then
  echo "base image $image_tag already present"
  exit 0
fi

mkdir -p "$cache_dir"
if [[ ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || { echo "error: debootstrap not installed" >&2; exit 2; }
  rootfs="$(mktemp -d /tmp/rtlab-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $suite ($packages) into $rootfs"
  start=$SECONDS
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
    >"$cache_dir/debootstrap.log" 2>&1 || {
    tail -20 "$cache_dir/debootstrap.log" >&2
    exit 1
  }
  # Slim it the way the official slim images are slimmed: no package lists, docs, man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/*
  # `python` as well as `python3`, as in python:3.11-slim.
  ln -sf python3 "$rootfs/usr/bin/python"
  echo "debootstrap took $((SECONDS - start)) s"
  # Write to a temporary name first so an interrupted run never leaves a truncated cache.
  tar --numeric-owner -C "$rootfs" -czf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$rootfs"
  trap - EXIT
fi

start=$SECONDS
"$docker_cmd" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  "$tarball" "$image_tag" >/dev/null
echo "imported $image_tag from $tarball in $((SECONDS - start)) s"
