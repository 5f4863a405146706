#!/usr/bin/env bash
# Build the dmp-contained image from this checkout, offline if need be:
#   1. cargo build --release                (skip with SKIP_CARGO=1, e.g. when already built)
#   2. base image: debian:bookworm-slim if present locally, else dmp-contained-base:bookworm,
#      made by scripts/build-base-image.sh (debootstrap from the host's Debian mirror)
#   3. docker build, installing the prebuilt target/release/dmp-contained
#
# Tools staged into target/tools/ for the image (see the Dockerfile): `uv` from PATH (make-venv's
# fast installer; UV_BIN overrides) and the host's CA bundle (HOST_CA_BUNDLE, default
# /etc/ssl/certs/ca-certificates.crt; "none" skips it), so the image trusts what this host trusts.
#
# Env: IMAGE_TAG (dmp-contained), BASE (override the base image), BUILDER (e.g. rust:1-bookworm to
# compile inside Docker instead of step 1), WITH_ELASTICSEARCH (1, 0 or auto = 1 only when
# artifacts.elastic.co answers; default auto).  Extra arguments go to `docker build`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf 'build-image: %s\n' "$*" >&2; }

TAG=${IMAGE_TAG:-dmp-contained}
t0=$(date +%s)

if [ -z "${BUILDER:-}" ] && [ "${SKIP_CARGO:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release
fi
if [ -z "${BUILDER:-}" ] && [ ! -x target/release/dmp-contained ]; then
    log "target/release/dmp-contained is missing: run cargo build --release (or set BUILDER=rust:1-bookworm)"
    exit 1
fi

tools=$repo/target/tools
rm -rf "$tools"
mkdir -p "$tools"
uv_bin=${UV_BIN:-$(command -v uv || true)}
if [ -n "$uv_bin" ] && [ -x "$uv_bin" ]; then
    cp "$uv_bin" "$tools/uv"
    log "staged $("$uv_bin" --version) for the image"
else
    log "uv not found (UV_BIN or PATH): the image's make-venv will use pip (slower; scripts/install-deps.sh installs uv)"
fi
ca=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ "$ca" != none ] && [ -s "$ca" ]; then
    cp "$ca" "$tools/ca-certificates.crt"
    log "staged the host CA bundle $ca (HOST_CA_BUNDLE=none to leave it out)"
fi

if [ -z "${BASE:-}" ]; then
    if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
        BASE=debian:bookworm-slim
    else
        log "debian:bookworm-slim is not available locally: using a debootstrapped base image"
        "$repo/scripts/build-base-image.sh"
        BASE=dmp-contained-base:bookworm
    fi
fi

es=${WITH_ELASTICSEARCH:-auto}
if [ "$es" = auto ]; then
    if curl -fsS --max-time 5 -o /dev/null https://artifacts.elastic.co/GPG-KEY-elasticsearch 2>/dev/null; then
        es=1
    else
        log "artifacts.elastic.co is not reachable: building without Elasticsearch (WITH_ELASTICSEARCH=0)"
        es=0
    fi
fi

args=(--build-arg "BASE=$BASE" --build-arg "WITH_ELASTICSEARCH=$es" -t "$TAG")
[ -n "${BUILDER:-}" ] && args+=(--build-arg "BUILDER=$BUILDER")
log "docker build ${args[*]} $*"
docker build "${args[@]}" "$@" .
log "built $TAG in $(( $(date +%s) - t0 ))s; size $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
