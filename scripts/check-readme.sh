#!/usr/bin/env bash
# Runs the shell examples of README.md, in order, against a fresh contextd, so that they
# cannot silently break: scripts/check-readme.sh [README]   (default README.md at the root)
#
# Which blocks: a fenced block runs when the line right before its opening fence is exactly
#   <!-- readme: run -->
# and the fence is ```sh or ```bash (the marker may carry the fence's own indentation, as in
# a list item). Every other block is ignored; a marker before anything else is an error.
# The marked blocks are concatenated in document order into one bash script under
# `set -euo pipefail`, so `export`s and background jobs (`contextd serve &`) carry from one
# block to the next; each block starts with `echo "==> README block N (line L)" >&2`, L being
# its opening fence's line.
#
# Where they run: a fresh `mktemp -d` working directory (so a bare `contextd serve` makes an
# empty data/contextd.db there), removed at the end, with stdin from /dev/null; `contextd` on
# PATH (a symlink to $CONTEXTD_BIN, default target/debug/contextd; this script builds
# nothing; there is no `cargo`: blocks that run cargo are not to be marked); DATABASE_URL,
# REDIS_URL and every CONTEXTD_* / CONTEXTD__* variable of the caller unset.
# Ports: the examples speak to localhost:8080 and :8081. The script takes two free loopback
# ports and rewrites, in the blocks' text only, every `:8080` to `:PORT1` and `:8081` to
# `:PORT2` (bind values like 0.0.0.0:8081 too), and exports
# CONTEXTD__SERVER__BIND=127.0.0.1:PORT1, so a bare `contextd serve` listens on PORT1 (a
# block that sets the bind itself wins).
#
# curl: a bash function wraps `command curl`, adding a --write-out that goes to curl's
# stderr (`%{stderr}`, curl >= 7.63) as a marker the function takes out again, so the
# block's stdout stays byte-identical (pipes work); a -w of the block's own is kept and ours
# appended to it. It returns curl's exit status. Every call's HTTP status is recorded, and
# the rule is:
#   - a 5xx answered to a curl call that exited 0 fails the run (checked at the end of its
#     block, which is then named with the command line and the status);
#   - a call that exited non-zero (no connection: status 000; or -f on an HTTP error) is
#     left to the shell: `set -e` fails the block there, unless the README handles it
#     (`until curl -sf .../readyz; do sleep 0.2; done`, `if`, `|| true`), which is how a
#     readiness loop retries. Such calls show as "tolerated" in the summary.
#   - 4xx are fine (the README shows 404, 409, 412 on purpose; 304 too).
#   - curl's exit 23 (write error) on a pipe whose reader stopped early, as in
#     `curl -s .../openapi.json | head -c 200`, counts as exit 0: it is SIGPIPE by another
#     name, which `set -o pipefail` would otherwise turn into a failure no reader sees.
#
# Output: everything the blocks print (and the servers they start) goes to
# target/check-readme.log ($CHECK_README_LOG). On success, one line per block and a total;
# on failure, the failing block's text, the tail of its output, and exit 1.
# Cleanup: the blocks run in a session of their own; at the end (or on Ctrl-C, TERM, or the
# whole-run watchdog of 300 s, $CHECK_README_TIMEOUT) its processes get SIGTERM, up to 10 s
# to stop, then SIGKILL, so nothing it started outlives the script.
set -euo pipefail

README_ARG=${1:-}
# A README named on the command line is relative to the caller's directory.
[[ -z $README_ARG ]] || README_ARG=$(realpath -- "$README_ARG")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
README=${README_ARG:-$ROOT/README.md}
BIN=${CONTEXTD_BIN:-target/debug/contextd}
LOG=${CHECK_README_LOG:-target/check-readme.log}
TIMEOUT=${CHECK_README_TIMEOUT:-300}
TMP="" RUNNER_PID="" WATCHDOG_PID=""

say() { echo "check-readme.sh: $*" >&2; }
have() { command -v "$1" >/dev/null; }

# stop_group PGID: SIGTERM to every process of the group, up to 10 s to go, then SIGKILL.
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.1; done
  say "still running after 10 s: sending SIGKILL"
  kill -KILL -- "-$1" 2>/dev/null || true
}

