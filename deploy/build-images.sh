#!/usr/bin/env bash
# Builds everything `docker compose up` needs on a fresh machine: the
# release binary, the base image (deploy/base-image.sh, when it cannot be
# pulled) and the Starling and HAProxy images.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin starling
deploy/base-image.sh
if docker compose version >/dev/null 2>&1; then
    docker compose build
else
    docker-compose build
fi
