#!/usr/bin/env bash
# Build a minimal Debian bookworm base image without pulling from a registry:
#   debootstrap --variant=minbase bookworm <rootfs> <mirror>
#   tar -C <rootfs> -c . | docker import - dmp-contained-base:bookworm
#
# The mirror is read from this machine's apt configuration
# (/etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources), so the
# image is built from whatever Debian mirror the host already uses.
# Override with DEBIAN_MIRROR=http://... if needed.
#
# Idempotent: does nothing when the image already exists, unless --force.
#
# Usage: scripts/build-base-image.sh [--force] [--tag NAME:TAG]
set -euo pipefail

TAG="${BASE_IMAGE_TAG:-dmp-contained-base:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) FORCE=1 ;;
        --tag) shift; TAG="$1" ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "build-base-image: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf 'build-base-image: %s\n' "$*" >&2; }

if [ "$FORCE" -eq 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists (use --force to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
[ "$(id -u)" -eq 0 ] || { log "must run as root (debootstrap needs it)"; exit 1; }

# First Debian (non-security, non-backports) mirror from the apt configuration.
find_mirror() {
    local f line uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        while read -r line; do
            case "$line" in
                deb\ *)
                    # deb [opts] URI suite components
                    uri=$(printf '%s\n' "$line" | sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/')
                    case "$uri" in *security*|*backports*) continue ;; esac
                    case "$uri" in */debian|*/debian/) echo "${uri%/}"; return 0 ;; esac
                    ;;
            esac
        done <"$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822: URIs: line(s); take the first one pointing at a debian archive
        for uri in $(sed -n 's/^URIs:[[:space:]]*//p' "$f"); do
            case "$uri" in *security*|*backports*) continue ;; esac
            case "$uri" in */debian|*/debian/) echo "${uri%/}"; return 0 ;; esac
        done
    done
    return 1
}

MIRROR="${DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
    MIRROR=$(find_mirror) || { log "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"; exit 1; }
fi
log "suite=$SUITE mirror=$MIRROR tag=$TAG"

WORK=$(mktemp -d /var/tmp/dmp-contained-base.XXXXXX)
cleanup() {
    # debootstrap may leave proc/sys mounted on failure
    for m in proc sys dev/pts dev; do umount -l "$WORK/root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

start=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines of its log:"
    tail -n 30 "$WORK/debootstrap.log" >&2
    tail -n 30 "$WORK/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    exit 1
}
log "debootstrap done in $(( $(date +%s) - start ))s"

R="$WORK/root"
# Same apt sources inside the image as on the host mirror, plus security updates.
cat >"$R/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SRC
sec="${DEBIAN_SECURITY_MIRROR:-}"
if [ -z "$sec" ]; then
    # only active entries: "deb URI ..." lines and deb822 "URIs:" fields, never comments
    sec=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -E '^[[:space:]]*(deb[[:space:]]|URIs:)' \
          | grep -oE 'https?://[^ ]*debian-security' | head -n1 || true)
fi
[ -n "$sec" ] && echo "deb $sec $SUITE-security main" >>"$R/etc/apt/sources.list"

# Slim like the official -slim images: no docs/man/locales from future installs, no apt caches.
mkdir -p "$R/etc/dpkg/dpkg.cfg.d" "$R/etc/apt/apt.conf.d"
cat >"$R/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$R/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'APT::Install-Recommends "false";' >"$R/etc/apt/apt.conf.d/docker-no-recommends"
echo 'Acquire::Languages "none";' >"$R/etc/apt/apt.conf.d/docker-no-languages"
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* \
       "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/var/log/*.log "$R"/tmp/* "$R"/debootstrap 2>/dev/null || true
: >"$R/etc/hostname"
: >"$R/etc/resolv.conf"

tar --numeric-owner -C "$R" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE" \
    - "$TAG" >/dev/null
log "imported $TAG in $(( $(date +%s) - start ))s total; size: $(docker image inspect -f '{{.Size}}' "$TAG") bytes"
