#!/usr/bin/env bash
# Runs every test: the in-backend #[pg_test]s, the multi-connection tests in tests/ (each on
# a throwaway cluster of its own) and the examples/ against their recorded output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo pgrx test pg15 --runas postgres --pgdata /tmp/pgrx-pgdata 2>&1 | tee "$log" || status=$?
# one line for all test binaries together
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
