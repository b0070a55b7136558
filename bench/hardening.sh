#!/usr/bin/env bash
# contextd under hostile clients: what a few bad requests do to the server's memory and
# latency, on SQLite and on Postgres. Four tests, each on a fresh server and a fresh store:
#
#   1. hostile bodies: CLIENTS concurrent PUTs of ~9 MB bodies of two shapes ("objs": about a
#      million tiny objects; "keys": 750,000 keys), while bench/hostile.py samples the server's
#      RSS and times GET /healthz: statuses, elapsed, peak RSS, RSS SETTLE s later, /healthz
#      p50/p99/max;
#   2. hot GET /contexts/bench_hot with wrk, alone and then beside WRITERS python writers of
#      ~1 MB bodies: req/s, p99, the ratio, and the 1 MB writes done;
#   3. auth on: the hot GET with a valid key, then with a well-formed unknown key: req/s, the
#      ratio and (Postgres) transactions per request, from pg_stat_database;
#   4. GET /metrics with 10,000 contexts of 100 versions each (1M version rows, seeded with
#      SQL while the server is stopped): p50/p99 of 50 sequential scrapes.
#
# See bench/README.md ("Hostile clients").
#
#   bench/hardening.sh                                   # about 6 minutes
#   CONTEXTD_BIN=/tmp/contextd-old bench/hardening.sh    # another build
#   STORES=sqlite SKIP="1 4" DURATION=5s bench/hardening.sh
#
# Knobs (environment): CONTEXTD_BIN (target/release/contextd; never built here), DURATION
# (10s per wrk run), STORES ("sqlite postgres"), SKIP (test numbers to skip, e.g. "2 3"),
# THREADS (2) and CONNECTIONS (32) for wrk, WARMUP (2s before the first wrk run of a server;
# 0 for none), CLIENTS (10 hostile PUTs), SETTLE (3 s), WRITERS (2), METRICS_CONTEXTS
# (10000), METRICS_VERSIONS (100), METRICS_REQUESTS (50), PGHOST (127.0.0.1), PGPORT (5432),
# PGUSER (postgres). CONTEXTD__* variables reach the server unchanged. wrk and sqlite3 are
# installed with apt-get when missing (and a test needs them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10s}
STORES=${STORES:-sqlite postgres}
SKIP=${SKIP:-}
BIN=${CONTEXTD_BIN:-target/release/contextd}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2s}
CLIENTS=${CLIENTS:-10}
SETTLE=${SETTLE:-3}
WRITERS=${WRITERS:-2}
METRICS_CONTEXTS=${METRICS_CONTEXTS:-10000}
METRICS_VERSIONS=${METRICS_VERSIONS:-100}
METRICS_REQUESTS=${METRICS_REQUESTS:-50}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
DB=contextd_hardening_bench
SHAPES="objs keys"
export PGHOST PGPORT PGUSER

die() { echo "hardening: $*" >&2; exit 1; }
say() { echo "hardening: $*"; }

# "10", "10s" or "1m" -> seconds.
seconds() {
    case "$1" in
        *[!0-9sm]* | "" ) die "bad duration '$1' (use e.g. 10, 10s or 1m)" ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
DURATION_S=$(seconds "$DURATION")
WARMUP_S=$(seconds "$WARMUP")
(( DURATION_S > 0 )) || die "DURATION must be at least 1s"

for store in $STORES; do
    [[ $store == sqlite || $store == postgres ]] || die "unknown store '$store' in STORES (sqlite, postgres)"
done
for t in $SKIP; do
    [[ $t == [1-4] ]] || die "unknown test '$t' in SKIP (1 to 4)"
done
# runs N: whether test N runs (it is not in SKIP).
runs() { [[ " $SKIP " != *" $1 "* ]]; }
has_store() { [[ " $STORES " == *" $1 "* ]]; }

