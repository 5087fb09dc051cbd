//! Exactly-once work claims on the user's own table (seed 003).
//!
//! Many workers sync disjoint batches at once: `claim_batch` hands each pending row
//! (`done_column IS NULL`) to one live claim, `complete_batch` marks the claim's rows done.
//! A claim lives in `exactly.claims` (one row per batch: the rows' primary keys and a
//! lease), so it outlives the claiming transaction and works behind a transaction-pooling
//! PgBouncer: a worker claims, commits, calls the third party, completes.
//!
//! Keys are kept as values of their own type, never as display text: a claim records each
//! row's primary key in its stored form (`UniqueKey::image`: the bytes the server stores,
//! whatever DateStyle, TimeZone or extra_float_digits say), compares those bytes only with
//! other images of the same rows, and turns them back into typed values to find the rows
//! again, compared by the primary key's own operator classes. Keys of any type with a btree
//! operator class, and of several columns, work alike.
//!
//! Why a row is never in two live claims:
//! - claimers lock the rows they pick (`FOR NO KEY UPDATE SKIP LOCKED`): two claimers at
//!   the same moment skip each other's rows instead of waiting;
//! - a claimer whose snapshot predates another claim's commit may still pick that claim's
//!   rows once their locks are gone, so the claim is written with a second look, in a new
//!   statement (a new snapshot, taken while we hold the rows' locks) that drops every row a
//!   claim holds (an expired claim too: another claimer may be taking it back and counting
//!   its failures) and every row held back; a round that had to drop rows is undone, so
//!   the locks on rows that went to other claims are let go at once;
//! - a lease that ran out is taken back only by deleting its claim, and `complete_batch`
//!   completes only by deleting its own claim row while its lease still runs: the two
//!   delete the same row, so exactly one of them wins.
//!
//! Why claims never deadlock with pg_exactly's other functions: a claimer never waits (its
//! row locks and its taking back of expired claims skip what is locked), and afterwards its
//! transaction waits for no lock of ours (`xact_lock::hold_rows_outside_the_order`). A
//! completion locks its rows without waiting, in a subtransaction; when one is busy it
//! rolls that back, holding nothing, and only then waits for the busy row's holder (or, if
//! its transaction already holds locks of ours, fails at once with 40001).
//!
//! Claims as a queue: a row whose claim ended without completing it (lease ran out,
//! release, `fail_rows`) gets a failed attempt in `exactly.claim_attempts`, judged by the
//! failing claim's own `max_attempts` (given up) and `retry_after` (not before
//! `retry_at`); such rows are held back from every look. `complete_rows` and `fail_rows`
//! finish part of a claim: they lock its row, take the named rows out of it, and mark or
//! count them.
//!
//! Where a claim looks: rows are handed out in key order, so the pending rows after the
//! newest claimed key are held by no claim, and a claim looks there first. Looking at every
//! pending row means passing every row live claims hold (16 workers x 100 rows), so it is
//! done only when that first look comes up short and every 16th claim of a backend, which
//! is how rows given back behind the newest claim come round again — and always while the
//! table has rows held back (they may lie after the newest claim) or with `order_by`.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use pgrx::datum::{DatumWithOid, Interval};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::{JsonB, PgBuiltInOids, Uuid};
use serde_json::Value;

use crate::errors::{positive, raise, required};
use crate::spi_plans::{self, types::*};
use crate::subtransaction;
use crate::user_tables::{self, Column, RelArg, RowJson, UniqueKey, UserTable};
use crate::xact_lock::{self, LockSpace};

const OID: PgOid = PgOid::BuiltIn(PgBuiltInOids::OIDOID);
const OID_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::OIDARRAYOID);
const BYTEA_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::BYTEAARRAYOID);
const JSONB_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBARRAYOID);
const INT4_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4ARRAYOID);

/// Most rows one claim hands out (they are returned in one result).
const MAX_BATCH: i32 = 100_000;
/// How often one call picks rows again when all it picked went to claims that committed
/// meanwhile (then it returns nothing, as if nothing were pending, rather than loop on).
const MAX_PICKS: usize = 8;
/// See `full_look_due`.
const FULL_LOOK_EVERY: u32 = 16;

/// The last (greatest) key of each claim of the table recorded with today's key types.
const LAST_KEYS: &str = "SELECT c.row_keys[pg_catalog.array_upper(c.row_keys, 1)]
    FROM exactly.claims c
    WHERE c.rel OPERATOR(pg_catalog.=) $1 AND c.key_types OPERATOR(pg_catalog.=) $2";
/// The keys the table's claims hold: live ones, and expired ones another claimer is taking
/// back right now (see WRITE_CLAIM).
const CLAIMED_KEYS: &str = "SELECT k.image
    FROM exactly.claims c, pg_catalog.unnest(c.row_keys) AS k(image)
    WHERE c.rel OPERATOR(pg_catalog.=) $1 AND c.key_types OPERATOR(pg_catalog.=) $2";
/// Rows of the table not to hand out: given up, or waiting to be retried.
const HELD_BACK: &str = "SELECT a.row_key FROM exactly.claim_attempts a
    WHERE a.rel OPERATOR(pg_catalog.=) $1
      AND (a.given_up_at IS NOT NULL OR a.retry_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())";
/// Rows of the table that failed `max_attempts` ($2) times or more (under claims without it).
const FAILED_TOO_OFTEN: &str = "SELECT a.row_key FROM exactly.claim_attempts a
    WHERE a.rel OPERATOR(pg_catalog.=) $1 AND a.failed_attempts OPERATOR(pg_catalog.>=) $2";

