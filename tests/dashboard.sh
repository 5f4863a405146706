#!/usr/bin/env bash
# Dashboard in a real headless browser (tests/dashboard/cdp.py drives it over the DevTools
# protocol): groups, waterfall, dependency graph, log pane with search, a reload train, cache
# records, no polling, a restart click that changes the pid; screenshot to target/dashboard.png,
# decoded and checked. Prints SKIP and exits 77 (skipped) when chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then echo "SKIP: chromium not installed"; exit 77; fi
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${DMP_BIN:-}
if [ -z "$BIN" ]; then
  if [ -x "$TARGET/release/dmp-contained" ] && [ "$TARGET/release/dmp-contained" -nt src/api/mod.rs ]; then BIN=$TARGET/release/dmp-contained
  else cargo build -q; BIN=$TARGET/debug/dmp-contained; fi
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TMP=$(mktemp -d); API=$(free_port); DT=$(free_port); MARKER="hello-from-web-$RANDOM"
SUP=""; CHR=""
cleanup() {
  if [ -n "$CHR" ]; then kill "$CHR" 2>/dev/null || true; wait "$CHR" 2>/dev/null || true; fi
  if [ -n "$SUP" ]; then kill -TERM "$SUP" 2>/dev/null || true; wait "$SUP" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
mkdir -p "$TMP/app"; echo "flask==3" > "$TMP/app/requirements.txt"
# Two apps (db: its init step; web: a venv step, a migration, the service, watched), an app
# whose checkout is missing (ghost, skipped with its venv step) and a skipped loose step.
cat > "$TMP/supervisor.toml" <<TOML
[supervisor]
api_listen = "127.0.0.1:$API"
socket = "$TMP/ctl.sock"
cache_dir = "$TMP/cache"
[step.db-init]
command = "sleep 0.3; echo initialised"
[process.db]
command = "echo db-up; exec sleep 300"
after = ["db-init"]
[step.venv-web]
command = "sleep 0.4; echo venv built"
cwd = "$TMP/app"
cache = { inputs = ["requirements.txt"] }
[step.web-migrate]
command = "echo migrated"
after = ["db", "venv-web"]
[process.web]
command = "echo $MARKER; exec sleep 300"
cwd = "$TMP/app"
after = ["web-migrate", "db"]
watch = { paths = ["."], debounce = "100ms" }
[step.venv-ghost]
command = "true"
when_exists = "/nonexistent/ghost"
[process.ghost]
command = "exec sleep 300"
after = ["venv-ghost"]
when_exists = "/nonexistent/ghost"
[step.optional-thing]
command = "true"
when_exists = "/nonexistent"
skip_hint = "create /nonexistent to enable"
TOML
DMP_CONTAINED_TOKEN=dash-token "$BIN" up --config "$TMP/supervisor.toml" > "$TMP/out.log" 2>&1 &
SUP=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API/_supervisor/health" >/dev/null && break; sleep 0.1; done
"$CHROME" --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$TMP/chrome" \
  --remote-debugging-port="$DT" --remote-allow-origins='*' about:blank > "$TMP/chrome.log" 2>&1 &
CHR=$!
mkdir -p "$TARGET"
if python3 tests/dashboard/cdp.py "$DT" "http://127.0.0.1:$API/_supervisor/" dash-token "$MARKER" "$TARGET/dashboard.png" "$TMP/app"; then
  echo "PASS: dashboard"
else
  echo "FAIL: dashboard"; echo "--- supervisor:"; tail -20 "$TMP/out.log"; exit 1
fi