# --- tools ---------------------------------------------------------------------------------------
# need TOOL PACKAGE: installs the Debian package when TOOL is missing, saying so.
need() {
    command -v "$1" >/dev/null && return
    say "$1 is missing: installing the Debian package $2 (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
        { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; } ||
        die "could not install $2; install $1 by hand"
    command -v "$1" >/dev/null || die "$2 is installed but $1 is still missing"
}
for tool in curl jq python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if runs 2 || runs 3; then need wrk wrk; fi
if runs 4 && has_store sqlite; then need sqlite3 sqlite3; fi
if has_store postgres; then
    command -v psql >/dev/null || die "psql is not installed (Debian: postgresql-client)"
    psql -X -q -d postgres -c 'SELECT 1' >/dev/null ||
        die "cannot reach Postgres at $PGUSER@$PGHOST:$PGPORT (set PGHOST/PGPORT/PGUSER)"
fi
[[ -x $BIN ]] || die "$BIN is not an executable (set CONTEXTD_BIN; this script never builds)"
[[ -r /proc/self/status ]] || die "/proc is needed to read the server's memory"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_DIR=bench/results/$(date +%Y%m%d-%H%M%S)-hardening
mkdir -p "$RUN_DIR"
say "binary $BIN; stores: $STORES; skipping: ${SKIP:-none}; raw outputs in $RUN_DIR"

# --- stores and the server -----------------------------------------------------------------------
# STORE (sqlite or postgres) says which store the functions below work on.
STORE=
SQLITE_DB=$RUN_DIR/contextd.db   # the SQLite store (and its -wal, -shm), deleted after each test
psql_admin() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
sqlite_db() { sqlite3 -bail -cmd ".timeout 5000" "$SQLITE_DB" "$@"; }
database_url() {
    case $STORE in
        postgres) echo "postgres://$PGUSER@$PGHOST:$PGPORT/$DB" ;;
        sqlite) echo "sqlite:$SQLITE_DB" ;;
    esac
}

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

SERVER_PID=
SERVER_LOG=
WRITER_PID=
stop_writer() {
    if [[ -n $WRITER_PID ]]; then
        kill -TERM "$WRITER_PID" 2>/dev/null || true
        wait "$WRITER_PID" 2>/dev/null || true
        WRITER_PID=
    fi
}
# Stops the server with SIGTERM (it lets requests in flight finish) and says so when it had
# already died or exits with an error.
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local status=0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || status=$?
        (( status == 0 || status == 143 )) ||
            echo "hardening: WARNING: the server exited with status $status (see $SERVER_LOG)" >&2
    else
        wait "$SERVER_PID" 2>/dev/null || status=$?
        echo "hardening: WARNING: the server had died (exit status $status; see $SERVER_LOG)" >&2
    fi
    SERVER_PID=
}
# The store of every test starts empty: a new Postgres database (the server creates and
# migrates it), a new SQLite file.
drop_store() {
    case $STORE in
        postgres) psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" ;;
        sqlite) rm -f "$SQLITE_DB" "$SQLITE_DB-wal" "$SQLITE_DB-shm" ;;
    esac
}
cleanup() {
    local status=$?
    stop_writer
    stop_server
    rm -f "$SQLITE_DB" "$SQLITE_DB-wal" "$SQLITE_DB-shm"
    if has_store postgres; then
        psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null || true
    fi
    (( status == 0 )) || echo "hardening: FAILED (exit status $status); raw outputs in $RUN_DIR" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Dies with the server's exit status and log when it is no longer running.
check_server() {
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        local status=0
        wait "$SERVER_PID" || status=$?
        SERVER_PID=
        tail -n 30 "$SERVER_LOG" >&2
        die "the server is gone (exit status $status; see $SERVER_LOG)"
    fi
}

# start_server NAME [VAR=VALUE...]: serves the current store on $PORT, with the extra
# settings, logging to server_NAME.log; waits for /healthz and sets START_S (seconds until it
# answered). `env` execs the binary, so $! is the server's own pid (for /proc/PID/status).
start_server() {
    local name=$1
    shift
    SERVER_LOG=$RUN_DIR/server_$name.log
    env DATABASE_URL="$(database_url)" \
        CONTEXTD__SERVER__BIND="127.0.0.1:$PORT" \
        CONTEXTD__VECTOR__DIMENSIONS=4 \
        CONTEXTD_CONFIG=config/context.yaml \
        RUST_LOG=warn \
        "$@" "$BIN" serve >>"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local t0=$EPOCHREALTIME i
    for ((i = 0; ; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true) == 200 ]] && break
        check_server
        (( i < 1200 )) || die "no 200 from /readyz after 120 s (see $SERVER_LOG)"
        sleep 0.1
    done
    START_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    say "$STORE server up for $name (pid $SERVER_PID, ${START_S} s)"
}