/// When a row that failed `n` times may be handed out again: `retry_after` x 2^(n-1) from
/// now (the exponent capped at 20, the delay at 100 years), or at once without retry_after.
macro_rules! retry_at {
    ($n:literal, $retry_after:literal) => {
        concat!(
            "CASE WHEN ", $retry_after, " IS NULL THEN NULL ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) ",
            "pg_catalog.make_interval(secs => LEAST(pg_catalog.date_part('epoch', ", $retry_after, ") ",
            "OPERATOR(pg_catalog.*) pg_catalog.power(2::pg_catalog.float8, ",
            "(LEAST(", $n, ", 21) OPERATOR(pg_catalog.-) 1)::pg_catalog.float8), 3153600000::pg_catalog.float8)) END"
        )
    };
}
/// Whether a row that failed `n` times is given up (now) under `max_attempts`.
macro_rules! given_up_at {
    ($n:literal, $max_attempts:literal) => {
        concat!("CASE WHEN ", $n, " OPERATOR(pg_catalog.>=) ", $max_attempts, " THEN pg_catalog.clock_timestamp() END")
    };
}
/// Count failed attempts: `$failed` defines CTEs ending in `failed(rel, image, key, k,
/// error, max_attempts, retry_after)`, k attempts of each row.
macro_rules! record_failures {
    ($failed:literal) => {
        concat!(
            "WITH ", $failed, "
            INSERT INTO exactly.claim_attempts AS a (rel, row_key, key, failed_attempts, last_failed_at,
                last_error, max_attempts, retry_after, retry_at, given_up_at)
            SELECT f.rel, f.image, f.key, f.k, pg_catalog.clock_timestamp(), f.error, f.max_attempts,
                f.retry_after, ", retry_at!("f.k", "f.retry_after"), ", ", given_up_at!("f.k", "f.max_attempts"), "
            FROM failed f
            ON CONFLICT (rel, row_key) DO UPDATE
            SET failed_attempts = a.failed_attempts OPERATOR(pg_catalog.+) excluded.failed_attempts,
                last_failed_at = excluded.last_failed_at, last_error = excluded.last_error,
                max_attempts = excluded.max_attempts, retry_after = excluded.retry_after,
                retry_at = ", retry_at!("(a.failed_attempts OPERATOR(pg_catalog.+) excluded.failed_attempts)", "excluded.retry_after"), ",
                given_up_at = COALESCE(a.given_up_at, ",
                    given_up_at!("(a.failed_attempts OPERATOR(pg_catalog.+) excluded.failed_attempts)", "excluded.max_attempts"), ")
            RETURNING 1"
        )
    };
}

/// Delete the table's claims whose lease ran out (their rows are pending again) and count
/// a failed attempt for each of their rows. Claims another transaction is ending are left
/// to it: taking back never waits.
const TAKE_BACK_EXPIRED: &str = record_failures!(
    "due AS (
        SELECT x.claim FROM exactly.claims x
        WHERE x.rel OPERATOR(pg_catalog.=) $1
          AND x.leased_until OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
        FOR UPDATE SKIP LOCKED),
    expired AS (
        DELETE FROM exactly.claims c USING due d WHERE c.claim OPERATOR(pg_catalog.=) d.claim
        RETURNING c.rel, c.row_keys, c.keys, c.max_attempts, c.retry_after),
    failed AS (
        SELECT e.rel, k.image,
               (pg_catalog.array_agg(COALESCE(e.keys[k.n::pg_catalog.int4], 'null'::pg_catalog.jsonb)))[1] AS key,
               pg_catalog.count(*)::pg_catalog.int4 AS k, 'the claim''s lease ran out'::pg_catalog.text AS error,
               pg_catalog.max(e.max_attempts) AS max_attempts, pg_catalog.max(e.retry_after) AS retry_after
        FROM expired e, pg_catalog.unnest(e.row_keys) WITH ORDINALITY AS k(image, n)
        WHERE k.image IS NOT NULL
        GROUP BY e.rel, k.image)"
);
/// Write the claim for the picked rows ($3 their keys' images, $4 the keys as JSON) that no
/// claim holds and that are not held back, seen afresh. Rows of an expired claim that
/// another claimer is taking back (its delete and failure count not committed yet) count
/// as held: handing them out now would pass the failure count it is about to record.
const WRITE_CLAIM: &str = "INSERT INTO exactly.claims
        (claim, rel, done_column, row_keys, keys, key_types, leased_until, max_attempts, retry_after)
    SELECT exactly.new_claim_id(), $1, $2, pg_catalog.array_agg(p.image ORDER BY p.n),
           pg_catalog.array_agg(p.key ORDER BY p.n), $5,
           pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $6, $7, $8
    FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4)) WITH ORDINALITY AS p(image, key, n)
    WHERE NOT (p.image OPERATOR(pg_catalog.=) ANY (
        SELECT h.image FROM exactly.claims c, pg_catalog.unnest(c.row_keys) AS h(image)
        WHERE c.rel OPERATOR(pg_catalog.=) $1))
      AND NOT (p.image OPERATOR(pg_catalog.=) ANY (
        SELECT a.row_key FROM exactly.claim_attempts a
        WHERE a.rel OPERATOR(pg_catalog.=) $1
          AND (a.given_up_at IS NOT NULL OR a.retry_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
               OR a.failed_attempts OPERATOR(pg_catalog.>=) $7)))
    HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0
    RETURNING claim, row_keys";
/// End a live claim: its table, done column, rows and key types; nothing when it is stale.
const END_CLAIM: &str = "DELETE FROM exactly.claims c
    WHERE c.claim OPERATOR(pg_catalog.=) $1
      AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING c.rel, c.done_column, c.row_keys, c.key_types";
const EXTEND: &str = "UPDATE exactly.claims c
    SET leased_until = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $2
    WHERE c.claim OPERATOR(pg_catalog.=) $1
      AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING pg_catalog.cardinality(c.row_keys)::pg_catalog.int8";
const RELEASE: &str = record_failures!(
    "released AS (
        DELETE FROM exactly.claims c
        WHERE c.claim OPERATOR(pg_catalog.=) $1
          AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
        RETURNING c.rel, c.row_keys, c.keys, c.max_attempts, c.retry_after),
    failed AS (
        SELECT r.rel, k.image, COALESCE(r.keys[k.n::pg_catalog.int4], 'null'::pg_catalog.jsonb) AS key,
               1 AS k, 'the claim was released'::pg_catalog.text AS error, r.max_attempts, r.retry_after
        FROM released r, pg_catalog.unnest(r.row_keys) WITH ORDINALITY AS k(image, n)
        WHERE k.image IS NOT NULL)"
);
/// A live claim, locked: part of it is about to be completed or failed.
const LOCK_CLAIM: &str = "SELECT c.rel, c.done_column, c.row_keys, c.keys, c.key_types, c.max_attempts, c.retry_after
    FROM exactly.claims c
    WHERE c.claim OPERATOR(pg_catalog.=) $1
      AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    FOR UPDATE";
/// Keep only the rows at positions $2 (in that order) in a live claim.
const KEEP_ROWS: &str = "UPDATE exactly.claims c
    SET row_keys = ARRAY(SELECT c.row_keys[i.n] FROM pg_catalog.unnest($2::pg_catalog.int4[]) WITH ORDINALITY AS i(n, o) ORDER BY i.o),
        keys = ARRAY(SELECT c.keys[i.n] FROM pg_catalog.unnest($2::pg_catalog.int4[]) WITH ORDINALITY AS i(n, o) ORDER BY i.o)
    WHERE c.claim OPERATOR(pg_catalog.=) $1
      AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";
/// End a live claim whose last rows were taken out.
const DROP_CLAIM: &str = "DELETE FROM exactly.claims c
    WHERE c.claim OPERATOR(pg_catalog.=) $1
      AND c.leased_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";
