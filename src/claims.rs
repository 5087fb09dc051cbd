//! Exactly-once work claims on the user's own table (seed 003).
//!
//! Many workers sync disjoint batches at once: `claim_batch` hands each pending row
//! (`done_column IS NULL`) to one live claim, `complete_batch` marks the claim's rows done.
//! A claim lives in `exactly.claims` (one row per batch: the rows' primary keys and a
//! lease), so it outlives the claiming transaction and works behind a transaction-pooling
//! PgBouncer: a worker claims, commits, calls the third party, completes.
//!
//! Why a row is never in two live claims:
//! - claimers lock the rows they pick (`FOR NO KEY UPDATE SKIP LOCKED`): two claimers at
//!   the same moment skip each other's rows instead of waiting;
//! - a claimer whose snapshot predates another claim's commit may still pick that claim's
//!   rows once their locks are gone, so the claim is written with a second look, in a new
//!   statement (a new snapshot, taken while we hold the rows' locks) that drops every row a
//!   live claim holds;
//! - a lease that ran out is taken back only by deleting its claim, and `complete_batch`
//!   completes only by deleting its own claim row while its lease still runs: the two
//!   delete the same row, so exactly one of them wins.
//!
//! Where a claim looks: rows are handed out in key order, so the pending rows after the
//! newest claimed key are held by no claim, and a claim looks there first. Looking at every
//! pending row means passing every row live claims hold (16 workers x 100 rows), so it is
//! done only when that first look comes up short and every 16th claim of a backend, which
//! is how rows given back behind the newest claim come round again.

use std::cell::Cell;
use std::collections::HashSet;

use pgrx::datum::{DatumWithOid, Interval};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PgBuiltInOids, PgRelation, Uuid};

use crate::errors::{raise, required};
use crate::spi_plans;
use crate::user_tables::{self, Column, RowJson, UserTable};

const REGCLASS: PgOid = PgOid::BuiltIn(PgBuiltInOids::REGCLASSOID);
const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
const INTERVAL: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALOID);
const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);

/// Most rows one claim hands out (they are returned in one result).
const MAX_BATCH: i32 = 100_000;
/// How often one call picks rows again when all it picked went to claims that committed
/// meanwhile (then it returns nothing, as if nothing were pending, rather than loop on).
const MAX_PICKS: usize = 8;
/// See `full_look_due`.
const FULL_LOOK_EVERY: u32 = 16;

/// Delete the table's claims whose lease ran out (their rows are pending again) and count
/// a failed attempt for each of their rows. Done before every look at the rows before the
/// newest claim (only such a look can hand those rows out again).
const TAKE_BACK_EXPIRED: &str = "WITH expired AS (
        DELETE FROM exactly.claims WHERE rel = $1 AND leased_until <= clock_timestamp()
        RETURNING row_keys)
    INSERT INTO exactly.claim_attempts AS a (rel, row_key, failed_attempts, last_failed_at)
    SELECT $1, k, count(*), clock_timestamp() FROM expired, unnest(row_keys) k GROUP BY k
    ON CONFLICT (rel, row_key) DO UPDATE
    SET failed_attempts = a.failed_attempts + excluded.failed_attempts,
        last_failed_at = excluded.last_failed_at";
/// Write the claim for the picked rows ($3) that no live claim holds, seen afresh.
const WRITE_CLAIM: &str =
    "INSERT INTO exactly.claims (claim, rel, done_column, row_keys, leased_until)
    SELECT gen_random_uuid(), $1, $2, array_agg(k ORDER BY o), clock_timestamp() + $4
    FROM unnest($3::text[]) WITH ORDINALITY AS picked(k, o)
    WHERE k NOT IN (SELECT unnest(c.row_keys) FROM exactly.claims c
                    WHERE c.rel = $1 AND c.leased_until > clock_timestamp())
    HAVING count(*) > 0
    RETURNING claim, row_keys";
/// End a live claim: its table, done column and rows; nothing when it is stale.
const END_CLAIM: &str = "DELETE FROM exactly.claims
    WHERE claim = $1 AND leased_until > clock_timestamp()
    RETURNING rel, done_column, row_keys";
const EXTEND: &str = "UPDATE exactly.claims SET leased_until = clock_timestamp() + $2
    WHERE claim = $1 AND leased_until > clock_timestamp()
    RETURNING cardinality(row_keys)::bigint";
const RELEASE: &str = "WITH released AS (
        DELETE FROM exactly.claims WHERE claim = $1 AND leased_until > clock_timestamp()
        RETURNING rel, row_keys)
    INSERT INTO exactly.claim_attempts AS a (rel, row_key, failed_attempts, last_failed_at)
    SELECT rel, k, 1, clock_timestamp() FROM released, unnest(row_keys) k
    ON CONFLICT (rel, row_key) DO UPDATE
    SET failed_attempts = a.failed_attempts + 1, last_failed_at = excluded.last_failed_at
    RETURNING 1";

