#!/usr/bin/env bash
# Makes the base image the Dockerfiles start from, `debian:bookworm-slim`,
# when it cannot be pulled: a minimal Debian bookworm root built with
# debootstrap from Debian's package mirror and imported with `docker import`.
# HAProxy is included, so the HAProxy image needs no network at build time.
#
# Does nothing if the image already exists (docker pull works, or this ran
# before). Needs root (debootstrap) and Docker.
set -euo pipefail

IMAGE="${STARLING_BASE_IMAGE:-debian:bookworm-slim}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE present"
    exit 0
fi
if docker pull "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE pulled"
    exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v debootstrap >/dev/null; then
    $SUDO apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1 || {
        $SUDO apt-get update >/dev/null
        $SUDO apt-get install -y --no-install-recommends debootstrap >/dev/null
    }
fi

ROOT="$(mktemp -d /tmp/starling-rootfs.XXXXXX)"
trap '$SUDO rm -rf "$ROOT"' EXIT
echo "building $IMAGE with debootstrap (a few minutes)"
$SUDO debootstrap --variant=minbase --include=ca-certificates,haproxy bookworm "$ROOT" "$MIRROR" >/dev/null
# Slim it like the official image: no apt lists, docs, man pages or caches.
$SUDO rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/var/log/*.log
$SUDO tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE built"