/// Count a failed attempt of the rows at positions $4 of a claim's stored keys $2 and JSON
/// keys $3, of table $1, with the error $5 and the claim's settings $6, $7.
const FAIL_ROWS: &str = record_failures!(
    "failed AS (
        SELECT $1::pg_catalog.regclass AS rel, ($2::pg_catalog.bytea[])[i.n] AS image,
               COALESCE(($3::pg_catalog.jsonb[])[i.n], 'null'::pg_catalog.jsonb) AS key, 1 AS k,
               $5::pg_catalog.text AS error, $6::pg_catalog.int4 AS max_attempts,
               $7::pg_catalog.interval AS retry_after
        FROM pg_catalog.unnest($4::pg_catalog.int4[]) AS i(n)
        WHERE ($2::pg_catalog.bytea[])[i.n] IS NOT NULL)"
);

/// Hand up to `batch` pending rows of `rel` (`done_column IS NULL`, held by no live claim,
/// neither given up nor waiting to be retried) to a new claim for `lease`; one result row
/// per claimed row, none when nothing is pending. With `complete`, that claim is completed
/// first, in the same transaction.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn claim_batch(
    rel: Option<RelArg>,
    done_column: Option<&str>,
    batch: default!(Option<i32>, 100),
    lease: default!(Option<Interval>, "'5 minutes'"),
    max_attempts: default!(Option<i32>, "NULL"),
    retry_after: default!(Option<Interval>, "NULL"),
    order_by: default!(Option<&str>, "NULL"),
    complete: default!(Option<Uuid>, "NULL"),
) -> TableIterator<'static, (name!(claim, Uuid), name!(data, RowJson))> {
    let rel = required(rel, "rel").open();
    let done_column = required(done_column, "done_column");
    let batch = required(batch, "batch");
    let lease = positive(lease, "lease");
    if !(1..=MAX_BATCH).contains(&batch) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("batch = {batch} is out of range"),
            format!("claim between 1 and {MAX_BATCH} rows at a time"),
        );
    }
    if let Some(n) = max_attempts.filter(|n| *n < 1) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_attempts = {n} is out of range"),
            "give up on a row after 1 or more failed attempts, or pass NULL never to give up",
        );
    }
    let retry_after = retry_after.map(|r| positive(Some(r), "retry_after"));
    // the worker's previous batch first: one commit for both
    if let Some(claim) = complete {
        complete_batch(Some(claim));
    }
    let table = user_tables::open(rel.oid());
    let key = primary_key(&table);
    let done = done_column_of(&table, key, done_column);
    let order = order_by.map(|name| table.column(name, "order_by"));
    let key_types = key_types(&table, key);
    // SAFETY: the current context is the caller's; rows are copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    let claimed = Spi::connect_mut(|client| {
        let relid = rel.oid();
        let mut held_back = held_back_keys(client, relid, max_attempts);
        // Rows after the newest claim are held by no claim, but may be held back, and are
        // not the oldest by another column.
        let mut full_look = !held_back.is_empty() || order.is_some() || full_look_due();
        // Claimers of a table pick one at a time: side by side they all start after the same
        // newest claim, and each skips, row by row, the rows the others are locking. The
        // queue is let go of once the claim is written, before the commit: the row locks and
        // the second look keep claims apart, not this; its holder never waits for anything.
        let queue = relid.to_u32().to_be_bytes();
        xact_lock::acquire(LockSpace::ClaimPick, queue, false);
        let claimed = (|| {
            // A round is undone (and its rows' locks let go) when some of the rows it picked went
            // to claims that committed after its first look: holding their locks to the end of
            // our transaction would make their owners' completions wait for us. The next round's
            // look sees those claims; the last round keeps what it got.
            for round in 1..=MAX_PICKS {
                if full_look {
                    // outside the round's subtransaction: a round undone keeps what it took back
                    spi_plans::run_as_owner(client, TAKE_BACK_EXPIRED, &[OID], &[relid.into()]);
                    held_back = held_back_keys(client, relid, max_attempts);
                }
                let mut came_up_short = false;
                let claimed = subtransaction::attempt(|| {
                    let picked = if full_look {
                        let skip = claimed_keys(client, &table, key, relid, &key_types, &held_back);
                        pick(client, &table, key, done, order, batch, Look::Everywhere(skip), outer)
                    } else if let Some(newest) = newest_claimed_key(client, &table, key, relid, &key_types) {
                        let rows = pick(client, &table, key, done, order, batch, Look::After(newest), outer);
                        if rows.len() < batch as usize {
                            // little after the newest claim: look at every pending row
                            came_up_short = true;
                            return None;
                        }
                        rows
                    } else {
                        // no claim at all (a lone worker that just completed its last one): every
                        // pending row is free, and there is nothing to take back
                        let nothing = key_arrays(&table, key, &[]);
                        pick(client, &table, key, done, order, batch, Look::Everywhere(nothing), outer)
                    };
                    if picked.is_empty() {
                        return Some(vec![]);
                    }
                    // Our transaction now holds row locks outside pg_exactly's lock order.
                    xact_lock::hold_rows_outside_the_order();
                    let images: Vec<Vec<u8>> = picked.iter().map(|row| row.image.clone()).collect();
                    let displays: Vec<pg_sys::Datum> = picked.iter().map(|row| row.display).collect();
                    // SAFETY: jsonb datums of the pick's result, copied into the array.
                    let displays = unsafe { array_of(&displays, pg_sys::JSONBOID) };
                    let args = [
                        relid.into(),
                        done_column.into(),
                        images.into(),
                        // SAFETY: a jsonb[] built just above, alive for the statement.
                        unsafe { spi_plans::arg(displays, pg_sys::JSONBARRAYOID) },
                        key_types.clone().into(),
                        lease.into(),
                        max_attempts.into(),
                        retry_after.into(),
                    ];
                    let written = spi_plans::run_as_owner(
                        client,
                        WRITE_CLAIM,
                        &[OID, TEXT, BYTEA_ARRAY, JSONB_ARRAY, OID_ARRAY, INTERVAL, INT4, INTERVAL],
                        &args,
                    );
                    if written.is_empty() {
                        return None;
                    }
                    let row = written.first();
                    let claim: Uuid = row.get(1).unwrap().unwrap();
                    let held: HashSet<Vec<u8>> = images_of(row.get::<Array<&[u8]>>(2).unwrap().unwrap());
                    if held.len() < picked.len() && round < MAX_PICKS {
                        return None;
                    }
                    Some(
                        picked
                            .into_iter()
                            .filter(|row| held.contains(&row.image))
                            .map(|row| (claim, row.data))
                            .collect(),
                    )
                });
                if let Some(claimed) = claimed {
                    return claimed;
                }
                full_look |= came_up_short;
            }
            vec![]
        })();
        xact_lock::release(LockSpace::ClaimPick, &queue);
        claimed
    });
    TableIterator::new(claimed)
}