/// Hand up to `batch` pending rows of `rel` (`done_column IS NULL`, held by no live claim)
/// to a new claim for `lease`; one result row per claimed row, none when nothing is pending.
#[pg_extern(volatile, parallel_unsafe)]
fn claim_batch(
    rel: Option<PgRelation>,
    done_column: Option<&str>,
    batch: default!(Option<i32>, 100),
    lease: default!(Option<Interval>, "'5 minutes'"),
) -> TableIterator<'static, (name!(claim, Uuid), name!(data, RowJson))> {
    let rel = required(rel, "rel");
    let done_column = required(done_column, "done_column");
    let batch = required(batch, "batch");
    let lease = required(lease, "lease");
    if !(1..=MAX_BATCH).contains(&batch) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("batch = {batch} is out of range"),
            format!("claim between 1 and {MAX_BATCH} rows at a time"),
        );
    }
    check_lease(&lease);
    // SAFETY: the current context is the caller's; rows are copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    let claimed = Spi::connect_mut(|client| {
        let table = user_tables::open(rel.oid());
        let (key, done) = (primary_key(&table), done_column_of(&table, done_column));
        // SAFETY: a regclass datum is the relation's oid.
        let rel_arg = || unsafe { spi_plans::arg(pg_sys::Datum::from(rel.oid()), pg_sys::REGCLASSOID) };
        // A round finds nothing to hold only when every row it picked went to claims that
        // committed after its first look; the next round's look sees those claims.
        for _ in 0..MAX_PICKS {
            let mut full_look = full_look_due();
            let mut picked = vec![];
            if !full_look {
                picked = pick(client, &table, key, done, (rel_arg(), batch, Look::AfterNewestClaim), outer);
                // little after the newest claim: look at every pending row
                full_look = picked.len() < batch as usize;
            }
            if full_look {
                spi_plans::run(client, TAKE_BACK_EXPIRED, &[REGCLASS], &[rel_arg()]);
                picked = pick(client, &table, key, done, (rel_arg(), batch, Look::Everywhere), outer);
            }
            if picked.is_empty() {
                return vec![];
            }
            let keys: Vec<String> = picked.iter().map(|(k, _)| k.clone()).collect();
            let written = spi_plans::run(
                client,
                WRITE_CLAIM,
                &[REGCLASS, TEXT, TEXT_ARRAY, INTERVAL],
                &[rel_arg(), done_column.into(), keys.into(), lease.into()],
            );
            if written.is_empty() {
                continue;
            }
            let row = written.first();
            let claim: Uuid = row.get(1).unwrap().unwrap();
            let held: HashSet<String> = row.get::<Vec<String>>(2).unwrap().unwrap().into_iter().collect();
            return picked
                .into_iter()
                .filter(|(k, _)| held.contains(k))
                .map(|(_, data)| (claim, data))
                .collect();
        }
        vec![]
    });
    TableIterator::new(claimed)
}

thread_local! {
    /// Claims this backend made since it last looked at every pending row.
    static CLAIMS_SINCE_FULL_LOOK: Cell<u32> = const { Cell::new(0) };
}

/// Whether this claim looks at every pending row rather than only at those after the
/// newest claim: every FULL_LOOK_EVERY-th claim of a backend, so rows given back before the
/// newest claim (its lease ran out, it was released, or it committed late with a lower
/// key) wait for a few claims, never for the queue to drain.
fn full_look_due() -> bool {
    CLAIMS_SINCE_FULL_LOOK.with(|n| {
        let due = n.get() >= FULL_LOOK_EVERY;
        n.set(if due { 0 } else { n.get() + 1 });
        due
    })
}

/// Where `pick` looks for pending rows.
enum Look {
    /// After the highest key any claim of the table holds, live or expired: claims hand out
    /// rows in key order, so the rows there are held by no claim, and rows of an expired
    /// claim are left to a full look, which takes the claim back first.
    AfterNewestClaim,
    /// Every pending row no live claim holds (after expired claims were taken back).
    Everywhere,
}

