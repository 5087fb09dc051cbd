#!/usr/bin/env bash
# Runs every test on every supported PostgreSQL (15, 17 and 18; PG=17 names one): the
# in-backend #[pg_test]s, the multi-connection tests in tests/ (each on a throwaway cluster
# of its own), the examples/ against their recorded output, and the packages
# (scripts/package.sh builds them first) installed and used as a user would.
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_MAJORS="${PG:-15 17 18}"
source scripts/setup.sh
echo "== installing pg_exactly_router into PostgreSQL 15 (tests/sharded.rs)"
install_router
echo "== building the packages the package tests install (debug builds)"
PROFILE=debug bash scripts/package.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
summaries=()
for major in $PG_MAJORS; do
    echo "== PostgreSQL $major"
    : >"$log"
    export PG_CONFIG
    PG_CONFIG=$(pg_config_of "$major")
    cargo pgrx test "pg$major" --runas postgres --pgdata "/tmp/pgrx-pgdata-$major" 2>&1 | tee "$log" || status=$?
    # one line per version for all its test binaries together
    summaries+=("$(awk -v major="$major" '/^test result:/ { p += $4; f += $6 }
        END { printf "PostgreSQL %s: %d passed, %d failed", major, p, f }' "$log")")
done
printf '%s\n' "${summaries[@]}"
printf '%s\n' "${summaries[@]}" | awk '{ p += $3; f += $5 } END { printf "all tests: %d passed, %d failed\n", p, f }'
exit "$status"