# shellcheck disable=SC2317  # (called by the EXIT trap)
cleanup() {
  [[ -z $WATCHDOG_PID ]] || kill "$WATCHDOG_PID" 2>/dev/null || true
  # setsid made the runner the leader of its own process group: the blocks' background jobs
  # (and theirs) are in it too, even after the runner has exited.
  [[ -z $RUNNER_PID ]] || stop_group "$RUNNER_PID"
  [[ -z $TMP ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT   # make Ctrl-C and kill also go through the EXIT trap
trap 'say "terminated"; exit 143' TERM

[[ -f $README ]] || { say "no README at $README"; exit 1; }
[[ -x $BIN ]] || { say "no contextd binary at $BIN: build it (cargo build --bin contextd) or set CONTEXTD_BIN"; exit 1; }
BIN=$(realpath -- "$BIN")
have curl || { say "curl is needed"; exit 1; }
have setsid || { say "setsid (util-linux) is needed"; exit 1; }

# --- The marked blocks: BLOCKS[i] is the text, LINES[i] the line of its opening fence.
BLOCKS=() LINES=()
MARKER='<!-- readme: run -->'
n=0 in_fence=0 run=0 fence="" indent="" info="" marker_line=0 marker_indent="" text="" start=0
while IFS= read -r line || [[ -n $line ]]; do
  n=$((n + 1))
  line=${line%$'\r'}
  if ((in_fence)); then
    # A closing fence: at least as many backticks as the opening one, nothing after them.
    if [[ $line =~ ^\ {0,3}(\`{3,}|~{3,})[[:space:]]*$ && ${BASH_REMATCH[1]:0:1} == "${fence:0:1}" &&
          ${#BASH_REMATCH[1]} -ge ${#fence} ]]; then
      if ((run)); then BLOCKS+=("$text") LINES+=("$start"); fi
      in_fence=0 run=0
    elif ((run)); then
      text+=${line#"$indent"}$'\n'
    fi
    continue
  fi
  if [[ $line =~ ^(\ *)(\`{3,}|~{3,})[[:space:]]*([^[:space:]]*) ]]; then
    in_fence=1 fence=${BASH_REMATCH[2]} indent=${BASH_REMATCH[1]} info=${BASH_REMATCH[3]}
    if ((marker_line == n - 1 && marker_line > 0)); then
      [[ ($info == sh || $info == bash) && $fence == '```' && $line == "$indent$fence$info" &&
         $indent == "$marker_indent" ]] ||
        { say "$README:$marker_line: '$MARKER' must be right before a \`\`\`sh or \`\`\`bash fence (line $n is: $line)"; exit 1; }
      run=1 text="" start=$n
    fi
    marker_line=0
    continue
  fi
  if ((marker_line)); then
    say "$README:$marker_line: '$MARKER' must be right before a \`\`\`sh or \`\`\`bash fence (line $n is: $line)"
    exit 1
  fi
  if [[ $line =~ ^(\ *)"$MARKER"$ ]]; then marker_line=$n marker_indent=${BASH_REMATCH[1]}; fi
done <"$README"
((in_fence == 0)) || { say "$README: the code block opened at line $start (or later) is never closed"; exit 1; }
((marker_line == 0)) || { say "$README:$marker_line: '$MARKER' at the end of the file, before no block"; exit 1; }
((${#BLOCKS[@]} > 0)) || { say "$README: no block is marked '$MARKER': nothing to run"; exit 1; }

# --- Two free loopback ports.
free_port() {
  # Let the kernel pick a free port if python3 is around.
  have python3 && python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null && return
  local port=$1  # no python: take the first port nobody listens on
  while timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}
PORT1=$(free_port 18180)
PORT2=$(free_port $((PORT1 + 1)))
while [[ $PORT2 == "$PORT1" ]]; do PORT2=$(free_port $((PORT1 + 1))); done

# --- The environment: temp dirs, contextd on PATH, none of the caller's settings.
TMP=$(mktemp -d -t check-readme.XXXXXX)
WORK=$(mktemp -d "$TMP/work.XXXXXX")
mkdir "$TMP/bin"
ln -s "$BIN" "$TMP/bin/contextd"
STATE=$TMP/state       # "begin N L OFFSET" per block the runner starts, "done" at the end
CALLS=$TMP/calls       # per curl call and status: BLOCK<TAB>EXIT<TAB>STATUS<TAB>COMMAND
: >"$STATE"; : >"$CALLS"
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
LOG=$(realpath -- "$LOG")

unset DATABASE_URL REDIS_URL
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^CONTEXTD_' || true)
export CONTEXTD__SERVER__BIND=127.0.0.1:$PORT1
export PATH=$TMP/bin:$PATH

# --- The runner: a prelude (the curl wrapper, block bookkeeping), then the blocks.
RUNNER=$TMP/runner.sh
{
  printf '%s\n' '#!/usr/bin/env bash' 'set -euo pipefail'
  printf '__README_STATE=%q __README_CALLS=%q __README_LOG=%q __README_TMP=%q __README_BLOCK=0\n' \
    "$STATE" "$CALLS" "$LOG" "$TMP"
  cat <<'PRELUDE'
__README_MARK=$'\x1f'check-readme-status: __README_END=$'\x1f'
__readme_begin() {
  __README_BLOCK=$1
  echo "begin $1 $2 $(stat -c %s "$__README_LOG")" >>"$__README_STATE"
  echo "==> README block $1 (line $2)" >&2
}
# A 5xx to a call that exited 0 fails the run here, at the end of the block.
__readme_end() {
  local bad
  bad=$(awk -F'\t' -v b="$1" '$1 == b && $2 == 0 && $3 ~ /^5/' "$__README_CALLS")
  [[ -z $bad ]] || { echo "check-readme: block $1: curl answered 5xx" >&2; exit 97; }
}
__readme_done() { echo done >>"$__README_STATE"; }
__README_CURL=""   # the last curl call's command line, for the ERR trap
__readme_err() {
  local what=$2
  [[ $what != 'return "$rc"' ]] || what=$__README_CURL   # a failure of the curl wrapper
  echo "check-readme: block $__README_BLOCK: exit $1: $what" >&2
}
trap '__readme_err "$?" "$BASH_COMMAND"' ERR
curl() {
  local rc=0 err args=() wrote=0 arg ours="%{stderr}${__README_MARK}%{http_code}${__README_END}"
  local statuses line cmd="curl" a
  for a in "$@"; do cmd+=" $(printf '%q' "$a")"; done
  # The block's own --write-out keeps its output; ours is appended to it (last -w wins).
  while (($#)); do
    arg=$1; shift
    if [[ ($arg == -w || $arg == --write-out) && $# -gt 0 && $1 != @* ]]; then
      args+=("$arg" "$1$ours"); shift; wrote=1
    elif [[ $arg == -w?* && $arg != -w@* ]]; then
      args+=("$arg$ours"); wrote=1
    else
      args+=("$arg")
    fi
  done
  ((wrote)) || args=(-w "$ours" "${args[@]}")
  err=$(mktemp "$__README_TMP/curl-stderr.XXXXXX")
  command curl "${args[@]}" 2>"$err" || rc=$?
  statuses=$(grep -ao "$__README_MARK[0-9]*$__README_END" "$err" | tr -dc '0-9\n' || true)
  [[ -n $statuses ]] || statuses="-"
  # 23 (write error) on a pipe whose reader stopped early (`curl ... | head -c 200`) is what
  # SIGPIPE is to other commands: no failure in the README reader's shell, so none here.
  if ((rc == 23)) && [[ -p /dev/stdout && $statuses =~ ^[1-9][0-9][0-9]$ ]]; then rc=0; fi
  while IFS= read -r line; do
    printf '%s\t%s\t%s\t%s\n' "$__README_BLOCK" "$rc" "$line" "$cmd" >>"$__README_CALLS"
    [[ $rc != 0 || $line != 5* ]] || echo "check-readme: curl answered $line: $cmd" >&2
  done <<<"$statuses"
  sed "s/$__README_MARK[0-9]*$__README_END//g" "$err" >&2 || true
  rm -f "$err"
  __README_CURL=$cmd
  return "$rc"
}
PRELUDE
  for i in "${!BLOCKS[@]}"; do
    b=$((i + 1))
    printf '\n__readme_begin %d %d\n' "$b" "${LINES[i]}"
    # The ports, in the blocks' text only.
    printf '%s' "${BLOCKS[i]}" | sed -E -e "s/:8080\\b/:$PORT1/g" -e "s/:8081\\b/:$PORT2/g"
    printf '__readme_end %d\n' "$b"
  done
  printf '\n__readme_done\n'
} >"$RUNNER"

say "running ${#BLOCKS[@]} blocks of $README (ports :8080 -> :$PORT1, :8081 -> :$PORT2; log $LOG)"
START=$SECONDS
# A session (and process group) of its own, so that everything the blocks start can be stopped.
(cd "$WORK" && exec setsid bash "$RUNNER" </dev/null >>"$LOG" 2>&1) &
RUNNER_PID=$!
sleep "$TIMEOUT" &
WATCHDOG_PID=$!
finished=""
wait -n -p finished "$RUNNER_PID" "$WATCHDOG_PID" && rc=0 || rc=$?
timed_out=0
if [[ $finished == "$WATCHDOG_PID" ]]; then
  timed_out=1 rc=124 WATCHDOG_PID=""
else
  kill "$WATCHDOG_PID" 2>/dev/null || true
  wait "$WATCHDOG_PID" 2>/dev/null || true
  WATCHDOG_PID=""
fi
# Stop what the blocks left running before the report (the server logs are then complete).
stop_group "$RUNNER_PID"

# --- The report.
last=$(grep '^begin ' "$STATE" | tail -n 1 || true)
if ((rc == 0)) && grep -qx 'done' "$STATE"; then
  total=0 tolerated_total=0
  for i in "${!BLOCKS[@]}"; do
    b=$((i + 1))
    ok_statuses=$(awk -F'\t' -v b="$b" '$1 == b && $2 == 0 && $3 != "-" { printf " %s", $3 }' "$CALLS")
    ok_count=$(awk -F'\t' -v b="$b" '$1 == b && $2 == 0' "$CALLS" | wc -l)
    tolerated=$(awk -F'\t' -v b="$b" '$1 == b && $2 != 0 { printf " %s", $3 }' "$CALLS")
    tolerated_count=$(awk -F'\t' -v b="$b" '$1 == b && $2 != 0' "$CALLS" | wc -l)
    total=$((total + ok_count)) tolerated_total=$((tolerated_total + tolerated_count))
    summary="ok  block $b (line ${LINES[i]}): $ok_count curl calls"
    [[ -z $ok_statuses ]] || summary+=", statuses$ok_statuses"
    ((tolerated_count == 0)) || summary+="; $tolerated_count failed calls the block handled (statuses$tolerated)"
    echo "$summary"
  done
  extra=""
  ((tolerated_total == 0)) || extra=" (and $tolerated_total failed calls the blocks handled, e.g. readiness loops)"
  echo "README: ${#BLOCKS[@]} blocks, $total curl calls$extra, all ok ($((SECONDS - START)) s)"
  exit 0
fi

read -r _ b line offset <<<"${last:-begin 0 0 0}"
if ((b == 0)); then
  say "the run failed before its first block (exit $rc):"
  tail -n 40 "$LOG" >&2
  exit 1
fi
if ((timed_out)); then
  say "FAILED: timed out after $TIMEOUT s in README block $b (line $line)"
elif ((rc == 0)); then
  say "FAILED: the run stopped in README block $b (line $line) without reaching the end (an 'exit'?)"
elif ((rc == 97)); then
  say "FAILED: README block $b (line $line): a curl call answered 5xx"
else
  say "FAILED: README block $b (line $line): a command exited $rc"
fi
while IFS=$'\t' read -r _ crc status cmd; do
  say "  curl exited $crc, HTTP status $status: $cmd"
done < <(awk -F'\t' -v b="$b" '$1 == b && $2 == 0 && $3 ~ /^5/' "$CALLS"
         awk -F'\t' -v b="$b" '$1 == b { last = $0 } END { split(last, f, "\t"); if (f[2] != 0) print last }' "$CALLS")
{
  echo "---- block $b (line $line of $README), as run:"
  sed -n "/^__readme_begin $b [0-9]*\$/,/^__readme_end $b\$/p" "$RUNNER" | sed '1d;$d'
  echo "---- its output (last 40 lines; all of it in $LOG):"
  tail -c +"$((offset + 1))" "$LOG" | tail -n 40
} >&2
exit 1
