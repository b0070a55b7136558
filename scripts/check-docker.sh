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
docker-compose -f docker/compose.yaml config -q

echo "==> promtool check config docker/prometheus.yml"
promtool check config docker/prometheus.yml