/// The stored keys of the table's rows a claim must not hand out: given up, waiting to be
/// retried, or (with `max_attempts`) failed that often already.
fn held_back_keys(client: &mut SpiClient<'_>, relid: pg_sys::Oid, max_attempts: Option<i32>) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = spi_plans::run_as_owner(client, HELD_BACK, &[OID], &[relid.into()])
        .filter_map(|row| row.get::<Vec<u8>>(1).ok().flatten())
        .collect();
    if let Some(n) = max_attempts {
        let rows = spi_plans::run_as_owner(client, FAILED_TOO_OFTEN, &[OID, INT4], &[relid.into(), n.into()]);
        keys.extend(rows.filter_map(|row| row.get::<Vec<u8>>(1).ok().flatten()));
    }
    keys
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
    /// After the greatest key any claim of the table holds, live or expired (its values, in
    /// index order): claims hand out rows in key order, so the rows there are held by no
    /// claim, and rows of an expired claim are left to a full look, which takes the claim
    /// back first.
    After(Vec<pg_sys::Datum>),
    /// Every pending row no live claim holds (the live claims' keys: one array per key
    /// column, in index order), after expired claims were taken back.
    Everywhere(Vec<pg_sys::Datum>),
}

/// A row a claim picked and locked.
struct Picked {
    /// Its primary key's stored form.
    image: Vec<u8>,
    /// Its key as a JSON object, in SPI's memory (for the claim row).
    display: pg_sys::Datum,
    /// The row as jsonb, in the caller's memory.
    data: RowJson,
}

/// Lock and return up to `batch` pending rows in key order, skipping rows other claimers
/// are locking right now.
fn pick(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    done: &Column,
    order: Option<&Column>,
    batch: i32,
    look: Look,
    outer: pg_sys::MemoryContext,
) -> Vec<Picked> {
    let columns: Vec<String> = key.parts.iter().map(|p| format!("t.{}", table.by_attno(p.attno).sql())).collect();
    let (k, d) = (columns.join(", "), done.sql());
    // oldest first by the order_by column (rows without a value last), ties in key order
    let order_sql = match order {
        Some(column) => format!("t.{} NULLS LAST, {k}", column.sql()),
        None => k.clone(),
    };
    let display: Vec<String> = key
        .parts
        .iter()
        .map(|p| {
            let column = table.by_attno(p.attno);
            format!("{}, t.{}", sql_literal(&column.name), column.sql())
        })
        .collect();
    // Rows are converted to jsonb only once locked: a row skipped costs no conversion. The
    // batch size is written into the SQL: with a LIMIT parameter the planner prices the
    // kept plan for a tenth of the table and plans every call afresh instead.
    let statement = |filter: String| {
        format!(
            "WITH picked AS (
                 SELECT t.tableoid, t.ctid FROM {table} AS t
                 WHERE t.{d} IS NULL AND {filter}
                 ORDER BY {order_sql} LIMIT {batch}
                 FOR NO KEY UPDATE OF t SKIP LOCKED)
             SELECT {k}, pg_catalog.jsonb_build_object({display}), pg_catalog.to_jsonb(t.*)
             FROM {table} AS t
             WHERE {picked}
             ORDER BY {order_sql}",
            table = table.name,
            display = display.join(", "),
            picked = among_rows(table, "t", "picked"),
        )
    };
    let (purpose, values, element_types) = match look {
        Look::After(values) => ("pick after the newest claim", values, false),
        Look::Everywhere(arrays) => ("pick", arrays, true),
    };
    let types: Vec<PgOid> = key
        .parts
        .iter()
        .map(|p| {
            let column = table.by_attno(p.attno).type_oid;
            // SAFETY: a catalog lookup; the key's types have array types (key_types checks).
            PgOid::from(if element_types { unsafe { pg_sys::get_array_type(column) } } else { column })
        })
        .collect();
    let args: Vec<DatumWithOid> = values
        .iter()
        .zip(&types)
        // SAFETY: datums of those types, alive in SPI's memory for the statement.
        .map(|(&datum, &type_oid)| unsafe { spi_plans::arg(datum, type_oid.value()) })
        .collect();
    let mut shape = vec![done.attno.into(), batch, order.map_or(0, |c| c.attno.into())];
    shape.extend(key.parts.iter().map(|p| i32::from(p.attno)));
    let mut rows = table.run(
        client,
        purpose,
        &shape,
        |_| {
            let filter = if element_types {
                not_held(table, key, "t")
            } else {
                after(table, key, "t")
            };
            (statement(filter), types.clone())
        },
        &args,
    );
    let n = key.parts.len();
    let mut picked = vec![];
    while rows.next().is_some() {
        let values: Vec<pg_sys::Datum> = (1..=n)
            .map(|i| rows.get_datum_by_ordinal(i).unwrap().expect("primary keys are never NULL"))
            .collect();
        // SAFETY: the key's values in index order; column n+1 is the key as JSON, n+2 the row.
        let picked_row = unsafe {
            Picked {
                image: key.image(table, &values),
                display: rows.get_datum_by_ordinal(n + 1).unwrap().unwrap(),
                data: RowJson::copy(outer, rows.get_datum_by_ordinal(n + 2).unwrap().unwrap()),
            }
        };
        picked.push(picked_row);
    }
    picked
}

/// SQL: the row `alias` is one of the rows (tableoid, ctid) of CTE `rows`. A TID scan finds
/// them; a partitioned table's partitions each have their own ctids, so there the
/// partition must match too.
fn among_rows(table: &UserTable, alias: &str, rows: &str) -> String {
    let by_ctid =
        format!("{alias}.ctid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT r.ctid FROM {rows} AS r))");
    if table.partitioned {
        format!(
            "{by_ctid} AND ({alias}.tableoid, {alias}.ctid) OPERATOR(pg_catalog.=) ANY \
             (SELECT r.tableoid, r.ctid FROM {rows} AS r)"
        )
    } else {
        by_ctid
    }
}

/// SQL: `alias`'s key comes after the key in parameters $1.., in the key's order (the
/// first column's bound lets the index scan start there).
fn after(table: &UserTable, key: &UniqueKey, alias: &str) -> String {
    let column = |p: &user_tables::KeyPart| format!("{alias}.{}", table.by_attno(p.attno).sql());
    let param = |i: usize| format!("${}", i + 1);
    let greater: Vec<String> = (0..key.parts.len())
        .map(|i| {
            let mut terms: Vec<String> =
                (0..i).map(|j| key.parts[j].eq_sql(&column(&key.parts[j]), &param(j))).collect();
            terms.push(key.parts[i].gt_sql(&column(&key.parts[i]), &param(i)));
            format!("({})", terms.join(" AND "))
        })
        .collect();
    if key.parts.len() == 1 {
        greater[0].clone()
    } else {
        let first = &key.parts[0];
        format!("{} AND ({})", first.ge_sql(&column(first), "$1"), greater.join(" OR "))
    }
}

