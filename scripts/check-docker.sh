#!/usr/bin/env bash
# Static checks of the container files (no Docker engine needed):
#   docker/Dockerfile      with hadolint
#   docker/compose.yaml    with docker-compose (parses and validates it)
#   docker/prometheus.yml  with promtool
# Installs nothing: the caller provides hadolint (or HADOLINT=/path/to/hadolint),
# docker-compose and promtool.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> hadolint docker/Dockerfile"
"${HADOLINT:-hadolint}" docker/Dockerfile

echo "==> docker-compose -f docker/compose.yaml config -q"
# The compose file requires the bootstrap key from the environment; a well-formed stand-in.
CONTEXTD_BOOTSTRAP_KEY=${CONTEXTD_BOOTSTRAP_KEY:-ctxd_0000000000000000000000000000000000000000000} \
    docker-compose -f docker/compose.yaml config -q
if env -u CONTEXTD_BOOTSTRAP_KEY docker-compose -f docker/compose.yaml config -q 2>/dev/null; then
    echo "check-docker: compose accepted a missing CONTEXTD_BOOTSTRAP_KEY" >&2
    exit 1
fi

echo "==> promtool check config docker/prometheus.yml"
promtool check config docker/prometheus.yml
