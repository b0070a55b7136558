#!/usr/bin/env bash
# Static checks of the container files (no Docker engine needed):
#   docker/Dockerfile      with hadolint, and its build context with scripts/check-docker-context.sh
#                          (assembles what the build stage gets, runs `cargo check` on it)
#   docker/compose.yaml    with docker-compose (parses and validates it; a missing bootstrap
#                          key must stop it; every file it mounts exists)
#   docker/prometheus.yml  with promtool, and the alerting rules docker/alerts.yml with their
#                          unit tests docker/alerts.test.yml
#   docker/grafana/        the dashboard is valid JSON with sane panels (jq), and it and the
#                          alerting rules name only metrics listed in docker/metrics.txt
# Installs nothing: the caller provides hadolint (or HADOLINT=/path/to/hadolint),
# docker-compose, promtool, jq, openssl and cargo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() { echo "check-docker: $*" >&2; exit 1; }
for tool in docker-compose promtool jq openssl; do
  command -v "$tool" >/dev/null || fail "$tool not found (Debian package: ${tool/promtool/prometheus})"
done

echo "==> hadolint docker/Dockerfile"
"${HADOLINT:-hadolint}" docker/Dockerfile

echo "==> scripts/check-docker-context.sh (the build stage's context builds)"
scripts/check-docker-context.sh docker/Dockerfile

echo "==> docker-compose -f docker/compose.yaml config -q"
# The compose file requires the bootstrap key from the environment: one made as its header
# says (openssl, no contextd binary), which must be well-formed, as contextd checks at start.
key="ctxd_$(openssl rand -hex 32 | cut -c1-43)"
[[ $key =~ ^ctxd_[0-9A-Za-z]{43}$ ]] || fail "the documented openssl recipe made a malformed key: $key"
CONTEXTD_BOOTSTRAP_KEY=${CONTEXTD_BOOTSTRAP_KEY:-$key} docker-compose -f docker/compose.yaml config -q
# Without the key compose must stop, naming it (an empty env file: a docker/.env must not count).
no_env=$(mktemp -t check-docker.XXXXXX)
trap 'rm -f "$no_env"' EXIT
if out=$(env -u CONTEXTD_BOOTSTRAP_KEY docker-compose --env-file "$no_env" -f docker/compose.yaml config -q 2>&1); then
  fail "compose accepted a missing CONTEXTD_BOOTSTRAP_KEY"
fi
[[ $out == *"set CONTEXTD_BOOTSTRAP_KEY"* ]] || fail "compose failed without CONTEXTD_BOOTSTRAP_KEY, but not saying so: $out"
# Every file or folder compose.yaml bind-mounts (./ is docker/) must exist.
while read -r src; do
  [[ -e docker/$src ]] || fail "docker/compose.yaml mounts ./$src, which does not exist"
done < <(sed -nE 's/^[[:space:]]*-[[:space:]]*"?\.\/([^:"]+):.*/\1/p' docker/compose.yaml)

echo "==> promtool check config docker/prometheus.yml"
promtool check config docker/prometheus.yml
echo "==> promtool check rules docker/alerts.yml"
promtool check rules docker/alerts.yml
echo "==> promtool test rules docker/alerts.test.yml"
promtool test rules docker/alerts.test.yml

DASHBOARD=docker/grafana/dashboards/contextd.json
echo "==> jq: $DASHBOARD"
jq -e 'type == "object"' "$DASHBOARD" >/dev/null || fail "$DASHBOARD is not a JSON object"
jq -e '(.uid | type == "string" and length > 0) and (.title | type == "string" and length > 0)' "$DASHBOARD" >/dev/null ||
  fail "$DASHBOARD needs a uid and a title"
jq -e '[.panels[].id] | length == (unique | length)' "$DASHBOARD" >/dev/null || fail "$DASHBOARD: panel ids are not unique"
bad=$(jq -r '.panels[] | select(.type != "row")
  | select(([.targets[]? | .expr | select(type == "string" and length > 0)] | length) == 0
           or .datasource.uid != "${datasource}" or (.gridPos | type) != "object")
  | .title' "$DASHBOARD")
[[ -z $bad ]] || fail "$DASHBOARD: panels without a query, the \${datasource} variable or a gridPos: $bad"

# check_metric_names WHAT: every PromQL expression on stdin (one a line) names only metrics
# of docker/metrics.txt (a histogram also as _bucket, _sum, _count). What is left of an
# expression without its strings, label matchers, ranges, variables, by/on clauses and
# function names (a name before "(") is numbers, keywords and metric names.
declare -A KNOWN=()
while read -r name type _; do
  [[ -z $name || $name == \#* ]] && continue
  KNOWN[$name]=1
  if [[ $type == histogram ]]; then KNOWN[${name}_bucket]=1 KNOWN[${name}_sum]=1 KNOWN[${name}_count]=1; fi
done <docker/metrics.txt
check_metric_names() {
  local what=$1 expr token n=0 status=0
  while IFS= read -r expr; do
    n=$((n + 1))
    while IFS= read -r token; do
      case $token in '' | [0-9]* | and | or | unless | bool | offset | group_left | group_right | inf | nan | Inf | NaN) continue ;; esac
      [[ -n ${KNOWN[$token]:-} ]] && continue
      echo "check-docker: $what names '$token', not a metric in docker/metrics.txt: $expr" >&2
      status=1
    done < <(sed -E -e 's/"([^"\\]|\\.)*"//g' -e 's/\$\{[^}]*\}//g' -e 's/\$[A-Za-z_][A-Za-z0-9_]*//g' \
               -e 's/\{[^}]*\}//g' -e 's/\[[^]]*\]//g' \
               -e 's/label_values\(([^,)]*),[^)]*\)/\1/g' \
               -e 's/(^|[^A-Za-z0-9_:])(by|without|on|ignoring|group_left|group_right)[[:space:]]*\([^)]*\)/\1/g' \
               -e 's/[A-Za-z_:][A-Za-z0-9_:]*[[:space:]]*\(/(/g' <<<"$expr" | tr -cs 'A-Za-z0-9_:' '\n')
  done
  ((n > 0)) || { echo "check-docker: no expressions found in $what" >&2; return 1; }
  ((status == 0)) && echo "check-docker: the $n expressions of $what name only known metrics"
  return "$status"
}
echo "==> metric names in the dashboard and the alerting rules (docker/metrics.txt)"
# The check itself must catch an unknown name (or it would pass anything).
if check_metric_names "a self-test" <<<'sum by (job) (rate(contextd_no_such_metric_total{job="x"}[5m]))' 2>/dev/null; then
  fail "the metric-name check let an unknown metric through"
fi
jq -r '[.. | objects | .expr? | strings], [.templating.list[]? | .definition?, (.query | if type == "object" then .query else . end)? | strings | select(test("\\("))]
  | .[]' "$DASHBOARD" | check_metric_names "$DASHBOARD"
# One line an expr in alerts.yml (a block scalar would hide the rest of it from this check).
if grep -qE '^[[:space:]]*expr:[[:space:]]*[|>]' docker/alerts.yml; then
  fail "docker/alerts.yml: keep each expr on one line (the metric-name check reads lines)"
fi
sed -nE "s/^[[:space:]]*expr:[[:space:]]*//p" docker/alerts.yml | sed -E "s/^'(.*)'\$/\1/; s/^\"(.*)\"\$/\1/" |
  check_metric_names docker/alerts.yml