/// SQL: `alias`'s key is none of the keys in parameters $1.. (one array per key column).
fn not_held(table: &UserTable, key: &UniqueKey, alias: &str) -> String {
    let held = held_keys(key);
    let parts = &key.parts;
    if parts.iter().all(|p| p.eq == parts[0].eq) {
        // one operator for every column: a hashed row-wise NOT IN
        let ours: Vec<String> = parts
            .iter()
            .map(|p| format!("({alias}.{}){}", table.by_attno(p.attno).sql(), p.cast))
            .collect();
        let theirs: Vec<String> = parts.iter().enumerate().map(|(i, p)| format!("(h.k{i}){}", p.cast)).collect();
        format!(
            "NOT (({}) {} ANY (SELECT {} FROM {held}))",
            ours.join(", "),
            parts[0].eq,
            theirs.join(", ")
        )
    } else {
        let equal: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| p.eq_sql(&format!("{alias}.{}", table.by_attno(p.attno).sql()), &format!("h.k{i}")))
            .collect();
        format!("NOT EXISTS (SELECT 1 FROM {held} WHERE {})", equal.join(" AND "))
    }
}

/// SQL: the rows of parameter arrays $1.. as `h(k0, k1, ...)`.
fn held_keys(key: &UniqueKey) -> String {
    let arrays: Vec<String> = (1..=key.parts.len()).map(|i| format!("pg_catalog.unnest(${i})")).collect();
    let names: Vec<String> = (0..key.parts.len()).map(|i| format!("k{i}")).collect();
    format!("ROWS FROM ({}) AS h({})", arrays.join(", "), names.join(", "))
}

/// The greatest key any claim of the table holds (the last of each claim's keys), as values
/// in index order; None when the table has no claims.
fn newest_claimed_key(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    relid: pg_sys::Oid,
    key_types: &[pg_sys::Oid],
) -> Option<Vec<pg_sys::Datum>> {
    let rows = spi_plans::run_as_owner(client, LAST_KEYS, &[OID, OID_ARRAY], &[relid.into(), key_types.to_vec().into()]);
    rows.filter_map(|row| row.get::<Vec<u8>>(1).ok().flatten())
        .filter_map(|image| key.values_of_image(table, &image))
        .max_by(|a, b| compare_keys(key, a, b))
}

/// The keys the table's claims hold, and `also` (stored keys), as one array per key
/// column (index order).
fn claimed_keys(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    relid: pg_sys::Oid,
    key_types: &[pg_sys::Oid],
    also: &[Vec<u8>],
) -> Vec<pg_sys::Datum> {
    let rows = spi_plans::run_as_owner(client, CLAIMED_KEYS, &[OID, OID_ARRAY], &[relid.into(), key_types.to_vec().into()]);
    let keys: Vec<Vec<pg_sys::Datum>> = rows
        .filter_map(|row| row.get::<Vec<u8>>(1).ok().flatten())
        .chain(also.iter().cloned())
        .filter_map(|image| key.values_of_image(table, &image))
        .collect();
    key_arrays(table, key, &keys)
}

/// Keys (each its values in index order) as one array per key column.
fn key_arrays(table: &UserTable, key: &UniqueKey, keys: &[Vec<pg_sys::Datum>]) -> Vec<pg_sys::Datum> {
    key.parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let column: Vec<pg_sys::Datum> = keys.iter().map(|values| values[i]).collect();
            // SAFETY: values of the column's type.
            unsafe { array_of(&column, table.by_attno(part.attno).type_oid) }
        })
        .collect()
}

/// The stored keys of a `bytea[]` (a NULL, which only a hand-edited row could hold, is none).
fn images_of<C: FromIterator<Vec<u8>>>(array: Array<&[u8]>) -> C {
    array.iter().flatten().map(<[u8]>::to_vec).collect()
}

/// Compare two keys (values in index order) in the index's order.
fn compare_keys(key: &UniqueKey, a: &[pg_sys::Datum], b: &[pg_sys::Datum]) -> Ordering {
    key.parts
        .iter()
        .zip(a.iter().zip(b))
        // SAFETY: values of the parts' column types, decoded from images of this key.
        .map(|(part, (&x, &y))| unsafe { part.order(x, y) })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// A one-dimensional array of `values` of type `element`, in the current memory context.
///
/// # Safety
/// `values` are non-NULL values of `element`.
unsafe fn array_of(values: &[pg_sys::Datum], element: pg_sys::Oid) -> pg_sys::Datum {
    // SAFETY: the element type's storage facts, as the caller says; construct_array copies.
    unsafe {
        let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(element, &mut len, &mut byval, &mut align);
        let mut values = values.to_vec();
        pg_sys::Datum::from(pg_sys::construct_array(
            values.as_mut_ptr(),
            values.len() as i32,
            element,
            len as i32,
            byval,
            align,
        ))
    }
}

/// Mark the rows of a live claim done (`done_column = now()`) and end the claim; returns
/// how many rows it marked. A claim whose lease ran out, or that was completed or released
/// already, marks nothing and returns 0.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_batch(claim: Option<Uuid>) -> i64 {
    let claim = required(claim, "claim");
    Spi::connect_mut(|client| {
        let ended = spi_plans::run_as_owner(client, END_CLAIM, &[UUID], &[claim.into()]);
        if ended.is_empty() {
            return 0;
        }
        let row = ended.first();
        let relid: pg_sys::Oid = row.get(1).unwrap().unwrap();
        let done_column: String = row.get(2).unwrap().unwrap();
        let images: Vec<Vec<u8>> = images_of(row.get::<Array<&[u8]>>(3).unwrap().unwrap());
        let claimed_types: Vec<pg_sys::Oid> = row.get(4).unwrap().unwrap();
        let table = user_tables::open(relid);
        let key = primary_key(&table);
        let done = done_column_of(&table, key, &done_column);
        if claimed_types != key_types(&table, key) {
            return 0; // the primary key changed since the claim: its rows cannot be found
        }
        let keys: Vec<Vec<pg_sys::Datum>> =
            images.iter().filter_map(|image| key.values_of_image(&table, image)).collect();
        mark_done(client, &table, key, done, &keys)
    })
}

