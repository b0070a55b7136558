#!/usr/bin/env bash
# Swagger UI in a real browser: scripts/test-browser.sh
#
# Starts the contextd binary at $CONTEXTD_BIN (default target/debug/contextd; this script
# builds nothing) on a free loopback port with a fresh SQLite file, auth on and a bootstrap
# admin key, then runs tests/browser/swagger.test.mjs against it: Debian's Chromium, driven by
# playwright-core, loads /swagger-ui/, authorizes, and runs every operation with the document's
# own examples (see the test's header). Exit code 0 when every check passes.
#
# Installs what it needs when missing, and says so: Debian's `chromium` (apt-get) and the npm
# packages pinned in tests/browser/package-lock.json (`npm ci` into target/browser, redone only
# when the lock file changes). Playwright's own browser downloads are never used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${CONTEXTD_BIN:-target/debug/contextd}
DEPS=target/browser                 # node_modules for the test, outside the source tree
CHROMIUM=${CHROMIUM_PATH:-/usr/bin/chromium}
TMP="" SERVER_PID=""

say() { echo "test-browser.sh: $*" >&2; }
have() { command -v "$1" >/dev/null; }

# Root runs commands directly; a normal user needs sudo for apt-get.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; elif have sudo; then sudo "$@"
  else say "need root or sudo to run: $*"; return 1; fi
}

cleanup() {
  if [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; then
    # SIGTERM starts a graceful shutdown: wait (up to 10 s) so nothing outlives the script.
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  [[ -z $TMP ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT   # make Ctrl-C and kill also go through the EXIT trap
trap 'exit 143' TERM

# --- Chromium: Debian's package (Playwright cannot download its own builds here).
if [[ ! -x $CHROMIUM ]]; then
  say "$CHROMIUM is missing: installing Debian's 'chromium' package with apt-get"
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600)
  as_root "${apt[@]}" install --no-install-recommends chromium >&2 ||
    { as_root "${apt[@]}" update >&2 && as_root "${apt[@]}" install --no-install-recommends chromium >&2; }
  [[ -x $CHROMIUM ]] || { say "could not install chromium"; exit 1; }
fi

# --- playwright-core (pinned) into target/browser, once per version of the lock file.
have node && have npm || { say "node and npm are needed (Debian: apt-get install nodejs npm)"; exit 1; }
if ! cmp -s tests/browser/package.json "$DEPS/package.json" ||
   ! cmp -s tests/browser/package-lock.json "$DEPS/package-lock.json" ||
   [[ ! -f $DEPS/node_modules/.package-lock.json ]]; then   # npm writes that one last
  say "installing the test's npm packages into $DEPS (npm ci)"
  mkdir -p "$DEPS"
  cp tests/browser/package.json tests/browser/package-lock.json "$DEPS/"
  (cd "$DEPS" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) ||
    { rm -f "$DEPS/package-lock.json"; say "npm ci failed"; exit 1; }   # retried next time
fi

# --- The server.
[[ -x $BIN ]] || { say "no contextd binary at $BIN: build it (cargo build --bin contextd) or set CONTEXTD_BIN"; exit 1; }

free_port() {
  # Let the kernel pick a free port if python3 is around.
  have python3 && python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null && return
  local port=18080  # no python: take the first port nobody listens on
  while timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# ready PORT: does GET /readyz answer 200 (the store is open)? (bash alone: no curl needed)
ready() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
    read -r status <&3; [[ $status == "HTTP/1.1 200"* ]]' "$1" 2>/dev/null
}

TMP=$(mktemp -d -t contextd-browser.XXXXXX)
PORT=$(free_port)
KEY=$("$BIN" keys generate)
DATABASE_URL="sqlite:$TMP/contextd.db" CONTEXTD__SERVER__BIND="127.0.0.1:$PORT" \
  CONTEXTD__AUTH__MODE=on CONTEXTD__AUTH__BOOTSTRAP_KEY="$KEY" \
  RUST_LOG=warn CONTEXTD_CONFIG=config/context.yaml \
  "$BIN" serve >"$TMP/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 150); do   # up to 15 s
  ready "$PORT" && break
  kill -0 "$SERVER_PID" 2>/dev/null || { say "contextd exited at start:"; cat "$TMP/server.log" >&2; exit 1; }
  sleep 0.1
done
ready "$PORT" || { say "contextd was not ready (/readyz) within 15 s:"; cat "$TMP/server.log" >&2; exit 1; }
say "$("$BIN" --version 2>/dev/null || echo "$BIN") on http://127.0.0.1:$PORT, SQLite in $TMP"

# --- The test (its own watchdog ends it within three minutes; timeout is the backstop).
status=0
CONTEXTD_BASE_URL="http://127.0.0.1:$PORT" CONTEXTD_KEY="$KEY" CONTEXTD_BROWSER_DEPS="$DEPS" \
  CHROMIUM_PATH="$CHROMIUM" timeout 200 node tests/browser/swagger.test.mjs || status=$?
if [[ $status -ne 0 && -s $TMP/server.log ]]; then
  say "server log (last 30 lines):"; tail -n 30 "$TMP/server.log" >&2
fi
exit "$status"
