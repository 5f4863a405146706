#!/usr/bin/env bash
# Install everything the tests and scripts use, and make sure none of the daemons is left
# running (the tests start their own nginx/redis/postgres instances on their own ports):
#   - Debian packages (PKGS below; debootstrap builds the image's base where no registry answers),
#   - Node.js and npm from Debian, only when `node`/`npm` are not on PATH already (a NodeSource
#     `nodejs` conflicts with Debian's `npm`),
#   - the PyPI tools uv and kubernetes-validate in the venv /opt/dmp-contained-tools (made with
#     Debian's /usr/bin/python3), their commands linked into /usr/local/bin.
#
#   scripts/install-deps.sh [--update]
#
# Idempotent: when every package is already installed it does no apt work at all (a second run
# takes well under a second) and only makes sure the system daemons are stopped.
# --update forces `apt-get update` even when nothing is missing.
# Needs root (or sudo). Debian bookworm; package names are bookworm's.
set -euo pipefail

PKGS=(
    nginx-light redis-server postgresql
    python3-flask python3-psycopg2 python3-redis
    chromium util-linux procps curl
    debootstrap docker-compose tmux python3-venv python3-pip
)
# Node.js: Debian's nodejs + npm only when no `node` is on PATH. A NodeSource `nodejs` (which
# ships its own npm) conflicts with Debian's `npm` package, so an existing node is left alone.
node_note=
if ! command -v node >/dev/null; then
    PKGS+=(nodejs npm)
elif ! command -v npm >/dev/null; then
    node_note="node is on PATH ($(command -v node)) but npm is not: install npm with that node"
fi
# PyPI tools (venv TOOLS_VENV) and the commands of theirs linked into /usr/local/bin.
TOOLS_VENV=/opt/dmp-contained-tools
PY_TOOLS=(uv kubernetes-validate)
TOOL_CMDS=(uv uvx kubernetes-validate)
SERVICES=(nginx redis-server postgresql)
# Daemon process names to sweep if a package's maintainer script started one anyway.
DAEMONS=(nginx redis-server postgres)

export DEBIAN_FRONTEND=noninteractive
export NEEDRESTART_MODE=a
log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "need root or sudo"; exit 1; }
    SUDO=(sudo -E)
fi

retry() { # retry CMD...: up to 5 attempts with a growing pause (mirror hiccups, apt lock)
    local n=1
    until "$@"; do
        if [ "$n" -ge 5 ]; then log "giving up after $n attempts: $*"; return 1; fi
        log "attempt $n failed, retrying in $((n * 10))s: $*"
        sleep $((n * 10))
        n=$((n + 1))
    done
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

force_update=false
[ "${1:-}" = "--update" ] && force_update=true

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done

APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef
          -o Dpkg::Options::=--force-confold)

if [ "${#missing[@]}" -gt 0 ] || $force_update; then
    retry "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -q
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    # Keep maintainer scripts from starting daemons: invoke-rc.d (and deb-systemd-invoke)
    # honour policy-rc.d exit code 101 = "action forbidden". Only remove it if we created it.
    policy=/usr/sbin/policy-rc.d
    created_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        created_policy=true
    fi
    rc=0
    retry "${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    if $created_policy; then "${SUDO[@]}" rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || exit "$rc"
else
    log "all ${#PKGS[@]} packages already installed"
fi

# Stop and disable whatever got started anyway (e.g. a machine with a policy-rc.d of its own,
# or services started by an earlier run).
for s in "${SERVICES[@]}"; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        "${SUDO[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null; then
        "${SUDO[@]}" service "$s" stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null; then
        "${SUDO[@]}" update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
done

# Leftover system daemons: only those re-parented to init (ppid 1) are system instances; a
# test's own nginx/redis/postgres is a child of the supervisor under test and is not touched.
sweep() {
    local sig=$1 name pid found=1
    for name in "${DAEMONS[@]}"; do
        for pid in $(pgrep -x -P 1 "$name" 2>/dev/null || true); do
            found=0
            log "stopping leftover $name (pid $pid) with SIG$sig"
            "${SUDO[@]}" kill -s "$sig" "$pid" 2>/dev/null || true
        done
    done
    return $found
}
if sweep TERM; then
    for _ in $(seq 50); do
        left=false
        for name in "${DAEMONS[@]}"; do pgrep -x -P 1 "$name" >/dev/null 2>&1 && left=true; done
        $left || break
        sleep 0.1
    done
    sweep KILL || true
fi

# PyPI tools: nothing to do when every command already answers.
tools_ok() {
    local c
    for c in "${TOOL_CMDS[@]}"; do "/usr/local/bin/$c" --version >/dev/null 2>&1 || return 1; done
}
if tools_ok; then
    log "PyPI tools present: ${TOOL_CMDS[*]}"
else
    log "installing PyPI tools into $TOOLS_VENV: ${PY_TOOLS[*]}"
    [ -x "$TOOLS_VENV/bin/pip" ] || "${SUDO[@]}" /usr/bin/python3 -m venv "$TOOLS_VENV"
    retry "${SUDO[@]}" "$TOOLS_VENV/bin/pip" install -q --upgrade "${PY_TOOLS[@]}"
    for c in "${TOOL_CMDS[@]}"; do "${SUDO[@]}" ln -sfn "$TOOLS_VENV/bin/$c" "/usr/local/bin/$c"; done
    tools_ok || { log "PyPI tools not usable after install: ${TOOL_CMDS[*]}"; exit 1; }
fi

# postgres' socket dir is created by tmpfiles at boot; make sure it exists in containers too.
if [ -d /usr/lib/postgresql ] && [ ! -d /var/run/postgresql ]; then
    "${SUDO[@]}" install -d -o postgres -g postgres -m 2775 /var/run/postgresql
fi

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -z "$node_note" ] || log "warning: $node_note"
# The Docker engine is the machine's, not a package installed here.
docker info >/dev/null 2>&1 ||
    log "warning: no Docker engine answers: tests/image/*.sh will be skipped (failed under CI=true)"
log "ok; postgres binaries: ${pgbin:-not found}"