/// Lock and return (key, row as jsonb) of up to `batch` pending rows in key order, skipping
/// rows other claimers are locking right now.
fn pick(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &Column,
    done: &Column,
    (rel, batch, look): (DatumWithOid<'_>, i32, Look),
    outer: pg_sys::MemoryContext,
) -> Vec<(String, RowJson)> {
    let (k, d, key_type) = (key.sql(), done.sql(), key.type_sql());
    // Rows are converted to jsonb only once locked: a row skipped costs no conversion. The
    // batch size is written into the SQL: with a LIMIT parameter the planner prices the
    // kept plan for a tenth of the table and plans every call afresh instead.
    let statement = |filter: String| {
        format!(
            "WITH picked AS (
                 SELECT t.ctid FROM {table} AS t
                 WHERE t.{d} IS NULL AND {filter}
                 ORDER BY t.{k} LIMIT {batch}
                 FOR NO KEY UPDATE OF t SKIP LOCKED)
             SELECT t.{k}::text, to_jsonb(t) FROM {table} AS t
             WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM picked))
             ORDER BY t.{k}",
            table = table.name
        )
    };
    let filter = match look {
        Look::AfterNewestClaim => format!(
            "t.{k} > (SELECT max(row_keys[cardinality(row_keys)]::{key_type}) FROM exactly.claims
                      WHERE rel = $1)"
        ),
        Look::Everywhere => format!(
            "t.{k} NOT IN (SELECT c.key::{key_type} FROM exactly.claims, unnest(row_keys) AS c(key)
                           WHERE rel = $1 AND leased_until > clock_timestamp())"
        ),
    };
    let purpose = match look {
        Look::AfterNewestClaim => "pick after the newest claim",
        Look::Everywhere => "pick",
    };
    let mut rows = table.run(
        client,
        purpose,
        &[key.attno.into(), done.attno.into(), batch],
        |_| (statement(filter), vec![REGCLASS]),
        &[rel],
    );
    let mut picked = vec![];
    while rows.next().is_some() {
        let key = rows.get::<String>(1).unwrap().unwrap();
        // SAFETY: column 2 is to_jsonb(t).
        let data = unsafe { RowJson::copy(outer, rows.get_datum_by_ordinal(2).unwrap().unwrap()) };
        picked.push((key, data));
    }
    picked
}

/// Mark the rows of a live claim done (`done_column = now()`) and end the claim; returns
/// how many rows it marked. A claim whose lease ran out, or that was completed or released
/// already, marks nothing and returns 0.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_batch(claim: Option<Uuid>) -> i64 {
    let claim = required(claim, "claim");
    Spi::connect_mut(|client| {
        let ended = spi_plans::run(client, END_CLAIM, &[UUID], &[claim.into()]);
        if ended.is_empty() {
            return 0;
        }
        let row = ended.first();
        let relid: pg_sys::Oid = row.get(1).unwrap().unwrap();
        let done_column: String = row.get(2).unwrap().unwrap();
        let keys: Vec<String> = row.get(3).unwrap().unwrap();
        let table = user_tables::open(relid);
        let (key, done) = (primary_key(&table), done_column_of(&table, &done_column));
        table
            .run(client, "complete", &[key.attno.into(), done.attno.into()], |t| {
                let (k, d) = (key.sql(), done.sql());
                let sql = format!(
                    "UPDATE {} AS t SET {d} = now() WHERE t.{k} = ANY($1::{}[]) AND t.{d} IS NULL RETURNING 1",
                    t.name,
                    key.type_sql()
                );
                (sql, vec![TEXT_ARRAY])
            }, &[keys.into()])
            .len() as i64
    })
}

/// Give a live claim `lease` more time from now; returns how many rows it holds, 0 when it
/// is stale (then its rows may be in another claim already: stop working on them).
#[pg_extern(volatile, parallel_unsafe)]
fn extend_claim(claim: Option<Uuid>, lease: default!(Option<Interval>, "'5 minutes'")) -> i64 {
    let claim = required(claim, "claim");
    let lease = required(lease, "lease");
    check_lease(&lease);
    Spi::connect_mut(|client| {
        let extended = spi_plans::run(client, EXTEND, &[UUID, INTERVAL], &[claim.into(), lease.into()]);
        if extended.is_empty() {
            0
        } else {
            extended.first().get_one::<i64>().unwrap().unwrap()
        }
    })
}

/// Give a live claim's rows back now, undone (a failed attempt for each); returns how many.
#[pg_extern(volatile, parallel_unsafe)]
fn release_claim(claim: Option<Uuid>) -> i64 {
    let claim = required(claim, "claim");
    Spi::connect_mut(|client| spi_plans::run(client, RELEASE, &[UUID], &[claim.into()]).len() as i64)
}

fn check_lease(lease: &Interval) {
    if lease.as_micros() <= 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("lease {lease} is not positive"),
            "pass how long a worker may hold its rows, e.g. '5 minutes'",
        );
    }
}

/// The table's one-column primary key: what a claim records of each row.
fn primary_key(table: &UserTable) -> &Column {
    match table.primary_key() {
        Some([attno]) => table.by_attno(*attno),
        Some(columns) => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "table {} has a primary key of several columns {}",
                table.name,
                table.column_list(columns.iter().copied())
            ),
            "claims record rows by a one-column primary key; add one (e.g. an identity column)",
        ),
        None => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no primary key", table.name),
            "claims record rows by their primary key; add one (e.g. an identity column)",
        ),
    }
}

/// The done column: a timestamp (or date) column outside the key, set to now() on completion.
fn done_column_of<'t>(table: &'t UserTable, name: &str) -> &'t Column {
    let done = table.column(name, "done_column");
    if ![pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPOID, pg_sys::DATEOID].contains(&done.base_type) {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("column {} of {} is not a timestamp column", done.sql(), table.name),
            "done_column must be a timestamptz, timestamp or date column, NULL while the row is pending",
        );
    }
    done
}