# seed_hot [KEY]: PUTs the ~1 KB bench_hot context (bench/payload.json), then reads it twice
# so that the measured reads are cache hits.
seed_hot() {
    local auth=() code
    [[ -z ${1:-} ]] || auth=(-H "Authorization: Bearer $1")
    code=$(jq -c '{data: ., source: "factory"}' bench/payload.json |
        curl -s -o "$RUN_DIR/seed_hot.json" -w '%{http_code}' -X PUT "${auth[@]}" \
            -H 'Content-Type: application/json' --data-binary @- "$BASE/contexts/bench_hot")
    [[ $code == 201 ]] || die "PUT /contexts/bench_hot answered $code: $(cat "$RUN_DIR/seed_hot.json")"
    curl -s -o /dev/null "${auth[@]}" "$BASE/contexts/bench_hot"
    curl -s -o /dev/null "${auth[@]}" "$BASE/contexts/bench_hot"
}

# --- wrk -----------------------------------------------------------------------------------------
# field NAME FILE: a key=value from the RESULT line that bench/stats.lua prints.
field() { grep '^RESULT ' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# run_wrk NAME SECONDS [wrk args...]: GET /contexts/bench_hot into wrk_NAME.txt. Non-2xx
# answers are a warning unless EXPECT_NON2XX=1 (the unknown-key run answers 401s).
run_wrk() {
    local name=$1 secs=$2 out=$RUN_DIR/wrk_$1.txt
    shift 2
    say "wrk $name: -t$THREADS -c$CONNECTIONS -d${secs}s GET /contexts/bench_hot"
    check_server
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "$@" -s bench/get.lua \
        "$BASE/contexts/bench_hot" >"$out" 2>&1 ||
        { cat "$out" >&2; check_server; die "wrk $name failed"; }
    grep -q '^RESULT ' "$out" || { cat "$out" >&2; die "wrk $name printed no RESULT line"; }
    if [[ ${EXPECT_NON2XX:-0} != 1 ]] && grep -q '^FIRST_NON_2XX ' "$out"; then
        echo "hardening: WARNING: $name had non-2xx responses ($(field statuses "$out")):" \
            "$(sed -n 's/^FIRST_NON_2XX //p' "$out")" >&2
    fi
}
warmup() {
    (( WARMUP_S == 0 )) || run_wrk "warmup_$1" "$WARMUP_S" "${@:2}"
}

# --- Postgres transaction counts -----------------------------------------------------------------
# Committed transactions of the database so far (pg_stat_database.xact_commit). A backend
# reports its counts at most once a second while busy, and one that went idle with counts
# pending reports them PGSTAT_IDLE_INTERVAL (10 s) later, so this waits 11 s before reading:
# then the server's pooled connections have reported everything they did.
pg_commits() {
    sleep 11
    psql_admin -At -c "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'"
}

# =================================================================================================
# 1. Hostile bodies
# =================================================================================================
test_bodies() {
    local shape name
    for shape in $SHAPES; do
        name=1_${STORE}_$shape
        drop_store
        start_server "$name"
        say "test 1 ($STORE, $shape): $CLIENTS concurrent hostile PUTs"
        python3 bench/hostile.py bodies --port "$PORT" --pid "$SERVER_PID" --shape "$shape" \
            --clients "$CLIENTS" --settle "$SETTLE" --out "$RUN_DIR/$name.json" |
            tee "$RUN_DIR/$name.txt" || die "bench/hostile.py bodies failed"
        stop_server
        drop_store
    done
}

# =================================================================================================
# 2. Hot GET, alone and beside 1 MB writes
# =================================================================================================
test_writes() {
    local name=2_$STORE
    drop_store
    start_server "$name"
    seed_hot
    warmup "${name}_get"
    run_wrk "${name}_get_alone" "$DURATION_S"
    say "test 2 ($STORE): $WRITERS writers of ~1 MB bodies beside the next wrk run"
    python3 bench/hostile.py writers --port "$PORT" --clients "$WRITERS" \
        --out "$RUN_DIR/${name}_writers.json" >"$RUN_DIR/${name}_writers.txt" &
    WRITER_PID=$!
    sleep 0.5   # the writers are under way when wrk starts
    run_wrk "${name}_get_writes" "$DURATION_S"
    stop_writer
    [[ -s $RUN_DIR/${name}_writers.json ]] || die "the writers wrote no result (see ${name}_writers.txt)"
    cat "$RUN_DIR/${name}_writers.txt"
    stop_server
    drop_store
}

# =================================================================================================
# 3. Unknown keys
# =================================================================================================
declare -A TX_VALID TX_UNKNOWN   # store -> "transactions requests"
test_unknown_keys() {
    local name=3_$STORE key unknown code c0 c1 c2
    key=$("$BIN" keys generate)
    unknown=$("$BIN" keys generate)   # well-formed, never stored
    drop_store
    start_server "$name" CONTEXTD__AUTH__MODE=on CONTEXTD__AUTH__BOOTSTRAP_KEY="$key"
    seed_hot "$key"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $unknown" \
        "$BASE/contexts/bench_hot")
    [[ $code == 401 ]] || die "an unknown key answered $code, not 401: is auth on?"
    warmup "${name}_valid" -H "Authorization: Bearer $key"
    # On Postgres, the commits of each run: c0 before the valid-key run, c1 between, c2 after.
    if [[ $STORE == postgres ]]; then c0=$(pg_commits); fi
    run_wrk "${name}_valid" "$DURATION_S" -H "Authorization: Bearer $key"
    if [[ $STORE == postgres ]]; then c1=$(pg_commits); fi
    EXPECT_NON2XX=1 run_wrk "${name}_unknown" "$DURATION_S" -H "Authorization: Bearer $unknown"
    if [[ $STORE == postgres ]]; then
        c2=$(pg_commits)
        TX_VALID[$STORE]="$((c1 - c0)) $(field requests "$RUN_DIR/wrk_${name}_valid.txt")"
        TX_UNKNOWN[$STORE]="$((c2 - c1)) $(field requests "$RUN_DIR/wrk_${name}_unknown.txt")"
        say "postgres commits: valid-key run ${TX_VALID[$STORE]% *}," \
            "unknown-key run ${TX_UNKNOWN[$STORE]% *} (transactions, requests)"
    fi
    [[ $(field statuses "$RUN_DIR/wrk_${name}_unknown.txt") == 401:* ]] ||
        echo "hardening: WARNING: the unknown-key run had answers other than 401:" \
            "$(field statuses "$RUN_DIR/wrk_${name}_unknown.txt")" >&2
    stop_server
    drop_store
}

# =================================================================================================
# 4. /metrics at 1M versions
# =================================================================================================
# METRICS_CONTEXTS contexts bench_m_1.. of METRICS_VERSIONS versions each, the ~1 KB payload of
# the other benchmarks (plus "seq") as every version's data, written with SQL beside a
# stopped server by bench/seed.sql and seed.sqlite.sql (the write benchmarks' seeds).
PAYLOAD_FILE=$RUN_DIR/payload.json
jq -c . bench/payload.json >"$PAYLOAD_FILE"

seed_versions() {
    local size
    size=$(wc -c <"$PAYLOAD_FILE")
    case $STORE in
        postgres)
            psql_db -v prefix=bench_m_ -v payload="$(<"$PAYLOAD_FILE")" -v size="$size" \
                -v contexts="$METRICS_CONTEXTS" -v retention="$METRICS_VERSIONS" \
                -f bench/seed.sql ;;
        sqlite)
            sqlite_db -cmd ".parameter set :prefix \"'bench_m_'\"" \
                -cmd ".parameter set :payload_file \"'$PAYLOAD_FILE'\"" \
                -cmd ".parameter set :size $size" \
                -cmd ".parameter set :contexts $METRICS_CONTEXTS" \
                -cmd ".parameter set :retention $METRICS_VERSIONS" <bench/seed.sqlite.sql >/dev/null ;;
    esac
}