/// Set the done column of the pending rows with `keys`; returns how many. The rows are
/// locked without waiting, in a subtransaction: when one is busy, that is rolled back (we
/// hold none of the rows) before we wait for its holder, so a completion never waits while
/// it holds a row another of our functions may be waiting for.
fn mark_done(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    done: &Column,
    keys: &[Vec<pg_sys::Datum>],
) -> i64 {
    let arrays = key_arrays(table, key, keys);
    // SAFETY (spi_plans::arg): arrays and key values in SPI's memory, alive for the call.
    let array_args = || -> Vec<DatumWithOid> {
        arrays
            .iter()
            .zip(&key.parts)
            .map(|(&a, p)| unsafe { spi_plans::arg(a, pg_sys::get_array_type(table.by_attno(p.attno).type_oid)) })
            .collect()
    };
    let array_types = || array_args().iter().map(|a| PgOid::from(a.oid())).collect::<Vec<_>>();
    let mut shape = vec![done.attno.into()];
    shape.extend(key.parts.iter().map(|p| i32::from(p.attno)));
    let (d, equal) = (done.sql(), held_equal(table, key, "s"));
    loop {
        let mut busy = None;
        let marked = subtransaction::attempt(|| {
            let marked = table
                .run(client, "complete", &shape, |t| {
                    let sql = format!(
                        "WITH locked AS (
                             SELECT s.tableoid, s.ctid FROM {name} AS s, {held}
                             WHERE {equal} AND s.{d} IS NULL
                             FOR NO KEY UPDATE OF s SKIP LOCKED)
                         UPDATE {name} AS t SET {d} = pg_catalog.now()
                         WHERE {locked}
                         RETURNING 1",
                        name = t.name,
                        held = held_keys(key),
                        locked = among_rows(t, "t", "locked"),
                    );
                    (sql, array_types())
                }, &array_args())
                .len() as i64;
            if marked < keys.len() as i64 {
                busy = first_busy(client, table, key, done, &shape, array_types(), &array_args());
            }
            // keep what was marked unless a row is busy: then undo it all, and wait
            busy.is_none().then_some(marked)
        });
        if let Some(marked) = marked {
            xact_lock::hold_rows_outside_the_order();
            return marked;
        }
        let busy = busy.expect("a completion is undone only for a busy row");
        if xact_lock::holds_any_lock_of_ours() {
            raise(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "a row of this claim is locked by another transaction, and this transaction \
                 already holds pg_exactly locks; waiting could deadlock",
                "retry the transaction; complete claims in their own transactions",
            );
        }
        wait_for_row(client, table, key, done, &shape, &busy);
    }
}

/// SQL: `alias`'s key equals the held key `h`'s, column by column.
fn held_equal(table: &UserTable, key: &UniqueKey, alias: &str) -> String {
    let equal: Vec<String> = key
        .parts
        .iter()
        .enumerate()
        .map(|(i, p)| p.eq_sql(&format!("{alias}.{}", table.by_attno(p.attno).sql()), &format!("h.k{i}")))
        .collect();
    equal.join(" AND ")
}

/// The stored form of a key among the parameter arrays whose row is still pending (after our
/// own marks: so, locked by another transaction), if any.
fn first_busy(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    done: &Column,
    shape: &[i32],
    types: Vec<PgOid>,
    args: &[DatumWithOid],
) -> Option<Vec<u8>> {
    let rows = table.run(client, "find a busy row", shape, |t| {
        let names: Vec<String> = (0..key.parts.len()).map(|i| format!("h.k{i}")).collect();
        let sql = format!(
            "SELECT {} FROM {held}
             WHERE EXISTS (SELECT 1 FROM {name} AS s WHERE {equal} AND s.{d} IS NULL)
             LIMIT 1",
            names.join(", "),
            held = held_keys(key),
            name = t.name,
            equal = held_equal(t, key, "s"),
            d = done.sql(),
        );
        (sql, types)
    }, args);
    first_key_image(rows, table, key)
}

/// The first row's key columns (1..) as the key's stored form.
fn first_key_image(rows: SpiTupleTable<'_>, table: &UserTable, key: &UniqueKey) -> Option<Vec<u8>> {
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    let values: Vec<pg_sys::Datum> =
        (1..=key.parts.len()).map(|i| row.get_datum_by_ordinal(i).unwrap().unwrap()).collect();
    // SAFETY: the key's values in index order, read before SPI's memory is released.
    Some(unsafe { key.image(table, &values) })
}

/// Wait until the busy row's holder ends, holding nothing else of ours: lock the row in a
/// subtransaction, then roll that back.
fn wait_for_row(
    client: &mut SpiClient<'_>,
    table: &UserTable,
    key: &UniqueKey,
    done: &Column,
    shape: &[i32],
    busy: &[u8],
) {
    let values = key.values_of_image(table, busy).expect("an image we made");
    let types: Vec<PgOid> = key.parts.iter().map(|p| PgOid::from(table.by_attno(p.attno).type_oid)).collect();
    // SAFETY: values of the key's types, alive for the statement.
    let args: Vec<DatumWithOid> =
        values.iter().zip(&types).map(|(&v, t)| unsafe { spi_plans::arg(v, t.value()) }).collect();
    subtransaction::attempt(|| {
        table.run(client, "wait for a busy row", shape, |t| {
            let equal: Vec<String> = key
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| p.eq_sql(&format!("s.{}", t.by_attno(p.attno).sql()), &format!("${}", i + 1)))
                .collect();
            let sql = format!(
                "SELECT 1 FROM {} AS s WHERE {} AND s.{} IS NULL FOR NO KEY UPDATE OF s",
                t.name,
                equal.join(" AND "),
                done.sql()
            );
            (sql, types.clone())
        }, &args);
        None::<()>
    });
}

