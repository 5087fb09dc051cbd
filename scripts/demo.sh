#!/usr/bin/env bash
# Sets up everything, builds and installs pg_exactly, starts a throwaway cluster and runs the
# seeds' scenarios with real concurrency (pgbench, many connections), printing the proof.
# On PostgreSQL 15 (Debian's), or PG=17 / PG=18 (built once from Debian's sources).
# KEEP_CLUSTER=1 leaves the cluster running afterwards for psql.
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_MAJORS="${PG:-15}"
echo "== the pg_exactly demo, on PostgreSQL $PG_MAJORS"
source scripts/setup.sh
source scripts/cluster.sh

echo "== building and installing pg_exactly"
install_extension >/dev/null

cluster_start -c max_connections=120
echo "== running on: $(psql -X -A -t -c 'SELECT version()')"
trap '[ "${KEEP_CLUSTER:-}" = 1 ] || cluster_stop' EXIT
psql_quiet() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
pgbench_run() { pgbench -n -c 50 -j 2 -t "$1" -f "$2" "$3" >/dev/null; }

echo
echo "== seed 001: ~1000 invoices created at once by background jobs, tenants 11 and 12"
echo "   50 connections x 20 inserts each, all at the same time (pgbench)"
echo
echo "-- the seed's first attempt: read max(number) + 1 in a trigger, then insert"
psql_quiet -c "CREATE DATABASE naive" -c "CREATE DATABASE exactly"
psql_quiet -d naive -f demo/invoices_naive.sql
pgbench_run 20 demo/invoice.pgbench naive
psql_quiet -d naive -f demo/invoices_proof.sql

echo "-- pg_exactly: BEFORE INSERT trigger exactly.assign_invoice_number('tenant_identifier', 'invoice_number')"
psql_quiet -d exactly -f demo/invoices_exactly.sql
pgbench_run 20 demo/invoice.pgbench exactly
psql_quiet -d exactly -f demo/invoices_proof.sql

echo "-- 500 more, one transaction in five rolled back after taking its number"
pgbench_run 10 demo/invoice_rollback.pgbench exactly
psql_quiet -d exactly -f demo/invoices_proof.sql
psql_quiet -d exactly -c "SELECT tenant, prefix, width, next_value FROM exactly.invoice_sequences ORDER BY tenant"

echo
echo "== seed 000: a raffle of 100,500 tickets filled by 101 batch jobs (100 x 1000 + 500),"
echo "   every job run twice, in random order, 16 at a time (pgbench)"
echo
psql_quiet -c "CREATE DATABASE naive_tickets" -c "CREATE DATABASE tickets"
echo "-- the seed's first attempt: read what is left, insert the batch, count it (no lock)"
psql_quiet -d naive_tickets -f demo/tickets_jobs.sql -f demo/tickets_naive.sql
pgbench -n -c 16 -j 2 -t 13 -f demo/tickets_naive.pgbench naive_tickets >/dev/null
psql_quiet -d naive_tickets -f demo/tickets_proof.sql
echo "-- pg_exactly: exactly.batch_create_tickets(raffle, n, batch_key)"
psql_quiet -d tickets -f demo/tickets_jobs.sql
pgbench -n -c 16 -j 2 -t 13 -f demo/tickets.pgbench tickets >/dev/null
psql_quiet -d tickets -f demo/tickets_proof.sql

echo
echo "== seed 004: payments with a running balance, recorded by 32 background jobs at once,"
echo "   20 payments each (pgbench)"
echo
psql_quiet -c "CREATE DATABASE naive_ledger" -c "CREATE DATABASE ledger"
echo "-- the seed's first attempt: read the last payment's running balance, add, insert"
psql_quiet -d naive_ledger -f demo/ledger_naive.sql
pgbench -n -c 32 -j 2 -t 20 -f demo/ledger_naive.pgbench naive_ledger >/dev/null
psql_quiet -d naive_ledger -v payments=naive_payments -f demo/ledger_proof.sql
echo "-- pg_exactly: exactly.append_payment(amount)"
psql_quiet -d ledger -c "CREATE EXTENSION pg_exactly"
pgbench -n -c 32 -j 2 -t 20 -f demo/ledger.pgbench ledger >/dev/null
psql_quiet -d ledger -v payments=exactly.payments -f demo/ledger_proof.sql
psql_quiet -d ledger -c "SELECT * FROM exactly.verify_ledger()"