declare -A METRICS_START METRICS_SEED   # store -> seconds to answer /healthz after, to seed
test_metrics() {
    local name=4_$STORE t0 want=$((METRICS_CONTEXTS * METRICS_VERSIONS)) got
    drop_store
    start_server "${name}_migrate"   # creates and migrates the store
    stop_server
    say "test 4 ($STORE): seeding $METRICS_CONTEXTS contexts x $METRICS_VERSIONS versions"
    t0=$EPOCHREALTIME
    seed_versions
    METRICS_SEED[$STORE]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    say "seeded in ${METRICS_SEED[$STORE]} s"
    start_server "$name"
    METRICS_START[$STORE]=$START_S
    python3 bench/hostile.py metrics --port "$PORT" --requests "$METRICS_REQUESTS" \
        --out "$RUN_DIR/$name.json" | tee "$RUN_DIR/$name.txt" || die "bench/hostile.py metrics failed"
    got=$(jq -r '.versions // "none"' "$RUN_DIR/$name.json")
    [[ $got == "$want" ]] ||
        echo "hardening: WARNING: /metrics says $got versions, $want were seeded" >&2
    stop_server
    drop_store
}

# --- run -----------------------------------------------------------------------------------------
for STORE in $STORES; do
    if runs 1; then test_bodies; fi
    if runs 2; then test_writes; fi
    if runs 3; then test_unknown_keys; fi
    if runs 4; then test_metrics; fi
