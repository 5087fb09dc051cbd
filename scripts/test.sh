#!/usr/bin/env bash
# Runs every test: the in-backend #[pg_test]s, the multi-connection tests in tests/ (each on
# a throwaway cluster of its own) and the examples/ against their recorded output.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo pgrx test pg15 --runas postgres --pgdata /tmp/pgrx-pgdata