echo
echo "== seed 002: counter caches found-or-created and counted by 1000 background jobs,"
echo "   50 at a time, over 10 keys that do not exist yet (pgbench)"
echo
psql_quiet -c "CREATE DATABASE naive_counters" -c "CREATE DATABASE counters"
echo "-- the seed's first attempt: find_or_create_by! (select, then insert) and value += 1"
psql_quiet -d naive_counters -f demo/counters_naive.sql
pgbench_run 20 demo/counters_naive.pgbench naive_counters
psql_quiet -d naive_counters -f demo/counters_proof.sql
echo "-- pg_exactly: exactly.find_or_create(...) and exactly.increment(...)"
psql_quiet -d counters -f demo/counters_exactly.sql
pgbench_run 20 demo/counters.pgbench counters
psql_quiet -d counters -f demo/counters_proof.sql

echo
echo "== seed 003: 20,000 resources synced to a third party by 8 sync jobs at once,"
echo "   100 per batch, 5 ms per third-party call (pgbench)"
echo
psql_quiet -c "CREATE DATABASE naive_sync" -c "CREATE DATABASE sync"
echo "-- the seed's job before its fix: select pending, send, mark synced (no lock)"
psql_quiet -d naive_sync -f demo/sync_setup.sql
pgbench -n -c 8 -j 2 -t 30 -f demo/sync_naive.pgbench naive_sync >/dev/null
psql_quiet -d naive_sync -f demo/sync_proof.sql
echo "-- pg_exactly: exactly.claim_batch(...), send, exactly.complete_batch(claim); the 8 jobs run side by side"
psql_quiet -d sync -c "CREATE EXTENSION pg_exactly" -f demo/sync_setup.sql
pgbench -n -M prepared -c 8 -j 2 -t 30 -f demo/sync.pgbench sync >/dev/null
psql_quiet -d sync -f demo/sync_proof.sql

echo
echo "== seed 003 with a lease held across the third-party call instead of a lock: 8 sync jobs,"
echo "   a 20 ms lease, third-party calls that stall 0-40 ms (pgbench)"
echo
psql_quiet -c "CREATE DATABASE naive_lease" -c "CREATE DATABASE lease"
echo "-- a lease table without fencing: a job that stalled past its lease still writes"
psql_quiet -d naive_lease -f demo/lease_naive.sql
pgbench -n -c 8 -j 2 -T 3 -f demo/lease.pgbench naive_lease >/dev/null
psql_quiet -d naive_lease -f demo/lease_proof.sql
echo "-- pg_exactly: exactly.acquire_lease(...), then exactly.check_fence(...) before the write"
psql_quiet -d lease -f demo/lease_exactly.sql
pgbench -n -c 8 -j 2 -T 3 -f demo/lease.pgbench lease >/dev/null
psql_quiet -d lease -f demo/lease_proof.sql
psql_quiet -d lease -c "SELECT fence AS grants FROM exactly.leases"

if [ "${PG_MAJORS%% *}" = 15 ]; then
    echo
    echo "== past one server: seed 004 and seed 001 for 16 tenants on four shard databases behind"
    echo "   a router (pg_exactly_router, PL/Proxy), 16 connections x 50 jobs (pgbench) on the router"
    install_router
    for k in 0 1 2 3; do
        psql_quiet -c "CREATE DATABASE shard$k"
        psql_quiet -d "shard$k" -c "CREATE EXTENSION pg_exactly" -c "SELECT exactly.set_shard($k)" >/dev/null
    done
    psql_quiet -c "CREATE DATABASE router"
    psql_quiet -d router -v host="$PGHOST" -v port="$PGPORT" -f demo/router_setup.sql
    pgbench -n -c 16 -j 2 -t 50 -f demo/router_transfers.pgbench router >/dev/null
    psql_quiet -d router -f demo/router_proof.sql
fi

if [ "${KEEP_CLUSTER:-}" = 1 ]; then
    echo "The cluster is still running. Connect with:"
    echo "    $CLUSTER_BIN/psql -h $CLUSTER_DIR -U postgres exactly"
    echo "Stop it with:"
    echo "    runuser -u postgres -- $CLUSTER_BIN/pg_ctl -D $CLUSTER_DIR/data stop && rm -rf $CLUSTER_DIR"
else
    echo "Done; the cluster is stopped. To keep one running for psql: KEEP_CLUSTER=1 bash scripts/demo.sh"
fi