done

# --- summary -------------------------------------------------------------------------------------
# Missing figures (a test that did not run or failed) print as "-".
# j FILE FILTER: one value from a JSON result.
j() {
    if [[ -f $1 ]]; then jq -r "($2) as \$v | if \$v == null then \"-\" else \$v end" "$1"; else echo -; fi
}
# w NAME FIELD: one value from wrk_NAME.txt's RESULT line.
w() { if [[ -f $RUN_DIR/wrk_$1.txt ]]; then field "$2" "$RUN_DIR/wrk_$1.txt"; else echo -; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
# per TX_VALUE: "transactions requests" -> transactions per request.
per() {
    [[ -n ${1:-} ]] || { echo -; return; }
    awk -v t="${1% *}" -v n="${1#* }" 'BEGIN { if (n > 0) printf "%.3f", t / n; else print "-" }'
}

{
    echo
    echo "contextd under hostile clients, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs," \
        "binary $BIN, DURATION=${DURATION_S}s THREADS=$THREADS CONNECTIONS=$CONNECTIONS"
    if runs 1; then
        echo
        echo "1. hostile bodies: $CLIENTS concurrent PUTs of ~9 MB (objs: ~1M tiny objects; keys: 750k keys)"
        fmt="%-8s %-5s %-16s %6s %9s %8s %8s %10s %7s %9s %9s %9s\n"
        printf "$fmt" store shape statuses stored elapsed_s base_MB peak_MB "after${SETTLE}s_MB" hwm_MB \
            hz_p50_ms hz_p99_ms hz_max_ms
        for store in $STORES; do
            for shape in $SHAPES; do
                f=$RUN_DIR/1_${store}_$shape.json
                printf "$fmt" "$store" "$shape" "$(j "$f" .statuses)" "$(j "$f" .stored)" \
                    "$(j "$f" .elapsed_s)" \
                    "$(j "$f" .rss_before_mb)" "$(j "$f" .peak_rss_mb)" "$(j "$f" .rss_after_mb)" \
                    "$(j "$f" .hwm_mb)" "$(j "$f" .healthz_p50_ms)" "$(j "$f" .healthz_p99_ms)" \
                    "$(j "$f" .healthz_max_ms)"
                [[ $(j "$f" .server_alive) != false ]] || echo "         ^ the server DIED during this test"
            done
        done
    fi
    if runs 2; then
        echo
        echo "2. hot GET /contexts/bench_hot (wrk), alone and beside $WRITERS writers of ~1 MB bodies"
        fmt="%-8s %11s %9s %13s %11s %11s %9s %-16s %12s\n"
        printf "$fmt" store alone_rps p99_ms writes_rps p99_ms rps_ratio 1MB_writes statuses \
            put_p50_ms
        for store in $STORES; do
            f=$RUN_DIR/2_${store}_writers.json
            printf "$fmt" "$store" "$(w "2_${store}_get_alone" rps)" "$(w "2_${store}_get_alone" p99_ms)" \
                "$(w "2_${store}_get_writes" rps)" "$(w "2_${store}_get_writes" p99_ms)" \
                "$(ratio "$(w "2_${store}_get_writes" rps)" "$(w "2_${store}_get_alone" rps)")" \
                "$(j "$f" .writes)" "$(j "$f" .statuses)" "$(j "$f" .put_p50_ms)"
        done
    fi
    if runs 3; then
        echo
        echo "3. hot GET with auth on: a valid key, then a well-formed unknown key (401s)"
        fmt="%-8s %11s %9s %13s %9s %15s %13s %15s\n"
        printf "$fmt" store valid_rps p99_ms unknown_rps p99_ms "ratio(unk/val)" tx/valid_req \
            tx/unknown_req
        for store in $STORES; do
            printf "$fmt" "$store" "$(w "3_${store}_valid" rps)" "$(w "3_${store}_valid" p99_ms)" \
                "$(w "3_${store}_unknown" rps)" "$(w "3_${store}_unknown" p99_ms)" \
                "$(ratio "$(w "3_${store}_unknown" rps)" "$(w "3_${store}_valid" rps)")" \
                "$(per "${TX_VALID[$store]:-}")" "$(per "${TX_UNKNOWN[$store]:-}")"
        done
        echo "   tx/req: Postgres commits (pg_stat_database.xact_commit) per request of the run"
    fi
    if runs 4; then
        echo
        echo "4. $METRICS_REQUESTS sequential GET /metrics, $METRICS_CONTEXTS contexts x $METRICS_VERSIONS versions"
        fmt="%-8s %10s %8s %8s %9s %9s %9s %9s %s\n"
        printf "$fmt" store versions seed_s start_s first_ms p50_ms p99_ms max_ms statuses
        for store in $STORES; do
            f=$RUN_DIR/4_$store.json
            printf "$fmt" "$store" "$(j "$f" .versions)" "${METRICS_SEED[$store]:--}" \
                "${METRICS_START[$store]:--}" \
                "$(j "$f" .first_ms)" "$(j "$f" .p50_ms)" "$(j "$f" .p99_ms)" "$(j "$f" .max_ms)" \
                "$(j "$f" .statuses)"
        done
    fi
    echo
    echo "RSS is the contextd process's alone (not Postgres's). MB = MiB."
    echo "load average before the run: $LOAD_START, after: $(cut -d' ' -f1-3 /proc/loadavg)" \
        "(1/5/15 min; before the run, well above 0 means other work shared the CPUs and every" \
        "figure is noisy)"
    echo "raw outputs: $RUN_DIR"
} | tee "$RUN_DIR/summary.txt"
