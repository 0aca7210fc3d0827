#!/usr/bin/env bash
# Builds the images `docker compose up` needs, on this machine:
#   - where the Rust image can be pulled (a normal Docker setup), from
#     source with deploy/Dockerfile (multi-stage, BuildKit);
#   - otherwise offline: the release binary built on the host, the base
#     image from debootstrap when it cannot be pulled (deploy/base-image.sh),
#     and deploy/Dockerfile.prebuilt.
# STARLING_BUILD=source|host forces one. Prints the Dockerfile it used; the
# compose file reads it from STARLING_DOCKERFILE.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    COMPOSE=(docker-compose)
fi
mode="${STARLING_BUILD:-}"
if [ -z "$mode" ]; then
    if docker image inspect rust:1-slim-bookworm >/dev/null 2>&1 || docker pull rust:1-slim-bookworm >/dev/null 2>&1; then
        mode=source
    else
        mode=host
    fi
fi
case "$mode" in
    source)
        export STARLING_DOCKERFILE=deploy/Dockerfile DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
        ;;
    host)
        export STARLING_DOCKERFILE=deploy/Dockerfile.prebuilt
        cargo build --release -p starling-server
        deploy/base-image.sh
        ;;
    *) echo "STARLING_BUILD must be source or host, not $mode" >&2; exit 2 ;;
esac
echo "building the images with $STARLING_DOCKERFILE"
"${COMPOSE[@]}" ${COMPOSE_PROJECT:+-p "$COMPOSE_PROJECT"} build
