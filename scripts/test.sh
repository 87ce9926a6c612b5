#!/usr/bin/env bash
# The test suite, as `make test` and CI run it:
#   1. everything (unit, web, integration, reliability, security, e2e) on SQLite;
#   2. every tier that touches the database again on PostgreSQL (--db=postgres) when
#      LATENTLAB_TEST_POSTGRES_URL is set: web, integration, reliability (its both_backends tests) and
#      security, so each of those tests runs on both backends. LATENTLAB_REQUIRE_POSTGRES=1 (CI) makes a
#      missing URL an error instead of a silently skipped second pass.
# Extra arguments go to both pytest runs (e.g. scripts/test.sh -x -k up).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

if [[ -z "${LATENTLAB_TEST_POSTGRES_URL:-}" && "${LATENTLAB_REQUIRE_POSTGRES:-0}" == 1 ]]; then
  echo "LATENTLAB_REQUIRE_POSTGRES=1 but LATENTLAB_TEST_POSTGRES_URL is not set" >&2
  exit 1
fi

# both passes run even when the first fails, so one CI run reports everything; non-zero if either failed
status=0
echo "== tests on SQLite"
"$PY" -m pytest "$@" || status=$?

if [[ -n "${LATENTLAB_TEST_POSTGRES_URL:-}" ]]; then
  echo "== web, integration, reliability and security tests on PostgreSQL"
  "$PY" -m pytest --db=postgres tests/web tests/integration tests/reliability tests/security "$@" || status=$?
else
  echo "== PostgreSQL pass skipped: set LATENTLAB_TEST_POSTGRES_URL to run the database tiers on it"
fi
exit "$status"