/// Give a live claim `lease` more time from now; returns how many rows it holds, 0 when it
/// is stale (then its rows may be in another claim already: stop working on them).
#[pg_extern(volatile, parallel_unsafe)]
fn extend_claim(claim: Option<Uuid>, lease: default!(Option<Interval>, "'5 minutes'")) -> i64 {
    let claim = required(claim, "claim");
    let lease = positive(lease, "lease");
    Spi::connect_mut(|client| {
        let extended = spi_plans::run_as_owner(client, EXTEND, &[UUID, INTERVAL], &[claim.into(), lease.into()]);
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
    Spi::connect_mut(|client| spi_plans::run_as_owner(client, RELEASE, &[UUID], &[claim.into()]).len() as i64)
}

/// Mark the rows of a live claim named by `keys` done and take them out of the claim (a
/// claim left with no rows ends); returns how many rows it marked. 0 when the claim has
/// ended, whatever the keys; keys of rows not in the claim are ignored.
#[pg_extern(volatile, parallel_unsafe)]
fn complete_rows(claim: Option<Uuid>, keys: Option<JsonB>) -> i64 {
    let claim = required(claim, "claim");
    let keys = required(keys, "keys");
    Spi::connect_mut(|client| {
        let Some(taken) = take_rows(client, claim, &keys.0) else { return 0 };
        let key = primary_key(&taken.table);
        let done = done_column_of(&taken.table, key, &taken.done_column);
        let values: Vec<Vec<pg_sys::Datum>> =
            taken.images.iter().filter_map(|image| key.values_of_image(&taken.table, image)).collect();
        if values.is_empty() {
            return 0;
        }
        mark_done(client, &taken.table, key, done, &values)
    })
}

/// Give the rows of a live claim named by `keys` back, as a failed attempt with `error`
/// kept, and take them out of the claim; returns how many. 0 when the claim has ended.
#[pg_extern(volatile, parallel_unsafe)]
fn fail_rows(claim: Option<Uuid>, keys: Option<JsonB>, error: default!(Option<&str>, "NULL")) -> i64 {
    let claim = required(claim, "claim");
    let keys = required(keys, "keys");
    Spi::connect_mut(|client| {
        let Some(taken) = take_rows(client, claim, &keys.0) else { return 0 };
        if taken.positions.is_empty() {
            return 0;
        }
        let args = [
            taken.table_oid.into(),
            // SAFETY: the claim's arrays, read by take_rows in this SPI connection.
            unsafe { spi_plans::arg(taken.row_keys, pg_sys::BYTEAARRAYOID) },
            unsafe { spi_plans::arg(taken.keys, pg_sys::JSONBARRAYOID) },
            taken.positions.clone().into(),
            error.into(),
            taken.max_attempts.into(),
            taken.retry_after.into(),
        ];
        spi_plans::run_as_owner(client, FAIL_ROWS, &[OID, BYTEA_ARRAY, JSONB_ARRAY, INT4_ARRAY, TEXT, INT4, INTERVAL], &args)
            .len() as i64
    })
}

/// Rows taken out of a live claim by `take_rows`.
struct TakenRows {
    table_oid: pg_sys::Oid,
    table: std::rc::Rc<UserTable>,
    done_column: String,
    /// the claim's stored keys and JSON keys as they were (arrays in SPI's memory)
    row_keys: pg_sys::Datum,
    keys: pg_sys::Datum,
    /// positions (1-based) of the rows taken, and their stored keys
    positions: Vec<i32>,
    images: Vec<Vec<u8>>,
    max_attempts: Option<i32>,
    retry_after: Option<Interval>,
}

/// Lock a live claim and take the rows named by `keys` out of it (ending it if none is
/// left). None when the claim has ended or its table's key changed since.
fn take_rows(client: &mut SpiClient<'_>, claim: Uuid, keys: &Value) -> Option<TakenRows> {
    let locked = spi_plans::run_as_owner(client, LOCK_CLAIM, &[UUID], &[claim.into()]);
    if locked.is_empty() {
        return None;
    }
    let row = locked.first();
    let table_oid: pg_sys::Oid = row.get(1).unwrap().unwrap();
    let done_column: String = row.get(2).unwrap().unwrap();
    let stored: Vec<Option<Vec<u8>>> =
        row.get::<Array<&[u8]>>(3).unwrap().unwrap().iter().map(|k| k.map(<[u8]>::to_vec)).collect();
    let row_keys = row.get_datum_by_ordinal(3).unwrap().unwrap();
    let json_keys = row.get_datum_by_ordinal(4).unwrap().unwrap();
    let claimed_types: Vec<pg_sys::Oid> = row.get(5).unwrap().unwrap();
    let max_attempts: Option<i32> = row.get(6).unwrap();
    let retry_after: Option<Interval> = row.get(7).unwrap();
    let table = user_tables::open(table_oid);
    let key = primary_key(&table);
    if claimed_types != key_types(&table, key) {
        return None; // the primary key changed since the claim: its rows cannot be found
    }
    let taken = positions_named(&table, key, &stored, &values_of_json_keys(&table, key, keys));
    let kept: Vec<usize> = (0..stored.len()).filter(|i| !taken.contains(i)).collect();
    let taken: Vec<usize> = taken.into_iter().collect();
    if !taken.is_empty() {
        let changed = if kept.is_empty() {
            spi_plans::run_as_owner(client, DROP_CLAIM, &[UUID], &[claim.into()])
        } else {
            let kept: Vec<i32> = kept.iter().map(|&i| i as i32 + 1).collect();
            spi_plans::run_as_owner(client, KEEP_ROWS, &[UUID, INT4_ARRAY], &[claim.into(), kept.into()])
        };
        if changed.is_empty() {
            return None; // the lease ran out meanwhile
        }
    }
    Some(TakenRows {
        table_oid,
        done_column,
        row_keys,
        keys: json_keys,
        positions: taken.iter().map(|&i| i as i32 + 1).collect(),
        images: taken.iter().map(|&i| stored[i].clone().unwrap()).collect(),
        max_attempts,
        retry_after,
        table,
    })
}

/// The positions (0-based, ascending) of the claim's rows whose keys equal one of `named`,
/// compared by the key's own operator classes (so `1.10` names the row `1.1`, and a
/// case-insensitive collation matches any case), not by stored bytes.
fn positions_named(
    table: &UserTable,
    key: &UniqueKey,
    stored: &[Option<Vec<u8>>],
    named: &[Vec<pg_sys::Datum>],
) -> std::collections::BTreeSet<usize> {
    let mut rows: Vec<(Vec<pg_sys::Datum>, usize)> = stored
        .iter()
        .enumerate()
        .filter_map(|(i, image)| Some((key.values_of_image(table, image.as_ref()?)?, i)))
        .collect();
    rows.sort_by(|a, b| compare_keys(key, &a.0, &b.0));
    named
        .iter()
        .filter_map(|values| rows.binary_search_by(|row| compare_keys(key, &row.0, values)).ok())
        .map(|found| rows[found].1)
        .collect()
}

/// The key values of the rows `keys` names: a JSON array of objects with the key's columns
/// (other fields ignored, so claimed rows' `data` can be passed back), or of bare values for
/// a one-column key. Each value is read as its column's type.
fn values_of_json_keys(table: &UserTable, key: &UniqueKey, keys: &Value) -> Vec<Vec<pg_sys::Datum>> {
    let Value::Array(keys) = keys else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("keys must be a JSON array, not {keys}"),
            "name the rows by primary key, e.g. '[{\"id\": 1}, {\"id\": 2}]' or '[1, 2]'",
        );
    };
    keys.iter()
        .map(|element| {
            key.parts
                .iter()
                .map(|part| {
                    let column = table.by_attno(part.attno);
                    let value = match element {
                        Value::Object(fields) => fields.get(&column.name),
                        scalar if key.parts.len() == 1 && !scalar.is_array() => Some(scalar),
                        _ => None,
                    };
                    match value {
                        Some(value) if !value.is_null() => {
                            column.value_of_json(value).datum().expect("a non-null value").sans_lifetime()
                        }
                        _ => raise(
                            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                            format!("key {element} does not give primary key column {} of {}", column.sql(), table.name),
                            "name each row by an object with every primary key column, e.g. {\"id\": 1}",
                        ),
                    }
                })
                .collect()
        })
        .collect()
}

/// The table's primary key: what a claim records of each row.
fn primary_key(table: &UserTable) -> &UniqueKey {
    if table.primary_key().is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no primary key", table.name),
            "claims record rows by their primary key; add one (e.g. an identity column)",
        );
    }
    &table.unique_keys[0]
}

/// The types of the key's columns, in index order: what a claim's stored keys are made of.
/// Each needs an array type (the keys travel to statements as arrays).
fn key_types(table: &UserTable, key: &UniqueKey) -> Vec<pg_sys::Oid> {
    key.parts
        .iter()
        .map(|p| {
            let column = table.by_attno(p.attno);
            // SAFETY: a catalog lookup.
            if unsafe { pg_sys::get_array_type(column.type_oid) } == pg_sys::InvalidOid {
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("primary key column {} of {} has a type without an array type", column.sql(), table.name),
                    "claims pass keys to statements as arrays; use a key type that has one",
                );
            }
            column.type_oid
        })
        .collect()
}

/// The done column: a timestamp (or date) column outside the key, set to now() on completion.
fn done_column_of<'t>(table: &'t UserTable, key: &UniqueKey, name: &str) -> &'t Column {
    let done = table.column(name, "done_column");
    if ![pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPOID, pg_sys::DATEOID].contains(&done.base_type) {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("column {} of {} is not a timestamp column", done.sql(), table.name),
            "done_column must be a timestamptz, timestamp or date column, NULL while the row is pending",
        );
    }
    if key.columns.contains(&done.attno) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("done column {} of {} is part of its primary key", done.sql(), table.name),
            "the done column must be a column of its own, NULL while the row is pending",
        );
    }
    done
}

/// `text` as an SQL string literal, whatever `standard_conforming_strings` says.
fn sql_literal(text: &str) -> String {
    let text = std::ffi::CString::new(text).expect("identifiers hold no NUL");
    // SAFETY: quote_literal_cstr reads a C string and returns a palloc'd quoted copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_literal_cstr(text.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// For the upgrade from 0.2.0 only (sql/pg_exactly--0.2.0--0.3.0.sql creates it, uses it and
/// drops it): the stored form of a row key that 0.2.0 recorded as text, read back through
/// the key type's input function; NULL when it no longer can be (the table or its key
/// changed, or the text does not read back).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn claim_key_of_0_2_text(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared (regclass, text) RETURNS bytea STRICT: both arguments are there.
    let (relid, text) = unsafe {
        (
            pg_sys::Oid::from_datum((*fcinfo).args.as_slice(2)[0].value, false).unwrap(),
            String::from_datum((*fcinfo).args.as_slice(2)[1].value, false).unwrap(),
        )
    };
    let image = subtransaction::attempt(|| {
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let table = user_tables::open(relid);
            let key = primary_key(&table);
            let [part] = key.parts.as_slice() else { return None };
            let column = table.by_attno(part.attno);
            let text = std::ffi::CString::new(text.as_str()).ok()?;
            // SAFETY: the column's input function and type parameter, as for a literal.
            let value = unsafe {
                pg_sys::OidInputFunctionCall(column.input_function, text.as_ptr() as *mut _, column.input_param, column.typmod)
            };
            // SAFETY: a value of the key's one column.
            Some(unsafe { key.image(&table, &[value]) })
        }))
        .catch_others(|_| None)
        .execute()
    });
    match image {
        Some(image) => image.into_datum().unwrap(),
        None => {
            // SAFETY: the function's own call info.
            unsafe { (*fcinfo).isnull = true };
            pg_sys::Datum::from(0)
        }
    }
}
crate::finfo_v1!(pg_finfo_claim_key_of_0_2_text);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    fn queue() {
        Spi::run(
            "CREATE TABLE q (id int PRIMARY KEY, made timestamptz, done timestamptz);
             INSERT INTO q SELECT i, now() - i * interval '1 minute', NULL FROM generate_series(1, 3) i",
        )
        .unwrap();
    }

    #[pg_test]
    fn a_row_failed_max_attempts_times_is_given_up_with_its_last_error() {
        queue();
        for attempt in 1..=2 {
            let claim = text("SELECT claim::text FROM exactly.claim_batch('q', 'done', 1, max_attempts => 2) LIMIT 1").unwrap();
            let failed = Spi::get_one::<i64>(&format!("SELECT exactly.fail_rows('{claim}', '[1]', 'boom {attempt}')")).unwrap();
            assert_eq!(failed, Some(1));
        }
        assert_eq!(
            text("SELECT failed_attempts || ' ' || last_error || ' ' || (given_up_at IS NOT NULL) FROM exactly.claim_attempts"),
            Some("2 boom 2 true".into())
        );
        // row 1 is no longer handed out; 2 and 3 are
        assert_eq!(text("SELECT string_agg(data->>'id', ',') FROM exactly.claim_batch('q', 'done', 10, max_attempts => 2)"), Some("2,3".into()));
    }

    #[pg_test]
    fn a_failed_row_waits_out_its_backoff() {
        queue();
        let claim = text("SELECT claim::text FROM exactly.claim_batch('q', 'done', 1, retry_after => '1 hour') LIMIT 1").unwrap();
        Spi::run(&format!("SELECT exactly.fail_rows('{claim}', '[{{\"id\": 1}}]')")).unwrap();
        assert_eq!(text("SELECT string_agg(data->>'id', ',') FROM exactly.claim_batch('q', 'done', 10)"), Some("2,3".into()));
    }

    #[pg_test]
    fn order_by_hands_out_the_oldest_first_and_complete_finishes_the_previous_batch() {
        queue();
        let claim = text("SELECT claim::text FROM exactly.claim_batch('q', 'done', 2, order_by => 'made') LIMIT 1").unwrap();
        assert_eq!(text("SELECT string_agg(k->>'id', ',') FROM exactly.claims, unnest(keys) k"), Some("3,2".into()));
        assert_eq!(
            text(&format!("SELECT string_agg(data->>'id', ',') FROM exactly.claim_batch('q', 'done', 2, complete => '{claim}')")),
            Some("1".into())
        );
        assert_eq!(text("SELECT string_agg(id::text, ',' ORDER BY id) FROM q WHERE done IS NOT NULL"), Some("2,3".into()));
    }

    #[pg_test]
    fn complete_rows_takes_only_the_named_rows_of_the_claim() {
        queue();
        let claim = text("SELECT claim::text FROM exactly.claim_batch('q', 'done', 3) LIMIT 1").unwrap();
        let done = Spi::get_one::<i64>(&format!("SELECT exactly.complete_rows('{claim}', '[2, 7]')")).unwrap();
        assert_eq!(done, Some(1));
        assert_eq!(text("SELECT keys::text FROM exactly.claims"), Some(r#"{"{\"id\": 1}","{\"id\": 3}"}"#.into()));
        Spi::run(&format!("SELECT exactly.complete_rows('{claim}', '[{{\"id\": 1}}, {{\"id\": 3, \"made\": null}}]')")).unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM exactly.claims").unwrap(), Some(0));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM q WHERE done IS NULL").unwrap(), Some(0));
    }
}
