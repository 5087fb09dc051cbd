#![cfg(feature = "pg15")]
//! `pg_exactly_router` (docs/router.md), tested from docs/router.md and the README alone, as
//! an attacker and a careless user would, with many real connections through a router
//! database in front of four shard clusters (PL/Proxy exists only for PostgreSQL 15 here).
//!
//! The fixture (`common::shards`): four throwaway clusters with pg_exactly, numbered with
//! `exactly.set_shard(0..3)`, and a router cluster whose database has no pg_exactly, only
//! `CREATE EXTENSION pg_exactly_router CASCADE`, the server `exactly` (`p0`..`p3`, unix
//! sockets) and a user mapping for PUBLIC; `exactly.router_shards()` must find all four ok.
//!
//! 1. `seeds_through_the_router_keep_every_guarantee`, 16 connections through the router:
//!    12 tenants on the four shards draw invoice numbers, each told exactly 1..N (and the
//!    counter is on `shard_for(tenant)` alone); 12 raffles made by `create_raffle`, every
//!    batch job run twice at the same moment with its batch key, end with exactly
//!    `tickets_requested` tickets on the raffle's shard (`raffle >> 48`); appends with
//!    idempotency keys (and their replays) and transfers between `tenant:a`/`tenant:b`:
//!    `verify_ledger()` clean through the router and on each shard, every entry a client
//!    was told of where it belongs, balances equal to what clients were told; transfers,
//!    multi-leg transfers and holds between accounts of two shards refused with 0A000,
//!    changing nothing; `find_or_create`/`increment` on tables made identically on every
//!    shard (odd column and table names, a composite key, keys spelled `1`/`1.0`/`"1"`,
//!    `0`/`-0.0`, `1e20`, table names spelled and quoted several ways): one row per key over
//!    all shards, on `shard_for_row`, exactly one `created`, no increment lost; 8 workers
//!    drain a jobs table on every shard (the same ids on each) with
//!    `claim_batch`/`complete_batch`: every row completed once, every claim id routing back
//!    (`shard_of_claim`, its first four hex digits) to the shard whose rows it holds; holds
//!    whose ids name their shard, posted and voided through the router; a number drawn in a
//!    router transaction that rolls back stays drawn; 16 connections on four leases: never
//!    two live holders, fences 1..N; `lock`/`try_lock`/`check_fence` refused with 0A000; a
//!    lock taken on the owning shard is seen by the router's `lock_status` from another
//!    connection.
//!    `twins_of_the_seeds_naive_routing_is_caught`: each check above catches a PL/Proxy
//!    function of schema `naive` on the router that routes by a naive rule (any shard, the
//!    batch key, the key's JSON text, the claim's text, the whole lock name), and a
//!    cross-shard transfer done as two routed `append_payment` calls loses money.
//! 2. A load of 16 connections through the router (invoices, idempotent payments retried
//!    with their keys, `find_or_create`, claimers) while one shard is stopped
//!    (`an_immediately_stopped_shard_...`: `pg_ctl stop -m immediate`;
//!    `a_cleanly_stopped_shard_...`: `-m fast`) and restarted: while it is down its keys
//!    fail with 08006 naming the shard (never XX000), the other shards' keys keep working,
//!    `claim_batch` keeps claiming from the others (with a WARNING); afterwards every
//!    invariant holds on every shard. `twins_of_the_fault_checks_are_caught`: plain PL/Proxy
//!    functions (right shard, no error handling, `RUN ON ALL` claims) and a shard that
//!    acknowledges commits before writing them (`synchronous_commit = off`) are caught.
//! 3. `hostile_and_careless_callers_get_clear_answers`: a hostile role's functions and
//!    operators named like pg_catalog's on the router's search_path never run inside the
//!    router's functions (as a superuser and as an application role); a role without
//!    `exactly.grant_usage` on the router gets 42501; NULL, empty, `:`, `a:`, 5,000-character
//!    and unicode keys get pg_exactly's own errors (the SQLSTATE the shard itself gives) or
//!    work, never XX000, and about 75 malformed ids and arguments never XX000 either;
//!    pg_exactly's errors reach the caller with their SQLSTATE, message, detail and hint; `shard_for` is the same on every call and connection, in
//!    0..3, follows the `scope:rest` rule and spreads keys over all four shards; with
//!    partitions p1 and p2 listed the wrong way round, `router_shards()` says so, and holds,
//!    raffles and invoice numbers sent there are refused with 55000 and leave nothing behind.
//!    `twins_of_the_hostile_checks_are_caught`: a careless PL/Proxy function (unqualified
//!    `RUN ON hashtext(..)`, executable by PUBLIC, the server open to PUBLIC, errors as
//!    PL/Proxy gives them), a plain PL/Proxy hold behind swapped partitions, and
//!    `shard_for` rules by `% 4` or at random are caught.
//!
//! Each test collects every fault it finds and fails listing them, prefixed by scenario.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::hostile;
use common::ledger_checks::{entry_faults, verify_ledger_faults};
use common::shards::{keys_on_every_shard, shard_for, Shards, SHARDS};
use common::text::{describe, raw, Rows};
use common::{at_once_through, Client, NoTls, XorShift};

type Faults = Vec<String>;

// ---------------------------------------------------------------------------------------
// small helpers: statements through the simple query protocol, values as text
// ---------------------------------------------------------------------------------------

/// A SQL string literal (standard_conforming_strings is on).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn state(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| "(no SQLSTATE)".to_string())
}

/// Message, detail and hint of an error, one line.
fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}{}{}",
            db.message(),
            db.detail()
                .map(|d| format!(" DETAIL: {d}"))
                .unwrap_or_default(),
            db.hint().map(|h| format!(" HINT: {h}")).unwrap_or_default()
        )
        .replace('\n', " "),
        None => e.to_string(),
    }
}

fn first(rows: &Rows) -> Option<String> {
    rows.first().and_then(|r| r.first().cloned().flatten())
}

/// Rows of a statement that must work.
fn must(c: &mut Client, sql: &str) -> Rows {
    raw(c, sql).unwrap_or_else(|e| panic!("`{sql}`: {}", describe(&e)))
}

/// The one value of a statement that must work ("NULL" for NULL).
fn one(c: &mut Client, sql: &str) -> String {
    first(&must(c, sql)).unwrap_or_else(|| "NULL".into())
}

fn int(c: &mut Client, sql: &str) -> i64 {
    let v = one(c, sql);
    v.parse().unwrap_or_else(|_| panic!("`{sql}` returned {v}"))
}

fn sleep_ms(n: u64) {
    std::thread::sleep(Duration::from_millis(n))
}

fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

fn pick<'a, T>(rng: &mut XorShift, items: &'a [T]) -> &'a T {
    &items[(rng.next() % items.len() as u64) as usize]
}

/// What is wrong with `told` as a set of numbers that must be exactly 1..N: None when it is.
fn not_one_to_n(told: &[i64]) -> Option<String> {
    let mut sorted = told.to_vec();
    sorted.sort();
    let n = sorted.len() as i64;
    if sorted.iter().copied().eq(1..=n) {
        return None;
    }
    let distinct: BTreeSet<i64> = sorted.iter().copied().collect();
    let duplicates = sorted.len() - distinct.len();
    let missing = (1..=n).filter(|v| !distinct.contains(v)).count();
    Some(format!(
        "{n} numbers told, {duplicates} duplicates, {missing} of 1..{n} missing, highest {}",
        sorted.last().copied().unwrap_or(0)
    ))
}

/// Counts of errors by SQLSTATE, with one example each: "3x 22023 (message)".
fn summarize_errors(errors: &[(String, String)]) -> Vec<String> {
    let mut by_state: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for (s, text) in errors {
        let entry = by_state.entry(s).or_insert((0, text));
        entry.0 += 1;
    }
    by_state
        .into_iter()
        .map(|(s, (n, text))| format!("{n} calls failed with {s} (e.g. {text})"))
        .collect()
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Run a scenario, catching a panic as a fault; its faults prefixed with its name.
fn scenario(name: &str, f: impl FnOnce() -> Faults) -> Faults {
    let t = Instant::now();
    let found = std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| vec![format!("panicked: {}", panic_text(p))]);
    eprintln!("{name}: {} fault(s) in {:.1?}", found.len(), t.elapsed());
    found.into_iter().map(|f| format!("{name}: {f}")).collect()
}

/// A twin: the scenario run against a naive implementation must be caught (report at
/// least one fault). Returns a failure line when it was not.
fn twin(name: &str, f: impl FnOnce() -> Faults) -> Option<String> {
    let found = scenario(name, f);
    if found.is_empty() {
        Some(format!(
            "{name}: the twin was NOT caught (its check found nothing wrong)"
        ))
    } else {
        for f in found.iter().take(3) {
            eprintln!("    caught: {f}");
        }
        None
    }
}

fn assert_no_faults(faults: &[String]) {
    assert!(
        faults.is_empty(),
        "{} fault(s):\n{}",
        faults.len(),
        faults.join("\n")
    );
}

/// Does `text` name shard `k` (`p2`, `shard 2`, `shard p2`)?
fn names_shard(text: &str, k: usize) -> bool {
    let words: Vec<String> = text
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    let pk = format!("p{k}");
    let kk = k.to_string();
    words.iter().any(|w| *w == pk)
        || words
            .windows(2)
            .any(|w| w[0] == "shard" && (w[1] == kk || w[1] == pk))
}

// ---------------------------------------------------------------------------------------
// the naive twins: PL/Proxy functions on the router that route by naive rules
// ---------------------------------------------------------------------------------------

/// Schema `naive` on the router: the same calls as the router's, routed by naive rules.
/// Each function's SELECT names pg_exactly's function on the shard.
const NAIVE_SQL: &str = r#"
CREATE SCHEMA naive;
CREATE FUNCTION naive.hash_text(k text) RETURNS int LANGUAGE sql IMMUTABLE
    AS $$ SELECT pg_catalog.hashtext(k) $$;
CREATE FUNCTION naive.hash_json(k jsonb) RETURNS int LANGUAGE sql IMMUTABLE
    AS $$ SELECT pg_catalog.hashtext(k::text) $$;
CREATE FUNCTION naive.hash_uuid(k uuid) RETURNS int LANGUAGE sql IMMUTABLE
    AS $$ SELECT pg_catalog.hashtext(k::text) $$;
-- invoices: on any shard
CREATE FUNCTION naive.next_invoice_number(tenant text) RETURNS text LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ANY; SELECT exactly.next_invoice_number(tenant); $$;
-- tickets: by the batch key
CREATE FUNCTION naive.batch_create_tickets(raffle bigint, n int, bkey text) RETURNS int
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON naive.hash_text(bkey);
    SELECT exactly.batch_create_tickets(raffle, n, bkey); $$;
-- ledger: on any shard
CREATE FUNCTION naive.append_payment(acct text, amt numeric, idem text)
RETURNS TABLE (id bigint, amount numeric) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ANY;
    SELECT p.id, p.amount FROM exactly.append_payment(acct, amt, idem) p; $$;
CREATE FUNCTION naive.transfer(src text, dst text, amt numeric)
RETURNS TABLE (id bigint) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ANY;
    SELECT t.id FROM exactly.transfer(src, dst, amt) t; $$;
CREATE FUNCTION naive.verify_ledger() RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT v.account, v.ok, v.detail FROM exactly.verify_ledger() v; $$;
-- rows of the application's tables: by the key's JSON text
CREATE FUNCTION naive.find_or_create(rel text, k jsonb, defs jsonb)
RETURNS TABLE (data jsonb, created boolean) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON naive.hash_json(k);
    SELECT f.data, f.created FROM exactly.find_or_create(rel::regclass, k, defs) f; $$;
CREATE FUNCTION naive.increment(rel text, k jsonb, col text, amt numeric) RETURNS numeric
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON naive.hash_json(k);
    SELECT exactly.increment(rel::regclass, k, col, amt); $$;
-- claims: completed on the shard the claim's text hashes to
CREATE FUNCTION naive.complete_batch(c uuid) RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON naive.hash_uuid(c); SELECT exactly.complete_batch(c); $$;
-- leases: on any shard
CREATE FUNCTION naive.acquire_lease(lname text, ttl interval)
RETURNS TABLE (token uuid, fence bigint) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ANY;
    SELECT l.token, l.fence FROM exactly.acquire_lease(lname, ttl) l; $$;
CREATE FUNCTION naive.release_lease(lname text, tok uuid) RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ANY; SELECT exactly.release_lease(lname, tok); $$;
-- lock_status: by the whole name, not its scope
CREATE FUNCTION naive.lock_status(lname text) RETURNS TABLE (pid int, granted boolean)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON naive.hash_text(lname);
    SELECT s.pid, s.granted FROM exactly.lock_status(lname) s; $$;
"#;

/// Schema `plain` on the router: the right shard (asking the router's own `shard_for`,
/// `shard_for_row`, `shard_of_claim`), but plain PL/Proxy: no error handling, claims
/// `RUN ON ALL`.
const PLAIN_SQL: &str = r#"
CREATE SCHEMA plain;
CREATE FUNCTION plain.next_invoice_number(tenant text) RETURNS text LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(tenant); SELECT exactly.next_invoice_number(tenant); $$;
CREATE FUNCTION plain.append_payment(acct text, amt numeric, idem text)
RETURNS TABLE (id bigint, amount numeric) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(acct);
    SELECT p.id, p.amount FROM exactly.append_payment(acct, amt, idem) p; $$;
CREATE FUNCTION plain.verify_ledger() RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT v.account, v.ok, v.detail FROM exactly.verify_ledger() v; $$;
CREATE FUNCTION plain.find_or_create(rel text, k jsonb)
RETURNS TABLE (data jsonb, created boolean) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for_row(rel, k);
    SELECT f.data, f.created FROM exactly.find_or_create(rel::regclass, k) f; $$;
CREATE FUNCTION plain.claim_batch(rel text, done text, batch int, lease interval)
RETURNS TABLE (claim uuid, data jsonb) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT c.claim, c.data FROM exactly.claim_batch(rel::regclass, done, batch, lease) c; $$;
CREATE FUNCTION plain.hold(src text, dst text, amt numeric) RETURNS TABLE (id bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(src);
    SELECT h.id FROM exactly.hold(src, dst, amt) h; $$;
CREATE FUNCTION plain.complete_batch(c uuid) RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(c); SELECT exactly.complete_batch(c); $$;
"#;

/// Schema `careless` on the router: a PL/Proxy function as a careless user writes it
/// (unqualified `hashtext` in RUN ON, no pinned search_path, executable by PUBLIC, the
/// server open to PUBLIC), and two careless `shard_for` rules.
const CARELESS_SQL: &str = r#"
CREATE SCHEMA careless;
GRANT USAGE ON SCHEMA careless TO PUBLIC;
GRANT USAGE ON FOREIGN SERVER exactly TO PUBLIC;
CREATE FUNCTION careless.next_invoice_number(tenant text) RETURNS text LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON hashtext(tenant); SELECT exactly.next_invoice_number(tenant); $$;
CREATE FUNCTION careless.append_payment(acct text, amt numeric)
RETURNS TABLE (id bigint, amount numeric) LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON hashtext(acct);
    SELECT p.id, p.amount FROM exactly.append_payment(acct, amt) p; $$;
CREATE FUNCTION careless.shard_for(k text) RETURNS int LANGUAGE sql
    AS $$ SELECT pg_catalog.hashtext(k) % 4 $$;
CREATE FUNCTION careless.shard_for_random(k text) RETURNS int LANGUAGE sql VOLATILE
    AS $$ SELECT pg_catalog.floor(pg_catalog.random() * 4)::int $$;
"#;

// ---------------------------------------------------------------------------------------
// seeds through the router
// ---------------------------------------------------------------------------------------

/// Invoice numbers: 12 tenants, 3 on each shard, 16 connections drawing 60 numbers each at
/// random tenants through `{api}.next_invoice_number`. Each tenant's told numbers must be
/// exactly 1..N, and the tenant's counter must be on its shard alone, at N + 1.
fn invoices(sh: &Shards, api: &'static str) -> Faults {
    let mut router = sh.router();
    let tenants = keys_on_every_shard(&mut router, &format!("inv-{api}-"), 3);
    let names: Arc<Vec<String>> = Arc::new(tenants.iter().map(|t| t.0.clone()).collect());
    let outcomes = at_once_through(sh.router_config(), 16, {
        let names = names.clone();
        move |i, c| {
            let mut rng = XorShift(0x1f00d + 7919 * i as u64);
            let mut out = Vec::new();
            for _ in 0..60 {
                let t = pick(&mut rng, &names[..]).clone();
                let sql = format!("SELECT {api}.next_invoice_number({})", lit(&t));
                let r = raw(c, &sql)
                    .map(|rows| first(&rows))
                    .map_err(|e| (state(&e), error_text(&e)));
                out.push((t, r));
            }
            out
        }
    });
    let mut faults = Vec::new();
    let mut errors = Vec::new();
    let mut told: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (t, r) in outcomes.into_iter().flatten() {
        match r {
            Err(e) => errors.push(e),
            Ok(None) => faults.push(format!("next_invoice_number({t}) returned NULL")),
            Ok(Some(number)) => {
                let n = number
                    .strip_prefix(&format!("{t}-"))
                    .and_then(|rest| rest.parse::<i64>().ok());
                match n {
                    Some(n) => told.entry(t).or_default().push(n),
                    None => faults.push(format!("tenant {t} was told {number:?}")),
                }
            }
        }
    }
    faults.extend(summarize_errors(&errors));
    for (t, k) in &tenants {
        let numbers = told.get(t).cloned().unwrap_or_default();
        if let Some(what) = not_one_to_n(&numbers) {
            faults.push(format!(
                "tenant {t} (shard {k}): told numbers are not 1..N: {what}"
            ));
        }
        for (j, shard) in sh.shards.iter().enumerate() {
            let next = one(
                &mut shard.connect(),
                &format!(
                    "SELECT coalesce((SELECT next_value FROM exactly.invoice_sequences WHERE tenant = {})::text, 'none')",
                    lit(t)
                ),
            );
            if j == *k && next != (numbers.len() + 1).to_string() {
                faults.push(format!(
                    "tenant {t}: its shard {k} has next_value {next}, {} numbers were told",
                    numbers.len()
                ));
            }
            if j != *k && next != "none" {
                faults.push(format!(
                    "tenant {t} (shard {k}) also has a counter on shard {j} (next_value {next})"
                ));
            }
        }
    }
    faults
}

/// `exactly.create_raffle` through the router: the raffle's id (the first column, whether
/// the function returns the id or the raffle's row).
fn create_raffle(router: &mut Client, tickets: i64) -> Result<i64, String> {
    let sql = format!("SELECT * FROM exactly.create_raffle({tickets}, 12)");
    let rows = raw(router, &sql).map_err(|e| format!("{sql}: {}", describe(&e)))?;
    first(&rows)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{sql} returned {rows:?}"))
}

/// Raffles: 12 raffles of 2,000 tickets made through the router, 8 batch jobs of 250 each,
/// every job queued twice back to back (two connections run it at the same moment), 16
/// connections through `{api}.batch_create_tickets` with the job's batch key. Each raffle
/// must end, on its shard (`raffle >> 48`), with exactly 2,000 tickets, distinct codes, 8
/// batch keys, and both runs of a job told the same count.
fn raffles(sh: &Shards, api: &'static str) -> Faults {
    const TICKETS: i64 = 2000;
    const JOBS: i64 = 8;
    let mut faults = Vec::new();
    let mut router = sh.router();
    let mut raffles: Vec<(i64, usize)> = Vec::new();
    for _ in 0..12 {
        match create_raffle(&mut router, TICKETS) {
            Ok(id) => {
                let k = (id >> 48) as usize;
                if k >= SHARDS || id < 0 {
                    faults.push(format!("raffle {id}: id >> 48 = {k}, not a shard"));
                    continue;
                }
                raffles.push((id, k));
            }
            Err(e) => faults.push(e),
        }
    }
    if raffles.is_empty() {
        return faults;
    }
    let shards_used: BTreeSet<usize> = raffles.iter().map(|r| r.1).collect();
    if shards_used.len() < 2 {
        faults.push(format!(
            "12 raffles made \"on a shard picked at random\" all went to shards {shards_used:?}"
        ));
    }
    let mut jobs: Vec<(i64, String)> = raffles
        .iter()
        .flat_map(|(id, _)| (0..JOBS).map(move |j| (*id, format!("{api}-raffle-{id}-job-{j}"))))
        .collect();
    XorShift(0xbadcafe).shuffle(&mut jobs);
    // each job twice, back to back: two connections pop them at the same moment
    let queue: Vec<(i64, String)> = jobs
        .iter()
        .rev()
        .flat_map(|j| [j.clone(), j.clone()])
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let outcomes = at_once_through(sh.router_config(), 16, {
        let queue = queue.clone();
        move |_, c| {
            let mut out = Vec::new();
            loop {
                let Some((raffle, key)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let sql = format!(
                    "SELECT {api}.batch_create_tickets({raffle}, {}, {})",
                    TICKETS / JOBS,
                    lit(&key)
                );
                let r = raw(c, &sql)
                    .map(|rows| first(&rows).and_then(|v| v.parse::<i64>().ok()))
                    .map_err(|e| (state(&e), error_text(&e)));
                out.push((raffle, key, r));
            }
            out
        }
    });
    let mut errors = Vec::new();
    let mut per_key: BTreeMap<String, (i64, Vec<i64>)> = BTreeMap::new();
    for (raffle, key, r) in outcomes.into_iter().flatten() {
        match r {
            Err(e) => errors.push(e),
            Ok(None) => faults.push(format!("batch {key} returned no count")),
            Ok(Some(n)) => per_key.entry(key).or_insert((raffle, Vec::new())).1.push(n),
        }
    }
    faults.extend(summarize_errors(&errors));
    let mut told: BTreeMap<i64, i64> = BTreeMap::new();
    for (key, (raffle, counts)) in &per_key {
        if counts.iter().any(|n| *n != counts[0]) {
            faults.push(format!("the two runs of {key} were told {counts:?}"));
        }
        *told.entry(*raffle).or_default() += counts[0];
    }
    for (id, k) in &raffles {
        if told.get(id).copied().unwrap_or(0) != TICKETS {
            faults.push(format!(
                "raffle {id} (shard {k}): the jobs were told {} tickets in all, requested {TICKETS}",
                told.get(id).copied().unwrap_or(0)
            ));
        }
        for (j, shard) in sh.shards.iter().enumerate() {
            let mut c = shard.connect();
            let row = must(
                &mut c,
                &format!(
                    "SELECT coalesce((SELECT tickets_requested || '/' || tickets_created FROM exactly.raffles WHERE id = {id}), 'none'),
                            (SELECT count(*) FROM exactly.tickets WHERE raffle_id = {id}),
                            (SELECT count(DISTINCT code) FROM exactly.tickets WHERE raffle_id = {id}),
                            (SELECT count(*) FROM exactly.ticket_batches WHERE raffle_id = {id})"
                ),
            );
            let v = |i: usize| row[0][i].clone().unwrap_or_default();
            if j == *k {
                let want = vec![
                    format!("{TICKETS}/{TICKETS}"),
                    TICKETS.to_string(),
                    TICKETS.to_string(),
                    JOBS.to_string(),
                ];
                let got: Vec<String> = (0..4).map(v).collect();
                if got != want {
                    faults.push(format!(
                        "raffle {id} on its shard {k}: requested/created, tickets, distinct codes, batch keys = {got:?}, expected {want:?}"
                    ));
                }
            } else if v(0) != "none" || v(1) != "0" {
                faults.push(format!(
                    "raffle {id} belongs to shard {k} but shard {j} has raffle {} and {} of its tickets",
                    v(0),
                    v(1)
                ));
            }
        }
    }
    faults
}

/// What a ledger client was told: an append (account, amount, entry id) or a transfer
/// (from, to, amount, transfer id).
#[derive(Clone, Debug)]
enum Told {
    Append(String, i64, i64),
    Transfer(String, String, i64, i64),
}

/// The ledger: 8 tenants (2 a shard) with accounts `t:a` and `t:b`; 16 connections × 40
/// calls: appends with idempotency keys (a third of them replayed at once, which must return
/// the same entry) and transfers between a tenant's two accounts. Then: no error; every
/// told entry and transfer on the account's shard; balances there equal to what clients
/// were told (and through `balance_at`); no account on another shard; `verify_ledger()`
/// clean through the router and on every shard, and the entries chain.
fn ledger(sh: &Shards, api: &'static str) -> Faults {
    let mut router = sh.router();
    let tenants = keys_on_every_shard(&mut router, &format!("led-{api}-"), 2);
    let accounts: Vec<(String, usize)> = tenants
        .iter()
        .flat_map(|(t, k)| [(format!("{t}:a"), *k), (format!("{t}:b"), *k)])
        .collect();
    let names: Arc<Vec<String>> = Arc::new(tenants.iter().map(|t| t.0.clone()).collect());
    let outcomes = at_once_through(sh.router_config(), 16, {
        let names = names.clone();
        move |i, c| {
            let mut rng = XorShift(0x1ed9e7 + 104729 * i as u64);
            let mut told = Vec::new();
            let mut faults = Vec::new();
            let mut errors = Vec::new();
            for n in 0..40 {
                let t = pick(&mut rng, &names[..]).clone();
                let (a, b) = (format!("{t}:a"), format!("{t}:b"));
                if rng.next() % 2 == 0 {
                    let account = if rng.next() % 2 == 0 { a } else { b };
                    let amount = (rng.next() % 200) as i64 - 60;
                    let amount = if amount == 0 { 7 } else { amount };
                    let key = format!("{api}-pay-{i}-{n}");
                    let sql = format!(
                        "SELECT id::text, amount::text FROM {api}.append_payment({}, {amount}, {})",
                        lit(&account),
                        lit(&key)
                    );
                    let replays = if rng.next() % 3 == 0 { 2 } else { 1 };
                    let mut ids = Vec::new();
                    for _ in 0..replays {
                        match raw(c, &sql) {
                            Ok(rows) => ids.push(first(&rows).and_then(|v| v.parse::<i64>().ok())),
                            Err(e) => errors.push((state(&e), error_text(&e))),
                        }
                    }
                    if let Some(Some(id)) = ids.first() {
                        told.push(Told::Append(account.clone(), amount, *id));
                    }
                    if ids.len() == 2 && ids[0] != ids[1] {
                        faults.push(format!(
                            "append with key {key} replayed: entries {:?} and {:?}",
                            ids[0], ids[1]
                        ));
                    }
                } else {
                    let (from, to) = if rng.next() % 2 == 0 { (a, b) } else { (b, a) };
                    let amount = 1 + (rng.next() % 50) as i64;
                    let sql = format!(
                        "SELECT id::text FROM {api}.transfer({}, {}, {amount})",
                        lit(&from),
                        lit(&to)
                    );
                    match raw(c, &sql) {
                        Ok(rows) => match first(&rows).and_then(|v| v.parse::<i64>().ok()) {
                            Some(id) => told.push(Told::Transfer(from, to, amount, id)),
                            None => faults.push(format!("{sql} returned {rows:?}")),
                        },
                        Err(e) => errors.push((state(&e), error_text(&e))),
                    }
                }
            }
            (told, faults, errors)
        }
    });
    let mut faults = Vec::new();
    let mut errors = Vec::new();
    let mut told = Vec::new();
    for (t, f, e) in outcomes {
        told.extend(t);
        faults.extend(f);
        errors.extend(e);
    }
    faults.extend(summarize_errors(&errors));
    let shard_of: HashMap<String, usize> = accounts.iter().cloned().collect();
    let mut expected: BTreeMap<String, i64> =
        accounts.iter().map(|(a, _)| (a.clone(), 0)).collect();
    let mut shard_clients: Vec<Client> = (0..SHARDS).map(|k| sh.shard(k)).collect();
    let mut missing = Vec::new();
    for t in &told {
        match t {
            Told::Append(account, amount, id) => {
                *expected.get_mut(account).unwrap() += amount;
                let k = shard_of[account];
                let found = int(
                    &mut shard_clients[k],
                    &format!(
                        "SELECT count(*) FROM exactly.payments WHERE id = {id} AND account = {} AND amount = {amount}",
                        lit(account)
                    ),
                );
                if found != 1 {
                    missing.push(format!(
                        "entry {id} ({account} {amount}) is not on shard {k}"
                    ));
                }
            }
            Told::Transfer(from, to, amount, id) => {
                *expected.get_mut(from).unwrap() -= amount;
                *expected.get_mut(to).unwrap() += amount;
                let k = shard_of[from];
                let found = int(
                    &mut shard_clients[k],
                    &format!(
                        "SELECT count(*) FROM exactly.transfers WHERE id = {id} AND from_account = {} AND to_account = {} AND amount = {amount}",
                        lit(from),
                        lit(to)
                    ),
                );
                if found != 1 {
                    missing.push(format!(
                        "transfer {id} ({from} -> {to} {amount}) is not on shard {k}"
                    ));
                }
            }
        }
    }
    if !missing.is_empty() {
        faults.push(format!(
            "{} of {} told entries/transfers are not where they belong, e.g. {:?}",
            missing.len(),
            told.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    for (account, want) in &expected {
        let k = shard_of[account];
        for (j, c) in shard_clients.iter_mut().enumerate() {
            let got = one(
                c,
                &format!(
                    "SELECT coalesce((SELECT balance::text FROM exactly.accounts WHERE account = {}), 'none')",
                    lit(account)
                ),
            );
            if j == k && got.parse::<f64>().ok() != Some(*want as f64) {
                faults.push(format!(
                    "{account}: balance {got} on its shard {k}, clients were told of {want}"
                ));
            }
            if j != k && got != "none" {
                faults.push(format!(
                    "{account} (shard {k}) also has an account on shard {j} (balance {got})"
                ));
            }
        }
        if api == "exactly" {
            let sql = format!(
                "SELECT exactly.balance_at({}, pg_catalog.clock_timestamp())::text",
                lit(account)
            );
            match raw(&mut router, &sql) {
                Ok(rows) => {
                    let got = first(&rows).unwrap_or_default();
                    if got.parse::<f64>().ok() != Some(*want as f64) {
                        faults.push(format!("{sql} = {got}, clients were told of {want}"));
                    }
                }
                Err(e) => faults.push(format!("{sql}: {}", describe(&e))),
            }
        }
    }
    // verify_ledger through the router: every account, all ok
    match raw(
        &mut router,
        &format!("SELECT account, ok::text, coalesce(detail, '') FROM {api}.verify_ledger()"),
    ) {
        Ok(rows) => {
            let listed: BTreeSet<String> = rows.iter().filter_map(|r| r[0].clone()).collect();
            for r in rows.iter().filter(|r| r[1].as_deref() != Some("true")) {
                faults.push(format!("verify_ledger() through the router: {r:?}"));
            }
            for (account, _) in &accounts {
                if !listed.contains(account) {
                    faults.push(format!(
                        "verify_ledger() through the router does not list {account}"
                    ));
                }
            }
        }
        Err(e) => faults.push(format!(
            "verify_ledger() through the router: {}",
            describe(&e)
        )),
    }
    for (k, c) in shard_clients.iter_mut().enumerate() {
        faults.extend(
            verify_ledger_faults(c)
                .into_iter()
                .chain(entry_faults(c))
                .map(|f| format!("on shard {k}: {f}")),
        );
    }
    faults
}

/// Per shard: accounts (name=balance/entries), and the counts of entries, transfers and
/// holds.
fn ledger_snapshot(sh: &Shards) -> Vec<String> {
    (0..SHARDS)
        .map(|k| {
            one(
                &mut sh.shard(k),
                "SELECT coalesce((SELECT string_agg(account || '=' || balance || '/' || entries || '/' || pending_debits || '/' || pending_credits, ',' ORDER BY account) FROM exactly.accounts), '')
                     || ' entries ' || (SELECT count(*) FROM exactly.payments)
                     || ' transfers ' || (SELECT count(*) FROM exactly.transfers)
                     || ' holds ' || (SELECT count(*) FROM exactly.holds)",
            )
        })
        .collect()
}

/// The sum of the balances of `accounts` over every shard.
fn money(sh: &Shards, accounts: &[&str]) -> f64 {
    let list = accounts
        .iter()
        .map(|a| lit(a))
        .collect::<Vec<_>>()
        .join(", ");
    (0..SHARDS)
        .map(|k| {
            one(
                &mut sh.shard(k),
                &format!("SELECT coalesce(sum(balance), 0)::text FROM exactly.accounts WHERE account IN ({list})"),
            )
            .parse::<f64>()
            .unwrap()
        })
        .sum()
}

/// Two tenants on different shards, `x:a` funded with 100 through the router, `y:b` with
/// `max_balance` 50 (set on its shard).
fn two_shard_accounts(sh: &Shards, prefix: &str) -> (String, String) {
    let mut router = sh.router();
    let keys = keys_on_every_shard(&mut router, prefix, 1);
    let (x, y) = (format!("{}:a", keys[0].0), format!("{}:b", keys[1].0));
    must(
        &mut router,
        &format!("SELECT * FROM exactly.append_payment({}, 100)", lit(&x)),
    );
    must(
        &mut sh.shard(keys[1].1),
        &format!(
            "INSERT INTO exactly.accounts (account, max_balance) VALUES ({}, 50)",
            lit(&y)
        ),
    );
    (x, y)
}

/// A transfer of 80 from `x:a` (shard 0) to `y:b` (shard 1) through the router, as
/// `transfer`, with an idempotency key, as `transfers` (with a same-shard leg first), as a
/// `hold`, and inside a router transaction: each refused with 0A000, and no shard changed,
/// the money of the two accounts is what it was.
fn cross_shard_transfers_are_refused(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let (x, y) = two_shard_accounts(sh, "xs-");
    let x_b = x.replace(":a", ":b");
    let before = ledger_snapshot(sh);
    let money_before = money(sh, &[&x, &y]);
    let mut router = sh.router();
    let calls = [
        format!(
            "SELECT * FROM exactly.transfer({}, {}, 80)",
            lit(&x),
            lit(&y)
        ),
        format!(
            "SELECT * FROM exactly.transfer({}, {}, 30)",
            lit(&x),
            lit(&y)
        ),
        format!(
            "SELECT * FROM exactly.transfer({}, {}, 80, idempotency_key => 'xs-1')",
            lit(&x),
            lit(&y)
        ),
        format!(
            "SELECT * FROM exactly.transfer({}, {}, 80)",
            lit(&y),
            lit(&x)
        ),
        format!(
            "SELECT * FROM exactly.transfers({})",
            lit(&format!(
                r#"[{{"from": "{x}", "to": "{x_b}", "amount": 1}}, {{"from": "{x}", "to": "{y}", "amount": 1}}]"#
            ))
        ),
        format!("SELECT * FROM exactly.hold({}, {}, 5)", lit(&x), lit(&y)),
        format!(
            "SELECT * FROM exactly.hold({}, {}, 5, timeout => '1 minute')",
            lit(&y),
            lit(&x)
        ),
    ];
    for sql in &calls {
        match raw(&mut router, sql) {
            Ok(rows) => faults.push(format!("{sql} succeeded ({rows:?}), expected 0A000")),
            Err(e) if state(&e) == "0A000" => {}
            Err(e) => faults.push(format!("{sql}: expected 0A000, got {}", describe(&e))),
        }
    }
    // inside the router's transaction, then rolled back
    must(&mut router, "BEGIN");
    if let Ok(rows) = raw(&mut router, &calls[0]) {
        faults.push(format!(
            "in a transaction, {} succeeded ({rows:?})",
            calls[0]
        ));
    }
    must(&mut router, "ROLLBACK");
    let after = ledger_snapshot(sh);
    for k in 0..SHARDS {
        if before[k] != after[k] {
            faults.push(format!(
                "shard {k} changed: before {:?}, after {:?}",
                before[k], after[k]
            ));
        }
    }
    let money_after = money(sh, &[&x, &y]);
    if money_after != money_before {
        faults.push(format!(
            "{x} and {y} held {money_before} before, {money_after} after: money was made or lost"
        ));
    }
    faults
}

/// The twin: the same move of 80 done as two routed `append_payment` calls in one router
/// transaction; the credit is refused (y:b's max_balance), the application rolls back. The
/// same money check must see that the debit stayed.
fn cross_shard_transfer_as_two_appends(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let (x, y) = two_shard_accounts(sh, "xs2-");
    let money_before = money(sh, &[&x, &y]);
    let mut router = sh.router();
    must(&mut router, "BEGIN");
    let debit = raw(
        &mut router,
        &format!("SELECT * FROM exactly.append_payment({}, -80)", lit(&x)),
    );
    let credit = raw(
        &mut router,
        &format!("SELECT * FROM exactly.append_payment({}, 80)", lit(&y)),
    );
    let _ = raw(&mut router, "ROLLBACK");
    eprintln!(
        "    two-append transfer: debit {}, credit {}",
        debit
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| describe(&e)),
        credit
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| describe(&e))
    );
    let money_after = money(sh, &[&x, &y]);
    if money_after != money_before {
        faults.push(format!(
            "{x} and {y} held {money_before} before, {money_after} after: money was made or lost"
        ));
    }
    faults
}

/// The tables of the application, made identically on every shard: odd names, a composite
/// key with a numeric part, a one-column numeric key.
const UPSERT_TABLES: &str = r#"
CREATE TABLE public."Odd Rows" ("select" numeric NOT NULL, "Key Part" text NOT NULL,
    "from" bigserial, "value" bigint NOT NULL DEFAULT 0, "created by" text,
    PRIMARY KEY ("Key Part", "select"));
CREATE TABLE public.counters (k numeric PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, id bigserial);
"#;

/// Numbers and the ways a careless client spells them in JSON: one key each.
const SPELLED: &[(&str, &[&str])] = &[
    ("1", &["1", "1.0", "\"1\"", "1.000", "1e0"]),
    ("2", &["2", "2.0", "\"2\""]),
    ("2.5", &["2.5", "2.50", "\"2.5\"", "25e-1"]),
    ("10", &["10", "10.0", "1e1", "\"10\""]),
    ("-3", &["-3", "-3.0", "\"-3\""]),
    ("0.5", &["0.5", "0.50", "\"0.5\"", "5e-1"]),
    ("0", &["0", "0.0", "-0", "\"0\"", "-0.0", "0e5"]),
    (
        "100000000000000000000",
        &[
            "1e20",
            "100000000000000000000",
            "100000000000000000000.000",
            "\"100000000000000000000\"",
        ],
    ),
];

/// Ways to name a table, as PostgreSQL reads them (an ORM quotes every part).
const ODD_ROWS: &[&str] = &[
    "\"Odd Rows\"",
    "public.\"Odd Rows\"",
    "PUBLIC.\"Odd Rows\"",
    "\"public\".\"Odd Rows\"",
];
const COUNTERS: &[&str] = &[
    "counters",
    "public.counters",
    "Counters",
    "PUBLIC.COUNTERS",
    "\"counters\"",
    "\"public\".\"counters\"",
];

/// Composite key j of "Odd Rows": ("Key Part" text, "select" number index), 32 keys.
fn odd_key(j: usize) -> (String, usize) {
    (format!("kp-ü-{}", j % 4), j / 4)
}

/// A JSON spelling of composite key j, picked by `rng` (member order varies too).
fn odd_key_json(j: usize, rng: &mut XorShift) -> String {
    let (part, n) = odd_key(j);
    let number = pick(rng, SPELLED[n].1);
    if rng.next() % 2 == 0 {
        format!(r#"{{"Key Part": "{part}", "select": {number}}}"#)
    } else {
        format!(r#"{{"select": {number}, "Key Part": "{part}"}}"#)
    }
}

fn counter_key_json(j: usize, rng: &mut XorShift) -> String {
    format!(r#"{{"k": {}}}"#, pick(rng, SPELLED[j].1))
}

/// The rows over all shards that meet `condition`, as (shard, `what` of the row as text).
fn rows_of_key(sh: &Shards, table: &str, what: &str, condition: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for k in 0..SHARDS {
        for r in must(
            &mut sh.shard(k),
            &format!("SELECT ({what})::text FROM {table} t WHERE {condition}"),
        ) {
            found.push((k, r[0].clone().unwrap_or_default()));
        }
    }
    found
}

/// find_or_create and increment: 16 connections × 40 `find_or_create` on the 32 keys of
/// "Odd Rows" (each call a random spelling of the key and of the table name), then 16 × 40
/// `increment`s of `counters` (8 keys, among them 0 spelled -0.0 and 1e20) and of "Odd Rows"."value" (by 2). Per key: exactly
/// one caller told `created`, every caller told the same row, one row over all four shards,
/// on `shard_for_row(key)` (the same for every spelling), and its counter equals what the
/// increments were told: each told value 1..N exactly once.
fn upsert(sh: &Shards, api: &'static str) -> Faults {
    let mut faults = Vec::new();
    sh.on_every_shard(UPSERT_TABLES);
    const ODD_KEYS: usize = 4 * SPELLED.len();
    let outcomes = at_once_through(sh.router_config(), 16, move |i, c| {
        let mut rng = XorShift(0xf0c + 31337 * i as u64);
        let mut out = Vec::new();
        for _ in 0..40 {
            let j = (rng.next() % ODD_KEYS as u64) as usize;
            let key = odd_key_json(j, &mut rng);
            let rel = pick(&mut rng, ODD_ROWS);
            let sql = format!(
                "SELECT data->>'from', created::text FROM {api}.find_or_create({}, {}::jsonb, '{{\"created by\": \"c{i}\"}}'::jsonb)",
                lit(rel),
                lit(&key)
            );
            let r = raw(c, &sql)
                .map(|rows| {
                    rows.first().map(|r| {
                        (
                            r[0].clone().unwrap_or_default(),
                            r[1].as_deref() == Some("true"),
                        )
                    })
                })
                .map_err(|e| (state(&e), format!("{key}: {}", error_text(&e))));
            out.push((j, r));
        }
        out
    });
    let mut errors = Vec::new();
    let mut per_key: BTreeMap<usize, (usize, BTreeSet<String>)> = BTreeMap::new();
    for (j, r) in outcomes.into_iter().flatten() {
        match r {
            Err(e) => errors.push(e),
            Ok(None) => faults.push(format!("find_or_create of key {j} returned no row")),
            Ok(Some((id, created))) => {
                let e = per_key.entry(j).or_default();
                e.0 += created as usize;
                e.1.insert(id);
            }
        }
    }
    faults.extend(summarize_errors(&errors));
    let increments = at_once_through(sh.router_config(), 16, move |i, c| {
        let mut rng = XorShift(0x1c + 65537 * i as u64);
        let mut out = Vec::new();
        for _ in 0..40 {
            let (table, j, sql) = if rng.next() % 2 == 0 {
                let j = (rng.next() % SPELLED.len() as u64) as usize;
                let sql = format!(
                    "SELECT {api}.increment({}, {}::jsonb, 'hits', 1)::text",
                    lit(*pick(&mut rng, COUNTERS)),
                    lit(&counter_key_json(j, &mut rng))
                );
                ("counters", j, sql)
            } else {
                let j = (rng.next() % ODD_KEYS as u64) as usize;
                let sql = format!(
                    "SELECT {api}.increment({}, {}::jsonb, 'value', 2)::text",
                    lit(*pick(&mut rng, ODD_ROWS)),
                    lit(&odd_key_json(j, &mut rng))
                );
                ("odd", j, sql)
            };
            let r = raw(c, &sql)
                .map(|rows| first(&rows).and_then(|v| v.parse::<i64>().ok()))
                .map_err(|e| (state(&e), error_text(&e)));
            out.push((table, j, r));
        }
        out
    });
    let mut errors = Vec::new();
    let mut told: BTreeMap<(&str, usize), Vec<i64>> = BTreeMap::new();
    for (table, j, r) in increments.into_iter().flatten() {
        match r {
            Err(e) => errors.push(e),
            Ok(None) => faults.push(format!("increment of {table} key {j} returned nothing")),
            Ok(Some(v)) => told.entry((table, j)).or_default().push(v),
        }
    }
    faults.extend(
        summarize_errors(&errors)
            .into_iter()
            .map(|e| format!("increment: {e}")),
    );
    let mut router = sh.router();
    for j in 0..ODD_KEYS {
        let (part, n) = odd_key(j);
        let number = SPELLED[n].0;
        let (created, ids) = per_key.get(&j).cloned().unwrap_or_default();
        if !ids.is_empty() && created != 1 {
            faults.push(format!(
                "\"Odd Rows\" key ({part}, {number}): {created} callers were told created"
            ));
        }
        if ids.len() > 1 {
            faults.push(format!(
                "\"Odd Rows\" key ({part}, {number}): callers were told different rows {ids:?}"
            ));
        }
        let rows = rows_of_key(
            sh,
            "public.\"Odd Rows\"",
            "\"value\"",
            &format!("\"Key Part\" = {} AND \"select\" = {number}", lit(&part)),
        );
        let incs = told.get(&("odd", j)).cloned().unwrap_or_default();
        if rows.len() != 1 {
            faults.push(format!(
                "\"Odd Rows\" key ({part}, {number}): {} rows over the shards: {rows:?}",
                rows.len()
            ));
        } else {
            let want = 2 * incs.len() as i64;
            if rows[0].1 != want.to_string() {
                faults.push(format!(
                    "\"Odd Rows\" key ({part}, {number}): value {} after {} increments by 2",
                    rows[0].1,
                    incs.len()
                ));
            }
        }
        let halves: Vec<i64> = incs.iter().map(|v| v / 2).collect();
        if let Some(what) = not_one_to_n(&halves) {
            faults.push(format!(
                "\"Odd Rows\" key ({part}, {number}): increments told {what} (in halves)"
            ));
        }
        if api == "exactly" && rows.len() == 1 {
            // every spelling of the key and of the table routes to the shard holding the row
            let mut rng = XorShift(0x5eed + j as u64);
            let mut routed = BTreeSet::new();
            for rel in ODD_ROWS {
                for _ in 0..4 {
                    let sql = format!(
                        "SELECT exactly.shard_for_row({}, {}::jsonb)::text",
                        lit(rel),
                        lit(&odd_key_json(j, &mut rng))
                    );
                    routed.insert(
                        raw(&mut router, &sql)
                            .map(|r| first(&r))
                            .map_err(|e| describe(&e)),
                    );
                }
            }
            if routed.len() != 1 || routed.first() != Some(&Ok(Some(rows[0].0.to_string()))) {
                faults.push(format!(
                    "\"Odd Rows\" key ({part}, {number}) is on shard {}, shard_for_row of its spellings says {routed:?}",
                    rows[0].0
                ));
            }
        }
    }
    for (j, (number, _)) in SPELLED.iter().enumerate() {
        let incs = told.get(&("counters", j)).cloned().unwrap_or_default();
        let rows = rows_of_key(sh, "public.counters", "hits", &format!("k = {number}"));
        let hits: Vec<String> = rows
            .iter()
            .map(|(k, row)| format!("shard {k}: {row}"))
            .collect();
        if incs.is_empty() {
            continue;
        }
        if rows.len() != 1 {
            faults.push(format!(
                "counters key {number}: {} rows over the shards: {hits:?}",
                rows.len()
            ));
        } else if rows[0].1 != incs.len().to_string() {
            faults.push(format!(
                "counters key {number}: hits {hits:?} after {} increments",
                incs.len()
            ));
        }
        if let Some(what) = not_one_to_n(&incs) {
            faults.push(format!("counters key {number}: increments told {what}"));
        }
    }
    faults
}

/// The jobs table on every shard: ids 1..300 on each (the same ids everywhere), each row
/// naming its shard, and a trigger logging every completion.
fn jobs_tables(sh: &Shards, table: &str, rows: usize) {
    for k in 0..SHARDS {
        must(
            &mut sh.shard(k),
            &format!(
                "CREATE TABLE {table} (id int PRIMARY KEY, shard int NOT NULL, done_at timestamptz);
                 CREATE INDEX ON {table} (id) WHERE done_at IS NULL;
                 CREATE TABLE {table}_completions (id int NOT NULL);
                 CREATE FUNCTION {table}_log() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO {table}_completions VALUES (NEW.id); RETURN NEW; END $$;
                 CREATE TRIGGER completed AFTER UPDATE OF done_at ON {table} FOR EACH ROW
                     WHEN (OLD.done_at IS NULL AND NEW.done_at IS NOT NULL) EXECUTE FUNCTION {table}_log();
                 INSERT INTO {table} SELECT g, {k} FROM generate_series(1, {rows}) g;"
            ),
        );
    }
}

/// Every row of `table` on every shard done, completed exactly once (the trigger's log).
fn jobs_faults(sh: &Shards, table: &str, rows: usize) -> Faults {
    let mut faults = Vec::new();
    for k in 0..SHARDS {
        let r = must(
            &mut sh.shard(k),
            &format!(
                "SELECT (SELECT count(*) FROM {table} WHERE done_at IS NULL)::text,
                        (SELECT count(*) FROM (SELECT id FROM {table}_completions GROUP BY id HAVING count(*) > 1) x)::text,
                        (SELECT count(DISTINCT id) FROM {table}_completions)::text"
            ),
        );
        let v = |i: usize| r[0][i].clone().unwrap_or_default();
        if v(0) != "0" {
            faults.push(format!(
                "shard {k}: {} of {rows} rows of {table} never completed",
                v(0)
            ));
        }
        if v(1) != "0" {
            faults.push(format!(
                "shard {k}: {} rows of {table} completed more than once",
                v(1)
            ));
        }
        if v(2) != rows.to_string() && v(0) == "0" {
            faults.push(format!(
                "shard {k}: {} rows of {table} logged as completed, {rows} exist",
                v(2)
            ));
        }
    }
    faults
}

/// Claims: 8 workers through the router, `exactly.claim_batch('jobs', 'done_at', 25)` then
/// `{api}.complete_batch(claim)` for each claim. Every claim's rows come from one shard,
/// that `exactly.shard_of_claim(claim)` names, at most one claim per shard per call; each
/// completion marks all of its claim's rows; every row of every shard delivered and
/// completed exactly once.
fn claims(sh: &Shards, api: &'static str) -> Faults {
    const ROWS: usize = 300;
    jobs_tables(sh, "jobs", ROWS);
    let logs = at_once_through(sh.router_config(), 8, move |_, c| {
        let mut faults = Vec::new();
        let mut delivered: Vec<(usize, i64)> = Vec::new();
        for _ in 0..200 {
            let rows = match raw(
                c,
                "SELECT claim::text, data->>'shard', data->>'id' FROM exactly.claim_batch('jobs', 'done_at', 25)",
            ) {
                Ok(rows) => rows,
                Err(e) => {
                    faults.push(format!("claim_batch: {}", describe(&e)));
                    break;
                }
            };
            if rows.is_empty() {
                break;
            }
            let mut by_claim: BTreeMap<String, Vec<(usize, i64)>> = BTreeMap::new();
            for r in &rows {
                let shard: usize = r[1].as_deref().unwrap_or("9").parse().unwrap();
                let id: i64 = r[2].as_deref().unwrap_or("0").parse().unwrap();
                by_claim
                    .entry(r[0].clone().unwrap_or_default())
                    .or_default()
                    .push((shard, id));
            }
            let shards_in_call: Vec<usize> = by_claim.values().map(|rows| rows[0].0).collect();
            let distinct: BTreeSet<usize> = shards_in_call.iter().copied().collect();
            if distinct.len() != shards_in_call.len() {
                faults.push(format!(
                    "one claim_batch call made two claims on one shard: {shards_in_call:?}"
                ));
            }
            sleep_ms(2); // sending them
            for (claim, rows) in &by_claim {
                let shards: BTreeSet<usize> = rows.iter().map(|r| r.0).collect();
                match raw(
                    c,
                    &format!("SELECT exactly.shard_of_claim({})::text", lit(claim)),
                ) {
                    Ok(r) => {
                        let said = first(&r).unwrap_or_default();
                        if shards.len() != 1 || said != rows[0].0.to_string() {
                            faults.push(format!(
                                "claim {claim}: rows of shards {shards:?}, shard_of_claim says {said}"
                            ));
                        }
                        if !claim.starts_with(&format!("{:04x}", rows[0].0)) {
                            faults.push(format!(
                                "claim {claim} holds rows of shard {}: its first four hex digits are not the shard's number",
                                rows[0].0
                            ));
                        }
                    }
                    Err(e) => faults.push(format!("shard_of_claim({claim}): {}", describe(&e))),
                }
                delivered.extend(rows.iter().copied());
                match raw(
                    c,
                    &format!("SELECT {api}.complete_batch({})::text", lit(claim)),
                ) {
                    Ok(r) => {
                        let n = first(&r).unwrap_or_default();
                        if n != rows.len().to_string() {
                            faults.push(format!(
                                "complete_batch({claim}) of {} rows (shard {:?}) returned {n}",
                                rows.len(),
                                shards
                            ));
                        }
                    }
                    Err(e) => faults.push(format!("complete_batch({claim}): {}", describe(&e))),
                }
            }
        }
        (faults, delivered)
    });
    let mut faults = Vec::new();
    let mut deliveries: BTreeMap<(usize, i64), usize> = BTreeMap::new();
    for (f, d) in logs {
        if f.len() > 5 {
            faults.push(format!("a worker found {} faults; the first:", f.len()));
        }
        faults.extend(f.into_iter().take(5));
        for row in d {
            *deliveries.entry(row).or_default() += 1;
        }
    }
    let twice = deliveries.values().filter(|n| **n > 1).count();
    if twice > 0 {
        faults.push(format!(
            "{twice} rows were delivered to workers more than once"
        ));
    }
    if deliveries.len() != SHARDS * ROWS {
        faults.push(format!(
            "{} distinct rows delivered, {} exist on the shards",
            deliveries.len(),
            SHARDS * ROWS
        ));
    }
    faults.extend(jobs_faults(sh, "jobs", ROWS));
    faults
}

/// Leases: four names `scope:nightly-sync`, one scope on each shard; 16 connections for
/// 1.5 s each acquiring a random name through `{api}.acquire_lease` (30 s ttl), holding it a
/// moment, releasing it. A grant while the client-side record says another connection
/// holds the name is a fault; the fences of a name, in grant order, must be 1..N; the
/// lease lives on the name's shard alone.
fn leases(sh: &Shards, api: &'static str) -> Faults {
    let mut router = sh.router();
    let scopes = keys_on_every_shard(&mut router, &format!("lease-{api}-"), 1);
    let names: Arc<Vec<(String, usize)>> = Arc::new(
        scopes
            .iter()
            .map(|(s, k)| (format!("{s}:nightly-sync"), *k))
            .collect(),
    );
    // name -> (holder, fence), and every fence granted, in grant order
    type Book = Mutex<HashMap<String, (Option<(usize, i64)>, Vec<i64>)>>;
    let book: Arc<Book> = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let logs = at_once_through(sh.router_config(), 16, {
        let (names, book) = (names.clone(), book.clone());
        move |i, c| {
            let mut rng = XorShift(0x1ea5e + 7 * i as u64);
            let mut faults = Vec::new();
            let mut errors = Vec::new();
            while t0.elapsed() < Duration::from_millis(1500) {
                let name = pick(&mut rng, &names[..]).0.clone();
                let sql = format!(
                    "SELECT token::text, fence::text FROM {api}.acquire_lease({}, '30 seconds')",
                    lit(&name)
                );
                let rows = match raw(c, &sql) {
                    Ok(rows) => rows,
                    Err(e) => {
                        errors.push((state(&e), error_text(&e)));
                        continue;
                    }
                };
                let Some(row) = rows.first() else {
                    sleep_ms(1);
                    continue;
                };
                let token = row[0].clone().unwrap_or_default();
                let fence: i64 = row[1].as_deref().unwrap_or("0").parse().unwrap();
                {
                    let mut b = book.lock().unwrap();
                    let entry = b.entry(name.clone()).or_default();
                    if let Some((other, other_fence)) = entry.0 {
                        faults.push(format!(
                            "{name}: granted to connection {i} (fence {fence}) while connection {other} holds it (fence {other_fence})"
                        ));
                    }
                    entry.0 = Some((i, fence));
                    entry.1.push(fence);
                }
                sleep_ms(1 + rng.next() % 3);
                book.lock().unwrap().get_mut(&name).unwrap().0 = None;
                match raw(
                    c,
                    &format!(
                        "SELECT {api}.release_lease({}, {})::text",
                        lit(&name),
                        lit(&token)
                    ),
                ) {
                    Ok(rows) if first(&rows).as_deref() == Some("true") => {}
                    Ok(rows) => faults.push(format!(
                        "release of a live lease of {name} returned {rows:?}"
                    )),
                    Err(e) => errors.push((state(&e), error_text(&e))),
                }
            }
            (faults, errors)
        }
    });
    let mut faults = Vec::new();
    let mut errors = Vec::new();
    for (f, e) in logs {
        faults.extend(f.into_iter().take(5));
        errors.extend(e);
    }
    faults.extend(summarize_errors(&errors));
    let book = book.lock().unwrap();
    let mut grants = 0;
    for (name, k) in names.iter() {
        let fences = book.get(name).map(|e| e.1.clone()).unwrap_or_default();
        grants += fences.len();
        if !fences.iter().copied().eq(1..=fences.len() as i64) {
            let shown: Vec<i64> = fences.iter().take(12).copied().collect();
            faults.push(format!(
                "{name}: fences in grant order are not 1..{}: {shown:?}...",
                fences.len()
            ));
        }
        for j in 0..SHARDS {
            let fence = one(
                &mut sh.shard(j),
                &format!(
                    "SELECT coalesce((SELECT fence::text FROM exactly.leases WHERE name = {}), 'none')",
                    lit(name)
                ),
            );
            if j == *k && fence != fences.len().to_string() {
                faults.push(format!(
                    "{name}: its shard {k} has fence {fence}, {} grants were told",
                    fences.len()
                ));
            }
            if j != *k && fence != "none" {
                faults.push(format!(
                    "{name} (shard {k}) also has a lease on shard {j} (fence {fence})"
                ));
            }
        }
    }
    if grants < 40 {
        faults.push(format!(
            "only {grants} grants in 1.5 s: the test did not contend"
        ));
    }
    faults
}

/// A name `scope:report` whose whole text hashes to another shard than its scope.
fn name_whose_scope_routes_elsewhere(router: &mut Client) -> (String, usize) {
    for i in 0.. {
        let name = format!("lk-{i}:report");
        let k = shard_for(router, &name);
        let whole = int(
            router,
            &format!("SELECT pg_catalog.hashtext({}) & 3", lit(&name)),
        ) as usize;
        if whole != k {
            return (name, k);
        }
    }
    unreachable!()
}

/// A transaction-scoped `exactly.lock` taken directly on the name's shard is seen (its
/// holder's pid, granted) by `{api}.lock_status(name)` through the router from another
/// connection, and gone once that transaction commits.
fn lock_status_sees_the_shard(sh: &Shards, api: &'static str) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    let (name, k) = name_whose_scope_routes_elsewhere(&mut router);
    let mut holder = sh.shard(k);
    let pid = one(&mut holder, "SELECT pg_backend_pid()");
    must(
        &mut holder,
        &format!("BEGIN; SELECT exactly.lock({})", lit(&name)),
    );
    let sql = format!(
        "SELECT pid::text, granted::text FROM {api}.lock_status({})",
        lit(&name)
    );
    match raw(&mut router, &sql) {
        Ok(rows) => {
            if !rows
                .iter()
                .any(|r| r[0].as_deref() == Some(pid.as_str()) && r[1].as_deref() == Some("true"))
            {
                faults.push(format!(
                    "{name} is held on its shard {k} by pid {pid}, lock_status through the router says {rows:?}"
                ));
            }
        }
        Err(e) => faults.push(format!("{sql}: {}", describe(&e))),
    }
    must(&mut holder, "COMMIT");
    match raw(&mut router, &sql) {
        Ok(rows) => {
            if rows.iter().any(|r| r[1].as_deref() == Some("true")) {
                faults.push(format!(
                    "{name} was released, lock_status still says {rows:?}"
                ));
            }
        }
        Err(e) => faults.push(format!("{sql} after the commit: {}", describe(&e))),
    }
    faults
}

/// `lock`, `try_lock` and `check_fence` through the router: refused with 0A000, saying
/// where to call them; also inside a router transaction.
fn locks_are_refused(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    for sql in [
        "SELECT exactly.lock('t1:nightly')",
        "SELECT exactly.lock('t1:nightly', timeout => '1 second')",
        "SELECT exactly.try_lock('t1:nightly')",
        "SELECT exactly.check_fence('t1:nightly', 1)",
        "BEGIN; SELECT exactly.lock('t1:nightly')",
        "BEGIN; SELECT exactly.try_lock('t1:nightly')",
    ] {
        match raw(&mut router, sql) {
            Ok(rows) => faults.push(format!("{sql} succeeded ({rows:?}), expected 0A000")),
            Err(e) if state(&e) == "0A000" => {
                if !error_text(&e).to_lowercase().contains("shard") {
                    faults.push(format!(
                        "{sql}: 0A000 without saying where to call it: {}",
                        error_text(&e)
                    ));
                }
            }
            Err(e) => faults.push(format!("{sql}: expected 0A000, got {}", describe(&e))),
        }
        let _ = raw(&mut router, "ROLLBACK");
    }
    faults
}

/// Holds route back: a hold made through the router on each shard's tenant has id
/// `shard × 2^48 + n`; posting part of it and voiding another through the router works on
/// that shard, and the balances there are what the posts moved.
fn holds_route_back(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    for (t, k) in keys_on_every_shard(&mut router, "hold-", 1) {
        let (a, b) = (format!("{t}:a"), format!("{t}:b"));
        must(
            &mut router,
            &format!("SELECT * FROM exactly.append_payment({}, 100)", lit(&a)),
        );
        let hold: i64 = int(
            &mut router,
            &format!("SELECT id FROM exactly.hold({}, {}, 30)", lit(&a), lit(&b)),
        );
        if hold >> 48 != k as i64 {
            faults.push(format!(
                "hold {hold} of {a} (shard {k}): id >> 48 = {}",
                hold >> 48
            ));
        }
        let posted = raw(
            &mut router,
            &format!("SELECT amount::text FROM exactly.post_hold({hold}, 12)"),
        );
        if posted
            .as_ref()
            .map(|r| first(r))
            .ok()
            .flatten()
            .and_then(|v| v.parse::<f64>().ok())
            != Some(12.0)
        {
            faults.push(format!(
                "post_hold({hold}, 12) on shard {k}: {:?}",
                posted.map_err(|e| describe(&e))
            ));
        }
        let other: i64 = int(
            &mut router,
            &format!(
                "SELECT id FROM exactly.hold({}, {}, 5, timeout => '1 hour')",
                lit(&a),
                lit(&b)
            ),
        );
        match raw(
            &mut router,
            &format!("SELECT state FROM exactly.void_hold({other})"),
        ) {
            Ok(r) if first(&r).as_deref() == Some("voided") => {}
            r => faults.push(format!(
                "void_hold({other}) on shard {k}: {:?}",
                r.map_err(|e| describe(&e))
            )),
        }
        let state = one(
            &mut sh.shard(k),
            &format!(
                "SELECT (SELECT string_agg(state, ',' ORDER BY id) FROM exactly.holds WHERE id IN ({hold}, {other}))
                        || ' ' || (SELECT balance || '/' || pending_debits FROM exactly.accounts WHERE account = {})
                        || ' ' || (SELECT balance || '/' || pending_credits FROM exactly.accounts WHERE account = {})",
                lit(&a),
                lit(&b)
            ),
        );
        let want = "posted,voided 88/0 12/0";
        if state != want {
            faults.push(format!(
                "shard {k} after a post of 12 and a void: {state:?}, expected {want:?}"
            ));
        }
    }
    faults
}

/// "One call, one transaction": a number drawn through the router inside a router
/// transaction that rolls back stays handed out (the next one follows it), also behind a
/// savepoint; the shard's counter says so.
fn router_transactions(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    let t = "rt-tenant";
    let number = |c: &mut Client| -> i64 {
        one(
            c,
            &format!("SELECT exactly.next_invoice_number({})", lit(t)),
        )
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
    };
    let first_number = number(&mut router);
    must(&mut router, "BEGIN");
    let in_rolled_back = number(&mut router);
    must(&mut router, "ROLLBACK");
    must(&mut router, "BEGIN; SAVEPOINT s");
    let in_savepoint = number(&mut router);
    must(&mut router, "ROLLBACK TO SAVEPOINT s; COMMIT");
    let after = number(&mut router);
    let got = vec![first_number, in_rolled_back, in_savepoint, after];
    if got != vec![1, 2, 3, 4] {
        faults.push(format!("numbers drawn (plain, rolled back, savepoint rolled back, plain): {got:?}, expected [1, 2, 3, 4]"));
    }
    let k = shard_for(&mut router, t);
    let next = one(
        &mut sh.shard(k),
        &format!(
            "SELECT next_value FROM exactly.invoice_sequences WHERE tenant = {}",
            lit(t)
        ),
    );
    if next != "5" {
        faults.push(format!(
            "the tenant's counter on shard {k} is at {next}, expected 5"
        ));
    }
    faults
}

/// Errors of pg_exactly on a shard "reach the caller with their own SQLSTATE, detail and
/// hint" (docs/router.md; PL/Proxy may put `function(n): [database] REMOTE ERROR:` before
/// the message): each call that pg_exactly refuses, made directly on the key's shard (in a
/// transaction rolled back) and through the router, must fail alike.
fn errors_pass_through(sh: &Shards, schema: &str) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    let t = "pt-tenant";
    let k = shard_for(&mut router, t);
    // (SQL through the router, SQL on the shard, the shard)
    let mut calls: Vec<(String, String, usize)> = vec![(
        format!("SELECT * FROM {schema}.append_payment('{t}:a', 'NaN')"),
        format!("SELECT * FROM exactly.append_payment('{t}:a', 'NaN')"),
        k,
    )];
    if schema == "exactly" {
        let raffle = create_raffle(&mut router, 10).unwrap();
        let rk = (raffle >> 48) as usize;
        let item_shard = int(
            &mut router,
            "SELECT exactly.shard_for_row('items', '{\"nope\": 1}')",
        ) as usize;
        let items2 = int(
            &mut router,
            "SELECT exactly.shard_for_row('items', '{\"k\": \"x\"}')",
        ) as usize;
        for (sql, shard) in [
            (format!("SELECT exactly.define_invoice_sequence('{t}', 'P', 0)"), k),
            (format!("SELECT * FROM exactly.next_invoice_numbers('{t}', 0)"), k),
            (format!("SELECT exactly.set_next_invoice_number('{t}', -5)"), k),
            (format!("SELECT * FROM exactly.transfer('{t}:a', '{t}:a', 5)"), k),
            (format!("SELECT * FROM exactly.transfers('[{{\"from\": \"{t}:a\", \"to\": \"{t}:b\", \"amount\": -1}}]')"), k),
            (format!("SELECT exactly.balance_at('{t}:nobody', now())"), k),
            (format!("SELECT * FROM exactly.acquire_lease('{t}:l', '-1 second')"), k),
            (format!("SELECT exactly.acquire_slot('{t}:s', 0, '1 minute')"), k),
            (format!("SELECT exactly.batch_create_tickets({raffle}, 2000000)"), rk),
            ("SELECT * FROM exactly.find_or_create('items', '{\"nope\": 1}')".to_string(), item_shard),
            ("SELECT exactly.increment('items', '{\"k\": \"x\"}', 'k')".to_string(), items2),
        ] {
            calls.push((sql.clone(), sql, shard));
        }
    }
    let parts = |e: &postgres::Error| -> (String, String, String, String) {
        match e.as_db_error() {
            Some(db) => (
                db.code().code().to_string(),
                db.message().to_string(),
                db.detail().unwrap_or("").to_string(),
                db.hint().unwrap_or("").to_string(),
            ),
            None => ("none".into(), e.to_string(), String::new(), String::new()),
        }
    };
    for (through, direct, shard) in calls {
        let mut c = sh.shard(shard);
        must(&mut c, "BEGIN");
        let d = raw(&mut c, &direct);
        must(&mut c, "ROLLBACK");
        let r = raw(&mut router, &through);
        match (d, r) {
            (Err(d), Err(r)) => {
                let (d, r) = (parts(&d), parts(&r));
                // PL/Proxy may put `function(n): [database] REMOTE ERROR: ` before the
                // message; SQLSTATE, the message itself, detail and hint are pg_exactly's
                let message_kept = r.1 == d.1 || r.1.ends_with(&format!("] REMOTE ERROR: {}", d.1));
                if r.0 != d.0 || !message_kept || r.2 != d.2 || r.3 != d.3 {
                    faults.push(format!(
                        "{through}: pg_exactly on shard {shard} says {d:?}, the router {r:?} (SQLSTATE, message, detail, hint)"
                    ));
                }
            }
            (d, r) => faults.push(format!(
                "{through}: on shard {shard} {:?}, through the router {:?}",
                d.map_err(|e| describe(&e)),
                r.map_err(|e| describe(&e))
            )),
        }
    }
    faults
}

#[test]
fn seeds_through_the_router_keep_every_guarantee() {
    let sh = Shards::start();
    let mut faults = Vec::new();
    faults.extend(scenario("invoices", || invoices(&sh, "exactly")));
    faults.extend(scenario("raffles", || raffles(&sh, "exactly")));
    faults.extend(scenario("ledger", || ledger(&sh, "exactly")));
    faults.extend(scenario("cross-shard transfers", || {
        cross_shard_transfers_are_refused(&sh)
    }));
    faults.extend(scenario("holds", || holds_route_back(&sh)));
    faults.extend(scenario("router transactions", || router_transactions(&sh)));
    faults.extend(scenario("find_or_create/increment", || {
        upsert(&sh, "exactly")
    }));
    faults.extend(scenario("claims", || claims(&sh, "exactly")));
    faults.extend(scenario("leases", || leases(&sh, "exactly")));
    faults.extend(scenario("lock/try_lock/check_fence", || {
        locks_are_refused(&sh)
    }));
    faults.extend(scenario("lock_status", || {
        lock_status_sees_the_shard(&sh, "exactly")
    }));
    faults.extend(
        sh.router_problems()
            .into_iter()
            .map(|p| format!("at the end, router_shards(): {p}")),
    );
    assert_no_faults(&faults);
}

#[test]
fn twins_of_the_seeds_naive_routing_is_caught() {
    let sh = Shards::start();
    must(&mut sh.router(), NAIVE_SQL);
    let uncaught: Vec<String> = [
        twin("invoices on any shard", || invoices(&sh, "naive")),
        twin("tickets routed by the batch key", || raffles(&sh, "naive")),
        twin("ledger on any shard", || ledger(&sh, "naive")),
        twin("a cross-shard transfer as two routed appends", || {
            cross_shard_transfer_as_two_appends(&sh)
        }),
        twin("find_or_create/increment by the key's JSON text", || {
            upsert(&sh, "naive")
        }),
        twin("complete_batch by the claim's text", || {
            claims(&sh, "naive")
        }),
        twin("leases on any shard", || leases(&sh, "naive")),
        twin("lock_status by the whole name", || {
            lock_status_sees_the_shard(&sh, "naive")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_no_faults(&uncaught);
}

// ---------------------------------------------------------------------------------------
// a shard stopped in the middle of a load
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Invoice,
    Pay,
    Find,
    Claim,
    Complete,
}

/// One call of the load: what, for which shard's key (None: `claim_batch`, every shard),
/// when (µs since the load's start), its outcome (SQLSTATE and text on error), and for a
/// claim the shards its claims came from.
struct Call {
    op: Op,
    shard: Option<usize>,
    start: u64,
    end: u64,
    result: Result<(), (String, String)>,
    claims_from: Vec<usize>,
}

/// What one connection of the load did and was told.
#[derive(Default)]
struct Load {
    calls: Vec<Call>,
    /// (tenant, number told)
    invoices: Vec<(String, i64)>,
    /// (idempotency key, account, amount, entry id told)
    payments: Vec<(String, String, i64, i64)>,
    /// payments never told committed, even after the retries at the end
    unpaid: Vec<(String, String, i64)>,
    /// (key, row id told, created)
    finds: Vec<(String, i64, bool)>,
}

/// One fault run: which functions (`exactly`, or the `plain` twin), a tag naming its
/// tenants and tables, the shard stopped and how.
struct FaultRun {
    api: &'static str,
    tag: &'static str,
    victim: usize,
    stop: fn(&common::Cluster),
}

struct FaultSetup {
    tenants: Vec<(String, usize)>,
    items: Vec<(String, usize)>,
}

const JOB_ROWS: usize = 2000;
const PRE_MS: u64 = 900;
const DOWN_MS: u64 = 1200;
const POST_MS: u64 = 800;

fn fault_setup(sh: &Shards, tag: &str) -> FaultSetup {
    let mut router = sh.router();
    let tenants = keys_on_every_shard(&mut router, &format!("{tag}-t"), 2);
    sh.on_every_shard(&format!(
        "CREATE TABLE {tag}_items (k text PRIMARY KEY, id bigserial UNIQUE, made_at timestamptz DEFAULT now())"
    ));
    jobs_tables(sh, &format!("{tag}_jobs"), JOB_ROWS);
    let items = (0..48)
        .map(|i| {
            let key = format!("{tag}-item-{i}");
            let k = int(
                &mut router,
                &format!(
                    "SELECT exactly.shard_for_row('{tag}_items', jsonb_build_object('k', {}))",
                    lit(&key)
                ),
            ) as usize;
            assert!(k < SHARDS);
            (key, k)
        })
        .collect();
    FaultSetup { tenants, items }
}

/// Run `sql`, timing it; an error as (SQLSTATE, text). A connection lost to the router is
/// made again (and the call reported without a SQLSTATE).
fn timed(
    c: &mut Client,
    config: &postgres::Config,
    t0: Instant,
    sql: &str,
) -> (u64, u64, Result<Rows, (String, String)>) {
    let start = us(t0);
    let r = raw(c, sql).map_err(|e| (state(&e), error_text(&e)));
    let end = us(t0);
    if c.is_closed() {
        if let Ok(fresh) = config.connect(NoTls) {
            *c = fresh;
        }
    }
    (start, end, r)
}

/// One connection of the load, until `done`: connections 0..12 draw invoice numbers, make
/// payments with idempotency keys (a failed one is retried later with its key) and find or
/// create items; 12..16 claim jobs (batches of 5, 1 s leases) and complete them. At the
/// end, every payment not yet told committed is retried with its key until it is.
fn load_worker(
    i: usize,
    config: postgres::Config,
    run: &FaultRun,
    setup: &FaultSetup,
    t0: Instant,
    start: &Barrier,
    done: &AtomicBool,
) -> Load {
    let api = run.api;
    let tag = run.tag;
    let mut c = config.connect(NoTls).expect("connect to the router");
    let mut rng = XorShift(0xfa17 + 977 * i as u64 + tag.len() as u64);
    let mut load = Load::default();
    let mut pending: Vec<(String, String, i64)> = Vec::new();
    let mut n = 0;
    let shard_of_tenant: HashMap<&str, usize> = setup
        .tenants
        .iter()
        .map(|(t, k)| (t.as_str(), *k))
        .collect();
    start.wait();
    while !done.load(Ordering::SeqCst) {
        n += 1;
        if i >= 12 {
            let sql = format!(
                "SELECT claim::text, data->>'shard', data->>'id' FROM {api}.claim_batch('{tag}_jobs', 'done_at', 5, '1 second')"
            );
            let (s, e, r) = timed(&mut c, &config, t0, &sql);
            let mut by_claim: BTreeMap<String, usize> = BTreeMap::new();
            if let Ok(rows) = &r {
                for row in rows {
                    let shard: usize = row[1].as_deref().unwrap_or("9").parse().unwrap_or(9);
                    by_claim.insert(row[0].clone().unwrap_or_default(), shard);
                }
            }
            load.calls.push(Call {
                op: Op::Claim,
                shard: None,
                start: s,
                end: e,
                result: r.map(|_| ()),
                claims_from: by_claim.values().copied().collect(),
            });
            for (claim, shard) in by_claim {
                let sql = format!("SELECT {api}.complete_batch({})", lit(&claim));
                let (s, e, r) = timed(&mut c, &config, t0, &sql);
                load.calls.push(Call {
                    op: Op::Complete,
                    shard: Some(shard),
                    start: s,
                    end: e,
                    result: r.map(|_| ()),
                    claims_from: vec![],
                });
            }
            sleep_ms(25);
            continue;
        }
        let roll = rng.next() % 100;
        if roll < 40 {
            let (t, k) = pick(&mut rng, &setup.tenants).clone();
            let sql = format!("SELECT {api}.next_invoice_number({})", lit(&t));
            let (s, e, r) = timed(&mut c, &config, t0, &sql);
            let result = match r {
                Ok(rows) => match first(&rows).and_then(|v| {
                    v.strip_prefix(&format!("{t}-"))
                        .and_then(|x| x.parse::<i64>().ok())
                }) {
                    Some(number) => {
                        load.invoices.push((t.clone(), number));
                        Ok(())
                    }
                    None => Err(("bad result".to_string(), format!("{rows:?}"))),
                },
                Err(e) => Err(e),
            };
            load.calls.push(Call {
                op: Op::Invoice,
                shard: Some(k),
                start: s,
                end: e,
                result,
                claims_from: vec![],
            });
        } else if roll < 75 {
            let payment = if !pending.is_empty() && rng.next() % 2 == 0 {
                pending.remove(0)
            } else {
                let (t, _) = pick(&mut rng, &setup.tenants);
                (
                    format!("{tag}-pay-{i}-{n}"),
                    format!("{t}:cash"),
                    1 + (rng.next() % 100) as i64,
                )
            };
            let (key, account, amount) = payment.clone();
            let k = shard_of_tenant[account.split(':').next().unwrap()];
            let sql = format!(
                "SELECT id::text FROM {api}.append_payment({}, {amount}, {})",
                lit(&account),
                lit(&key)
            );
            let (s, e, r) = timed(&mut c, &config, t0, &sql);
            let result = match r {
                Ok(rows) => match first(&rows).and_then(|v| v.parse::<i64>().ok()) {
                    Some(id) => {
                        load.payments.push((key, account, amount, id));
                        Ok(())
                    }
                    None => Err(("bad result".to_string(), format!("{rows:?}"))),
                },
                Err(e) => {
                    pending.push(payment);
                    Err(e)
                }
            };
            load.calls.push(Call {
                op: Op::Pay,
                shard: Some(k),
                start: s,
                end: e,
                result,
                claims_from: vec![],
            });
        } else {
            let (key, k) = pick(&mut rng, &setup.items).clone();
            let sql = format!(
                "SELECT data->>'id', created::text FROM {api}.find_or_create('{tag}_items', jsonb_build_object('k', {}))",
                lit(&key)
            );
            let (s, e, r) = timed(&mut c, &config, t0, &sql);
            let result = match r {
                Ok(rows) => match rows.first().and_then(|r| {
                    r[0].as_deref()
                        .and_then(|v| v.parse::<i64>().ok())
                        .map(|id| (id, r[1].as_deref() == Some("true")))
                }) {
                    Some((id, created)) => {
                        load.finds.push((key, id, created));
                        Ok(())
                    }
                    None => Err(("bad result".to_string(), format!("{rows:?}"))),
                },
                Err(e) => Err(e),
            };
            load.calls.push(Call {
                op: Op::Find,
                shard: Some(k),
                start: s,
                end: e,
                result,
                claims_from: vec![],
            });
        }
    }
    // every shard is up again: what was not told committed is retried with its key
    for (key, account, amount) in pending {
        let sql = format!(
            "SELECT id::text FROM {api}.append_payment({}, {amount}, {})",
            lit(&account),
            lit(&key)
        );
        let mut told = None;
        for _ in 0..40 {
            let (_, _, r) = timed(&mut c, &config, t0, &sql);
            if let Ok(rows) = r {
                told = first(&rows).and_then(|v| v.parse::<i64>().ok());
                break;
            }
            sleep_ms(100);
        }
        match told {
            Some(id) => load.payments.push((key, account, amount, id)),
            None => load.unpaid.push((key, account, amount)),
        }
    }
    load
}

/// When the victim was stopped and started again, µs since the load's start.
#[derive(Debug, Default)]
struct Timeline {
    stop_begin: u64,
    stop_done: u64,
    restart_begin: u64,
    restart_done: u64,
}

/// The load with the victim stopped after PRE_MS, started again DOWN_MS later, and POST_MS
/// more load; returns every connection's log, the timeline and the WARNINGs seen (µs, text).
fn load_with_a_shard_stopped(
    sh: &Shards,
    run: &FaultRun,
    setup: &FaultSetup,
) -> (Vec<Load>, Timeline, Vec<(u64, String)>) {
    let warnings: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut config = sh.router_config();
    {
        let warnings = warnings.clone();
        config.notice_callback(move |notice| {
            if notice.severity() == "WARNING" {
                warnings.lock().unwrap().push((
                    us(t0),
                    format!("{} {}", notice.message(), notice.detail().unwrap_or("")),
                ));
            }
        });
    }
    let done = AtomicBool::new(false);
    let start = Barrier::new(17);
    let mut timeline = Timeline::default();
    let loads = std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let (config, done, start) = (config.clone(), &done, &start);
                s.spawn(move || load_worker(i, config, run, setup, t0, start, done))
            })
            .collect();
        start.wait();
        sleep_ms(PRE_MS);
        timeline.stop_begin = us(t0);
        (run.stop)(&sh.shards[run.victim]);
        timeline.stop_done = us(t0);
        sleep_ms(DOWN_MS);
        timeline.restart_begin = us(t0);
        sh.shards[run.victim].start_server();
        timeline.restart_done = us(t0);
        sleep_ms(POST_MS);
        done.store(true, Ordering::SeqCst);
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<Load>>()
    });
    let warnings = warnings.lock().unwrap().clone();
    (loads, timeline, warnings)
}

/// Claim and complete every row left (the dead claims' rows come back after their 1 s
/// lease), through `{api}`; gives up after 15 s.
fn drain_jobs(sh: &Shards, run: &FaultRun) {
    let mut router = sh.router();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (api, tag) = (run.api, run.tag);
    while Instant::now() < deadline {
        let left: i64 = (0..SHARDS)
            .map(|k| {
                int(
                    &mut sh.shard(k),
                    &format!("SELECT count(*) FROM {tag}_jobs WHERE done_at IS NULL"),
                )
            })
            .sum();
        if left == 0 {
            return;
        }
        let claims: BTreeSet<String> = raw(
            &mut router,
            &format!("SELECT claim::text FROM {api}.claim_batch('{tag}_jobs', 'done_at', 1000, '1 second')"),
        )
        .map(|rows| rows.into_iter().filter_map(|r| r[0].clone()).collect())
        .unwrap_or_default();
        if claims.is_empty() {
            sleep_ms(200);
        }
        for claim in claims {
            let _ = raw(
                &mut router,
                &format!("SELECT {api}.complete_batch({})", lit(&claim)),
            );
        }
    }
}

/// Everything the fault run must show; each fault tagged `[down]` (the calls while the
/// victim was down and around it) or `[acked]` (what clients were told against what the
/// shards hold, and the invariants).
fn fault_checks(
    sh: &Shards,
    run: &FaultRun,
    setup: &FaultSetup,
    loads: &[Load],
    tl: &Timeline,
    warnings: &[(u64, String)],
) -> Faults {
    let v = run.victim;
    let mut faults = Vec::new();
    let calls: Vec<&Call> = loads.iter().flat_map(|l| l.calls.iter()).collect();
    // outcome counts, printed for the record: (window, op, shard is victim, outcome) -> n
    let mut summary: BTreeMap<(&str, Op, bool, String), usize> = BTreeMap::new();
    let mut xx000 = Vec::new();
    let mut down_victim_wrong: Vec<String> = Vec::new();
    let mut down_victim_ok = 0;
    let mut down_victim_calls = 0;
    let mut down_other_ok = [0usize; SHARDS];
    let mut down_other_errors = Vec::new();
    let mut calm_errors = Vec::new();
    let mut transition_errors = Vec::new();
    let mut down_claims_ok = 0;
    let mut down_claim_errors = Vec::new();
    for call in &calls {
        let down = call.start >= tl.stop_done && call.end <= tl.restart_begin;
        let calm = call.end < tl.stop_begin || call.start > tl.restart_done;
        let window = if down {
            "down"
        } else if calm {
            "up"
        } else {
            "stopping/starting"
        };
        let outcome = match &call.result {
            Ok(()) => "ok".to_string(),
            Err((s, _)) => s.clone(),
        };
        *summary
            .entry((window, call.op, call.shard == Some(v), outcome))
            .or_default() += 1;
        if let Err((s, text)) = &call.result {
            if s == "XX000" {
                xx000.push(format!("{:?} for shard {:?}: {text}", call.op, call.shard));
            }
        }
        let describe_call = |call: &Call| match &call.result {
            Ok(()) => format!("{:?} for shard {:?}: ok", call.op, call.shard),
            Err((s, text)) => format!("{:?} for shard {:?}: {s} {text}", call.op, call.shard),
        };
        match (call.op, call.shard) {
            (Op::Claim, _) => {
                if down {
                    match &call.result {
                        Ok(()) if call.claims_from.contains(&v) => down_claim_errors.push(format!(
                            "a claim from the stopped shard {v}: {:?}",
                            call.claims_from
                        )),
                        Ok(()) if !call.claims_from.is_empty() => down_claims_ok += 1,
                        Ok(()) => {}
                        Err(_) => down_claim_errors.push(describe_call(call)),
                    }
                } else if calm && call.result.is_err() {
                    calm_errors.push(describe_call(call));
                } else if call.result.is_err() {
                    // "claim_batch skips an unreachable shard": also one going away under it
                    transition_errors.push(describe_call(call));
                }
            }
            (_, Some(k)) if k == v => {
                if down {
                    down_victim_calls += 1;
                    match &call.result {
                        Ok(()) => down_victim_ok += 1,
                        Err((s, text)) if s == "08006" && names_shard(text, v) => {}
                        Err(_) => down_victim_wrong.push(describe_call(call)),
                    }
                } else if calm && call.result.is_err() {
                    calm_errors.push(describe_call(call));
                } else if let Err((s, text)) = &call.result {
                    // stopping or starting: a call may work, or fail as unreachable
                    if !(s == "08006" && names_shard(text, v)) {
                        transition_errors.push(describe_call(call));
                    }
                }
            }
            (_, Some(k)) => match &call.result {
                Ok(()) if down => down_other_ok[k] += 1,
                Ok(()) => {}
                Err(_) if down => down_other_errors.push(describe_call(call)),
                Err(_) => calm_errors.push(describe_call(call)),
            },
            (_, None) => unreachable!(),
        }
    }
    eprintln!(
        "  {} timeline (ms): stop {:.0}..{:.0}, restart {:.0}..{:.0}",
        run.tag,
        tl.stop_begin as f64 / 1e3,
        tl.stop_done as f64 / 1e3,
        tl.restart_begin as f64 / 1e3,
        tl.restart_done as f64 / 1e3
    );
    for ((window, op, victim, outcome), n) in &summary {
        eprintln!(
            "  {window:>17} {op:?}{} {outcome}: {n}",
            if *victim { " (stopped shard)" } else { "" }
        );
    }
    let show = |list: &[String]| list.iter().take(3).cloned().collect::<Vec<_>>().join(" | ");
    if !xx000.is_empty() {
        faults.push(format!(
            "[down] {} calls failed with XX000, e.g. {}",
            xx000.len(),
            show(&xx000)
        ));
    }
    if down_victim_calls == 0 {
        faults.push(format!(
            "[down] no call for shard {v}'s keys ran while it was down: the test did not test"
        ));
    }
    if down_victim_ok > 0 {
        faults.push(format!(
            "[down] {down_victim_ok} calls for shard {v}'s keys succeeded while it was down"
        ));
    }
    if !down_victim_wrong.is_empty() {
        faults.push(format!(
            "[down] {} of {down_victim_calls} calls for the stopped shard {v}'s keys did not fail with 08006 naming the shard, e.g. {}",
            down_victim_wrong.len(),
            show(&down_victim_wrong)
        ));
    }
    for k in (0..SHARDS).filter(|k| *k != v) {
        if down_other_ok[k] == 0 {
            faults.push(format!(
                "[down] no call for shard {k}'s keys succeeded while shard {v} was down"
            ));
        }
    }
    eprintln!(
        "  calls that succeeded for the other shards while shard {v} was down: {down_other_ok:?}"
    );
    if !down_other_errors.is_empty() {
        faults.push(format!(
            "[down] {} calls for the other shards' keys failed while shard {v} was down, e.g. {}",
            down_other_errors.len(),
            show(&down_other_errors)
        ));
    }
    if down_claims_ok == 0 {
        faults.push(format!(
            "[down] no claim_batch got claims from the other shards while shard {v} was down"
        ));
    }
    if !down_claim_errors.is_empty() {
        faults.push(format!(
            "[down] {} claim_batch calls went wrong while shard {v} was down, e.g. {}",
            down_claim_errors.len(),
            show(&down_claim_errors)
        ));
    }
    let down_warnings: Vec<&(u64, String)> = warnings
        .iter()
        .filter(|(t, _)| *t >= tl.stop_done && *t <= tl.restart_begin + 200_000)
        .collect();
    if !down_warnings.iter().any(|(_, text)| names_shard(text, v)) {
        faults.push(format!(
            "[down] no WARNING naming shard {v} while it was down ({} warnings then, e.g. {:?})",
            down_warnings.len(),
            down_warnings.first()
        ));
    }
    if !transition_errors.is_empty() {
        faults.push(format!(
            "[down] {} calls failed otherwise than with 08006 naming shard {v} while it stopped or started, e.g. {}",
            transition_errors.len(),
            show(&transition_errors)
        ));
    }
    if !calm_errors.is_empty() {
        faults.push(format!(
            "[down] {} calls failed while every shard was up (before the stop or after the restart), e.g. {}",
            calm_errors.len(),
            show(&calm_errors)
        ));
    }

    // invoices: told numbers distinct, within 1..N of the tenant's shard; exactly 1..N on
    // the shards that never stopped
    let mut told: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (t, n) in loads.iter().flat_map(|l| l.invoices.iter()) {
        told.entry(t.as_str()).or_default().push(*n);
    }
    for (t, k) in &setup.tenants {
        let numbers = told.get(t.as_str()).cloned().unwrap_or_default();
        let next = int(
            &mut sh.shard(*k),
            &format!("SELECT coalesce((SELECT next_value FROM exactly.invoice_sequences WHERE tenant = {}), 1)", lit(t)),
        );
        let distinct: BTreeSet<i64> = numbers.iter().copied().collect();
        if distinct.len() != numbers.len() {
            faults.push(format!(
                "[acked] tenant {t} (shard {k}): {} numbers told, only {} distinct",
                numbers.len(),
                distinct.len()
            ));
        }
        if let Some(out) = distinct.iter().find(|n| **n < 1 || **n >= next) {
            faults.push(format!("[acked] tenant {t} (shard {k}) was told {out}, its counter is at next_value {next}"));
        }
        if *k != v {
            if let Some(what) = not_one_to_n(&numbers) {
                faults.push(format!("[acked] tenant {t} (shard {k}, never stopped): told numbers are not 1..N: {what}"));
            } else if numbers.len() as i64 != next - 1 {
                faults.push(format!(
                    "[acked] tenant {t} (shard {k}): 1..{} told, next_value {next}",
                    numbers.len()
                ));
            }
        }
    }

    // payments: every one told, once, where it was told; balances = the sums
    let shard_of_tenant: HashMap<&str, usize> = setup
        .tenants
        .iter()
        .map(|(t, k)| (t.as_str(), *k))
        .collect();
    let unpaid: Vec<&(String, String, i64)> = loads.iter().flat_map(|l| l.unpaid.iter()).collect();
    if !unpaid.is_empty() {
        faults.push(format!(
            "[acked] {} payments never went through after the restart, e.g. {:?}",
            unpaid.len(),
            unpaid[0]
        ));
    }
    let mut stored: HashMap<String, Vec<(usize, i64, String, String)>> = HashMap::new();
    for k in 0..SHARDS {
        for r in must(
            &mut sh.shard(k),
            &format!(
                "SELECT idempotency_key, id::text, account, amount::text FROM exactly.payments WHERE idempotency_key LIKE '{}-pay-%'",
                run.tag
            ),
        ) {
            let f = |i: usize| r[i].clone().unwrap_or_default();
            stored.entry(f(0)).or_default().push((k, f(1).parse().unwrap(), f(2), f(3)));
        }
    }
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (key, account, amount, id) in loads.iter().flat_map(|l| l.payments.iter()) {
        *expected.entry(account.as_str()).or_default() += amount;
        let k = shard_of_tenant[account.split(':').next().unwrap()];
        let want = vec![(k, *id, account.clone(), amount.to_string())];
        if stored.get(key) != Some(&want) {
            wrong.push(format!(
                "{key}: told entry {id} ({account} {amount}) on shard {k}, stored {:?}",
                stored.get(key)
            ));
        }
    }
    if !wrong.is_empty() {
        faults.push(format!(
            "[acked] {} of {} told payments are not stored once as told, e.g. {}",
            wrong.len(),
            loads.iter().map(|l| l.payments.len()).sum::<usize>(),
            show(&wrong)
        ));
    }
    for (account, want) in &expected {
        let k = shard_of_tenant[account.split(':').next().unwrap()];
        let got = one(
            &mut sh.shard(k),
            &format!("SELECT coalesce((SELECT balance::text FROM exactly.accounts WHERE account = {}), 'none')", lit(account)),
        );
        if got.parse::<f64>().ok() != Some(*want as f64) {
            faults.push(format!(
                "[acked] {account}: balance {got} on shard {k}, its told payments sum to {want}"
            ));
        }
    }
    match raw(
        &mut sh.router(),
        &format!(
            "SELECT account, ok::text, coalesce(detail, '') FROM {}.verify_ledger() WHERE NOT ok",
            run.api
        ),
    ) {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) => faults.push(format!(
            "[acked] verify_ledger() through the router: {rows:?}"
        )),
        Err(e) => faults.push(format!(
            "[acked] verify_ledger() through the router after the restart: {}",
            describe(&e)
        )),
    }
    for k in 0..SHARDS {
        let mut c = sh.shard(k);
        faults.extend(
            verify_ledger_faults(&mut c)
                .into_iter()
                .chain(entry_faults(&mut c))
                .map(|f| format!("[acked] on shard {k}: {f}")),
        );
    }

    // items: one row per key over all shards, on its shard, with the id told
    let mut rows: HashMap<String, Vec<(usize, i64)>> = HashMap::new();
    for k in 0..SHARDS {
        for r in must(
            &mut sh.shard(k),
            &format!("SELECT k, id::text FROM {}_items", run.tag),
        ) {
            rows.entry(r[0].clone().unwrap_or_default())
                .or_default()
                .push((k, r[1].as_deref().unwrap_or("0").parse().unwrap()));
        }
    }
    let mut told_items: HashMap<&str, (BTreeSet<i64>, usize)> = HashMap::new();
    for (key, id, created) in loads.iter().flat_map(|l| l.finds.iter()) {
        let e = told_items.entry(key.as_str()).or_default();
        e.0.insert(*id);
        e.1 += *created as usize;
    }
    for (key, k) in &setup.items {
        let Some((ids, created)) = told_items.get(key.as_str()) else {
            continue;
        };
        let stored = rows.get(key).cloned().unwrap_or_default();
        if stored.len() != 1
            || stored[0].0 != *k
            || ids.len() != 1
            || !ids.contains(&stored[0].1)
            || *created > 1
        {
            faults.push(format!(
                "[acked] item {key} (shard {k}): stored {stored:?} (shard, id), callers told ids {ids:?}, {created} told created"
            ));
        }
    }
    faults.extend(
        jobs_faults(sh, &format!("{}_jobs", run.tag), JOB_ROWS)
            .into_iter()
            .map(|f| format!("[acked] {f}")),
    );
    faults.extend(
        sh.router_problems()
            .into_iter()
            .map(|p| format!("[acked] router_shards() after the restart: {p}")),
    );
    faults
}

fn fault_run(sh: &Shards, run: &FaultRun) -> Faults {
    let setup = fault_setup(sh, run.tag);
    let (loads, timeline, warnings) = load_with_a_shard_stopped(sh, run, &setup);
    drain_jobs(sh, run);
    fault_checks(sh, run, &setup, &loads, &timeline, &warnings)
}

#[test]
fn an_immediately_stopped_shard_fails_only_its_keys_and_loses_nothing() {
    let sh = Shards::start();
    let run = FaultRun {
        api: "exactly",
        tag: "imm",
        victim: 2,
        stop: |c| c.stop_immediate(),
    };
    let faults = scenario("immediate stop of shard 2", || fault_run(&sh, &run));
    assert_no_faults(&faults);
}

#[test]
fn a_cleanly_stopped_shard_fails_only_its_keys_and_loses_nothing() {
    let sh = Shards::start();
    let run = FaultRun {
        api: "exactly",
        tag: "fast",
        victim: 1,
        stop: |c| c.stop_fast(),
    };
    let faults = scenario("fast stop of shard 1", || fault_run(&sh, &run));
    assert_no_faults(&faults);
}

#[test]
fn twins_of_the_fault_checks_are_caught() {
    let sh = Shards::start();
    must(&mut sh.router(), PLAIN_SQL);
    let plain = FaultRun {
        api: "plain",
        tag: "plain",
        victim: 3,
        stop: |c| c.stop_immediate(),
    };
    let only = |prefix: &'static str, faults: Faults| -> Faults {
        faults.into_iter().filter(|f| f.contains(prefix)).collect()
    };
    let mut uncaught = Vec::new();
    uncaught.extend(twin("plain PL/Proxy while a shard is down", || {
        only("[down]", fault_run(&sh, &plain))
    }));
    // shard 0 acknowledges commits before writing them (and writes them every 10 s)
    let mut shard0 = sh.shard(0);
    for sql in [
        "ALTER SYSTEM SET synchronous_commit = off",
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "ALTER SYSTEM SET wal_writer_flush_after = 0",
        "SELECT pg_reload_conf()",
    ] {
        must(&mut shard0, sql);
    }
    // only the commits of the last unwritten WAL page are lost: a few per stop, and a stop
    // may lose none that a client was told of, so up to three rounds
    uncaught.extend(twin(
        "a shard with synchronous_commit = off stopped",
        || {
            let mut caught = Vec::new();
            for tag in ["async0", "async1", "async2"] {
                let run = FaultRun {
                    api: "exactly",
                    tag,
                    victim: 0,
                    stop: |c| c.stop_immediate(),
                };
                caught = only("[acked]", fault_run(&sh, &run));
                if !caught.is_empty() {
                    break;
                }
            }
            caught
        },
    ));
    assert_no_faults(&uncaught.into_iter().collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// hostile and careless callers
// ---------------------------------------------------------------------------------------

/// `func(key)` for many keys from 16 connections at once (one statement over all keys,
/// and one call per key for a tenth of them): every connection and call must agree, every
/// answer be a shard number 0..3, and each shard get at least a tenth of the keys. For the
/// router's own `shard_for`, also the documented rule: `scope:rest` goes where `scope`
/// goes, and that is `hashtext(scope) & 3`.
fn shard_for_faults(sh: &Shards, func: &'static str) -> Faults {
    let mut keys: Vec<String> = Vec::new();
    for i in 0..300 {
        keys.push(format!("{i}"));
        keys.push(format!("tenant-{i}"));
        keys.push(format!("ü{i}🦀"));
        keys.push(format!("t{i}:cash"));
    }
    let keys = Arc::new(keys);
    let array = format!(
        "ARRAY[{}]::text[]",
        keys.iter().map(|k| lit(k)).collect::<Vec<_>>().join(", ")
    );
    let answers = at_once_through(sh.router_config(), 16, {
        let keys = keys.clone();
        move |i, c| {
            let mut got: Vec<Result<Option<String>, String>> = match raw(
                c,
                &format!("SELECT {func}(k)::text FROM unnest({array}) WITH ORDINALITY AS u(k, n) ORDER BY n"),
            ) {
                Ok(rows) => rows.into_iter().map(|r| Ok(r[0].clone())).collect(),
                Err(e) => return Err(describe(&e)),
            };
            // one call per key for a tenth of them (each connection its own tenth)
            for (j, key) in keys.iter().enumerate().filter(|(j, _)| j % 16 == i) {
                let single = raw(c, &format!("SELECT {func}({})::text", lit(key)))
                    .map(|rows| first(&rows))
                    .map_err(|e| describe(&e));
                if single != got[j] {
                    got[j] = Err(format!(
                        "one statement said {:?}, a single call {single:?}",
                        got[j]
                    ));
                }
            }
            Ok(got)
        }
    });
    let mut faults = Vec::new();
    let mut reference: Option<Vec<Result<Option<String>, String>>> = None;
    for (i, a) in answers.into_iter().enumerate() {
        match a {
            Err(e) => faults.push(format!("connection {i}: {e}")),
            Ok(got) => match &reference {
                None => reference = Some(got),
                Some(r) => {
                    let differ: Vec<String> = (0..keys.len())
                        .filter(|j| r[*j] != got[*j])
                        .take(3)
                        .map(|j| format!("{}: {:?} vs {:?}", keys[j], r[j], got[j]))
                        .collect();
                    if !differ.is_empty() {
                        faults.push(format!(
                            "connection {i} disagrees with connection 0: {differ:?}"
                        ));
                    }
                }
            },
        }
    }
    let Some(reference) = reference else {
        return faults;
    };
    let mut per_shard = [0usize; SHARDS];
    let mut bad = Vec::new();
    for (j, r) in reference.iter().enumerate() {
        match r
            .as_ref()
            .ok()
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(k) if (0..SHARDS as i64).contains(&k) => per_shard[k as usize] += 1,
            _ => bad.push(format!("{}: {r:?}", keys[j])),
        }
    }
    if !bad.is_empty() {
        faults.push(format!(
            "{} keys got no shard number in 0..3, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        ));
    }
    if per_shard.iter().any(|n| *n < keys.len() / 10) {
        faults.push(format!(
            "keys per shard {per_shard:?}: not every shard gets keys"
        ));
    }
    if func == "exactly.shard_for" {
        let mut c = sh.router();
        let rows = must(
            &mut c,
            "SELECT s, exactly.shard_for(s), exactly.shard_for(s || ':cash'), exactly.shard_for(s || ':a:b'),
                    pg_catalog.hashtext(s) & 3
             FROM (SELECT 't' || g AS s FROM generate_series(0, 199) g) x
             WHERE exactly.shard_for(s) IS DISTINCT FROM exactly.shard_for(s || ':cash')
                OR exactly.shard_for(s) IS DISTINCT FROM exactly.shard_for(s || ':a:b')
                OR exactly.shard_for(s) IS DISTINCT FROM pg_catalog.hashtext(s) & 3
             LIMIT 3",
        );
        if !rows.is_empty() {
            faults.push(format!(
                "shard_for does not follow the scope rule (key, shard_for(s), (s:cash), (s:a:b), hashtext(s) & 3): {rows:?}"
            ));
        }
    }
    faults
}

/// Hostile objects, planted in `public` on the router by role `hostile`: functions,
/// operators, domains and views named like pg_catalog's that a router's SQL might resolve
/// through the search_path; each records that it ran and tries to make `hostile` a
/// superuser.
const SHADOW_FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("hashtext", "text", "integer", "pg_catalog.hashtext($1)"),
    (
        "hashtextextended",
        "text, bigint",
        "bigint",
        "pg_catalog.hashtextextended($1, $2)",
    ),
    ("hashint8", "bigint", "integer", "pg_catalog.hashint8($1)"),
    (
        "split_part",
        "text, text, integer",
        "text",
        "pg_catalog.split_part($1, $2, $3)",
    ),
    (
        "strpos",
        "text, text",
        "integer",
        "pg_catalog.strpos($1, $2)",
    ),
    (
        "substr",
        "text, integer, integer",
        "text",
        "pg_catalog.substr($1, $2, $3)",
    ),
    (
        "substr",
        "text, integer",
        "text",
        "pg_catalog.substr($1, $2)",
    ),
    ("left", "text, integer", "text", "pg_catalog.left($1, $2)"),
    ("right", "text, integer", "text", "pg_catalog.right($1, $2)"),
    ("length", "text", "integer", "pg_catalog.length($1)"),
    (
        "octet_length",
        "text",
        "integer",
        "pg_catalog.octet_length($1)",
    ),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("upper", "text", "text", "pg_catalog.upper($1)"),
    ("btrim", "text", "text", "pg_catalog.btrim($1)"),
    (
        "replace",
        "text, text, text",
        "text",
        "pg_catalog.replace($1, $2, $3)",
    ),
    (
        "regexp_replace",
        "text, text, text",
        "text",
        "pg_catalog.regexp_replace($1, $2, $3)",
    ),
    ("quote_ident", "text", "text", "pg_catalog.quote_ident($1)"),
    (
        "quote_literal",
        "text",
        "text",
        "pg_catalog.quote_literal($1)",
    ),
    ("abs", "integer", "integer", "pg_catalog.abs($1)"),
    (
        "mod",
        "integer, integer",
        "integer",
        "pg_catalog.mod($1, $2)",
    ),
    ("int4", "bigint", "integer", "pg_catalog.int4($1)"),
    ("int8", "integer", "bigint", "pg_catalog.int8($1)"),
    ("to_jsonb", "text", "jsonb", "pg_catalog.to_jsonb($1)"),
    (
        "jsonb_typeof",
        "jsonb",
        "text",
        "pg_catalog.jsonb_typeof($1)",
    ),
    (
        "jsonb_strip_nulls",
        "jsonb",
        "jsonb",
        "pg_catalog.jsonb_strip_nulls($1)",
    ),
    (
        "jsonb_object_keys",
        "jsonb",
        "SETOF text",
        "pg_catalog.jsonb_object_keys($1)",
    ),
    (
        "jsonb_array_elements",
        "jsonb",
        "SETOF jsonb",
        "pg_catalog.jsonb_array_elements($1)",
    ),
    (
        "jsonb_array_length",
        "jsonb",
        "integer",
        "pg_catalog.jsonb_array_length($1)",
    ),
    (
        "jsonb_extract_path_text",
        "jsonb, text[]",
        "text",
        "pg_catalog.jsonb_extract_path_text($1, VARIADIC $2)",
    ),
    (
        "jsonb_build_object",
        "text, text",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    ("now", "", "timestamptz", "pg_catalog.now()"),
    (
        "clock_timestamp",
        "",
        "timestamptz",
        "pg_catalog.clock_timestamp()",
    ),
    ("random", "", "double precision", "pg_catalog.random()"),
    (
        "gen_random_uuid",
        "",
        "uuid",
        "pg_catalog.gen_random_uuid()",
    ),
    (
        "current_setting",
        "text",
        "text",
        "pg_catalog.current_setting($1)",
    ),
    (
        "current_setting",
        "text, boolean",
        "text",
        "pg_catalog.current_setting($1, $2)",
    ),
    (
        "set_config",
        "text, text, boolean",
        "text",
        "pg_catalog.set_config($1, $2, $3)",
    ),
    ("format", "text", "text", "pg_catalog.format($1)"),
    ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
    (
        "to_regclass",
        "text",
        "regclass",
        "pg_catalog.to_regclass($1)",
    ),
    (
        "parse_ident",
        "text",
        "text[]",
        "pg_catalog.parse_ident($1)",
    ),
    (
        "parse_ident",
        "text, boolean",
        "text[]",
        "pg_catalog.parse_ident($1, $2)",
    ),
    (
        "array_length",
        "text[], integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_to_string",
        "text[], text",
        "text",
        "pg_catalog.array_to_string($1, $2)",
    ),
    (
        "string_to_array",
        "text, text",
        "text[]",
        "pg_catalog.string_to_array($1, $2)",
    ),
    ("unnest", "text[]", "SETOF text", "pg_catalog.unnest($1)"),
    (
        "generate_series",
        "integer, integer",
        "SETOF integer",
        "pg_catalog.generate_series($1, $2)",
    ),
    (
        "pg_backend_pid",
        "",
        "integer",
        "pg_catalog.pg_backend_pid()",
    ),
    ("uuid_send", "uuid", "bytea", "pg_catalog.uuid_send($1)"),
    (
        "get_byte",
        "bytea, integer",
        "integer",
        "pg_catalog.get_byte($1, $2)",
    ),
    ("encode", "bytea, text", "text", "pg_catalog.encode($1, $2)"),
    ("decode", "text, text", "bytea", "pg_catalog.decode($1, $2)"),
];

const SHADOW_OPERATORS: &[&str] = &[
    "=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "&", "|", "#", "<<", ">>", "||",
    "->", "->>", "#>>", "?", "@>", "~~", "~",
];
const OPERATOR_TYPES: &[&str] = &[
    "text", "integer", "bigint", "numeric", "jsonb", "uuid", "boolean", "text[]",
];
const SHADOW_DOMAINS: &[&str] = &[
    "text", "int4", "int8", "jsonb", "uuid", "bool", "varchar", "float8",
];
const SHADOW_VIEWS: &[&str] = &[
    "pg_foreign_server",
    "pg_foreign_data_wrapper",
    "pg_user_mappings",
    "pg_user_mapping",
    "pg_namespace",
    "pg_proc",
    "pg_class",
    "pg_settings",
    "pg_stat_activity",
    "pg_locks",
    "pg_extension",
    "pg_roles",
];

fn hostile_script() -> String {
    let mut sql = String::from(hostile::EVIDENCE);
    sql += r#"CREATE FUNCTION public.hostile_hit(what text) RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$
BEGIN
  PERFORM nextval('public.hostile_hits');
  BEGIN INSERT INTO public.hostile_log VALUES (what, current_user); EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'ALTER ROLE hostile SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN true;
END $f$;
CREATE FUNCTION public.hostile_count_step(n bigint) RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$ BEGIN PERFORM public.hostile_hit('aggregate public.count(*)'); RETURN n + 1; END $f$;
CREATE AGGREGATE public.count(*) (SFUNC = public.hostile_count_step, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.hostile_agg_step(s text, v text, d text) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$ BEGIN PERFORM public.hostile_hit('aggregate public.string_agg(text, text)');
  RETURN CASE WHEN s IS NULL THEN v ELSE s || d || v END; END $f$;
CREATE AGGREGATE public.string_agg(text, text) (SFUNC = public.hostile_agg_step, STYPE = text);
"#;
    for (name, args, ret, body) in SHADOW_FUNCTIONS {
        let params: Vec<String> = if args.is_empty() {
            vec![]
        } else {
            args.split(", ")
                .enumerate()
                .map(|(i, t)| format!("a{i} {t}"))
                .collect()
        };
        let what = format!("function public.{name}({args})");
        let body = if ret.starts_with("SETOF") {
            format!(
                "PERFORM public.hostile_hit({}); RETURN QUERY SELECT {body};",
                lit(&what)
            )
        } else {
            format!("PERFORM public.hostile_hit({}); RETURN {body};", lit(&what))
        };
        sql += &format!(
            "CREATE FUNCTION public.{name}({params}) RETURNS {ret} LANGUAGE plpgsql VOLATILE \
             SET search_path = pg_catalog AS $b$ BEGIN {body} END $b$;\n",
            name = if *name == "left" || *name == "right" {
                format!("\"{name}\"")
            } else {
                name.to_string()
            },
            params = params.join(", "),
        );
    }
    for view in SHADOW_VIEWS {
        sql += &format!(
            "CREATE VIEW public.{view} AS SELECT * FROM pg_catalog.{view} WHERE public.hostile_hit('view public.{view}');\n\
             GRANT SELECT ON public.{view} TO PUBLIC;\n"
        );
    }
    sql += &hostile::operators_sql(
        SHADOW_OPERATORS,
        OPERATOR_TYPES,
        &["integer", "bigint", "numeric"],
        100,
    );
    for domain in SHADOW_DOMAINS {
        sql += &format!(
            "CREATE DOMAIN public.{domain} AS pg_catalog.{domain} CHECK (public.hostile_hit('domain public.{domain}'));\n"
        );
    }
    sql += "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;\n";
    sql
}

/// What hostile code did so far (read with search_path pg_catalog): (runs, description).
fn hostile_evidence(k: &mut Client) -> (i64, String) {
    let rows = must(
        k,
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hostile_hits)::text,
                (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'hostile')::text,
                (SELECT string_agg(DISTINCT what || ' as ' || by_user, '; ') FROM public.hostile_log)",
    );
    let hits: i64 = rows[0][0].as_deref().unwrap().parse().unwrap();
    let superuser = rows[0][1].as_deref() == Some("true");
    (
        hits + superuser as i64,
        format!(
            "{hits} hostile call(s){}: {}",
            if superuser {
                ", AND HOSTILE BECAME SUPERUSER"
            } else {
                ""
            },
            rows[0][2].clone().unwrap_or_default()
        ),
    )
}

/// Runs calls as one caller under one search_path, checking each one's outcome and, after
/// each, that nothing hostile ran.
struct Stepper {
    c: Client,
    k: Client,
    seen: i64,
    label: String,
    faults: Faults,
}

impl Stepper {
    fn new(sh: &Shards, caller: &str, path: &str) -> Stepper {
        let mut c = sh.router.connect_as(caller);
        must(&mut c, &format!("SET search_path = {path}"));
        let mut k = sh.router();
        must(&mut k, "SET search_path = pg_catalog");
        let seen = hostile_evidence(&mut k).0;
        Stepper {
            c,
            k,
            seen,
            label: format!("[as {caller}, search_path = {path}]"),
            faults: Vec::new(),
        }
    }

    /// Run `sql`: `expect` None means it must succeed, Some(state) that it must fail with
    /// that SQLSTATE. Returns the rows when it succeeded.
    fn step(&mut self, sql: &str, expect: Option<&str>) -> Option<Rows> {
        let r = raw(&mut self.c, sql);
        let _ = raw(&mut self.c, "ROLLBACK");
        let (hits, what) = hostile_evidence(&mut self.k);
        if hits > self.seen {
            self.faults
                .push(format!("{sql} {}: hostile code ran: {what}", self.label));
            self.seen = hits;
        }
        match (r, expect) {
            (Ok(rows), None) => Some(rows),
            (Ok(rows), Some(s)) => {
                self.faults.push(format!(
                    "{sql} {}: succeeded ({rows:?}), expected {s}",
                    self.label
                ));
                None
            }
            (Err(e), Some(s)) if state(&e) == s => None,
            (Err(e), _) => {
                self.faults.push(format!(
                    "{sql} {}: {}{}",
                    self.label,
                    describe(&e),
                    expect
                        .map(|s| format!(", expected {s}"))
                        .unwrap_or_default()
                ));
                None
            }
        }
    }

    fn value(&mut self, sql: &str) -> Option<String> {
        self.step(sql, None).and_then(|rows| first(&rows))
    }
}

/// The tables the hostile and careless calls use, on every shard.
const SURFACE_TABLES: &str = "CREATE TABLE items (k text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    CREATE TABLE jobs (id int PRIMARY KEY, done_at timestamptz);
    INSERT INTO jobs SELECT g FROM generate_series(1, 400) g;";

/// Every function of the router, on its paths (first use, replay, posting and voiding,
/// claims to the end, refusals), by the stepper's caller.
fn router_surface(s: &mut Stepper, tag: &str) {
    let t = format!("h-{tag}");
    let (a, b) = (format!("{t}:a"), format!("{t}:b"));
    let (la, lb) = (lit(&a), lit(&b));
    s.step(&format!("SELECT exactly.shard_for({})", lit(&a)), None);
    s.step(
        &format!(
            "SELECT exactly.shard_for_row('items', pg_catalog.jsonb_build_object('k', {}))",
            lit(&t)
        ),
        None,
    );
    s.step("SELECT * FROM exactly.router_shards()", None);
    s.step(
        &format!(
            "SELECT exactly.define_invoice_sequence({}, 'H', 4)",
            lit(&t)
        ),
        None,
    );
    s.step(
        &format!("SELECT exactly.next_invoice_number({})", lit(&t)),
        None,
    );
    s.step(
        &format!("SELECT * FROM exactly.next_invoice_numbers({}, 3)", lit(&t)),
        None,
    );
    s.step(
        &format!("SELECT exactly.set_next_invoice_number({}, 100)", lit(&t)),
        None,
    );
    s.step("SELECT exactly.next_invoice_number(NULL)", Some("22004"));
    s.step("SELECT * FROM exactly.append_payment(5)", None);
    for _ in 0..2 {
        s.step(
            &format!(
                "SELECT * FROM exactly.append_payment({la}, 50, {})",
                lit(&format!("k-{t}"))
            ),
            None,
        );
    }
    s.step(
        &format!("SELECT * FROM exactly.append_payments({la}, ARRAY[1, 2, 3]::numeric[])"),
        None,
    );
    s.step(
        &format!(
            "SELECT * FROM exactly.transfer({la}, {lb}, 10, idempotency_key => {})",
            lit(&format!("x-{t}"))
        ),
        None,
    );
    s.step(
        &format!(
            "SELECT * FROM exactly.transfers({})",
            lit(&format!(r#"[{{"from": "{a}", "to": "{b}", "amount": 1}}, {{"from": "{b}", "to": "{a}", "amount": "0.5"}}]"#))
        ),
        None,
    );
    if let Some(hold) = s.value(&format!("SELECT id FROM exactly.hold({la}, {lb}, 5)")) {
        s.step(&format!("SELECT * FROM exactly.post_hold({hold}, 3)"), None);
    }
    if let Some(hold) = s.value(&format!(
        "SELECT id FROM exactly.hold({la}, {lb}, 5, timeout => '1 hour')"
    )) {
        s.step(&format!("SELECT * FROM exactly.void_hold({hold})"), None);
    }
    s.step(
        &format!("SELECT exactly.balance_at({la}, pg_catalog.now())"),
        None,
    );
    s.step(&format!("SELECT * FROM exactly.verify_ledger({la})"), None);
    s.step("SELECT * FROM exactly.verify_ledger()", None);
    s.step("SELECT exactly.expire_holds()", None);
    // a transfer to another shard's account: the router's own refusal
    let other = (0..64)
        .map(|i| format!("h-{tag}-o{i}:a"))
        .find(|o| shard_for(&mut s.k, o) != shard_for(&mut s.k, &a))
        .unwrap();
    s.step(
        &format!("SELECT * FROM exactly.transfer({la}, {}, 1)", lit(&other)),
        Some("0A000"),
    );
    if let Some(raffle) = s.value("SELECT * FROM exactly.create_raffle(10, 8)") {
        for _ in 0..2 {
            s.step(
                &format!(
                    "SELECT exactly.batch_create_tickets({raffle}, 4, {})",
                    lit(&format!("b-{t}"))
                ),
                None,
            );
        }
    }
    s.step("SELECT exactly.purge_ticket_batches('100 years')", None);
    s.step(
        &format!(
            "SELECT * FROM exactly.find_or_create('items', pg_catalog.jsonb_build_object('k', {}))",
            lit(&t)
        ),
        None,
    );
    s.step(
        &format!(
            "SELECT exactly.increment('items', pg_catalog.jsonb_build_object('k', {}), 'n', 2)",
            lit(&t)
        ),
        None,
    );
    // claims: complete part, fail part, release, complete the rest
    let claim_sql = "SELECT claim::pg_catalog.text, data::pg_catalog.text FROM exactly.claim_batch('jobs', 'done_at', 2)";
    if let Some(rows) = s.step(claim_sql, None) {
        let claims: BTreeMap<String, Vec<String>> =
            rows.iter().fold(BTreeMap::new(), |mut m, r| {
                m.entry(r[0].clone().unwrap_or_default())
                    .or_insert_with(Vec::new)
                    .push(r[1].clone().unwrap_or_default());
                m
            });
        for (n, (claim, data)) in claims.iter().enumerate() {
            let lc = lit(claim);
            s.step(&format!("SELECT exactly.shard_of_claim({lc})"), None);
            s.step(
                &format!("SELECT exactly.extend_claim({lc}, '10 minutes')"),
                None,
            );
            match n % 4 {
                0 => {
                    s.step(
                        &format!(
                            "SELECT exactly.complete_rows({lc}, {}::pg_catalog.jsonb)",
                            lit(&format!("[{}]", data[0]))
                        ),
                        None,
                    );
                    s.step(&format!("SELECT exactly.complete_batch({lc})"), None);
                }
                1 => {
                    s.step(
                        &format!(
                            "SELECT exactly.fail_rows({lc}, {}::pg_catalog.jsonb, 'boom')",
                            lit(&format!("[{}]", data[0]))
                        ),
                        None,
                    );
                    s.step(&format!("SELECT exactly.release_claim({lc})"), None);
                }
                2 => {
                    s.step(&format!("SELECT exactly.release_claim({lc})"), None);
                }
                _ => {
                    s.step(&format!("SELECT exactly.complete_batch({lc})"), None);
                }
            }
        }
    }
    s.step(
        "SELECT claim::pg_catalog.text FROM exactly.claim_batch('jobs', 'done_at', 2, '1 minute', max_attempts => 3, retry_after => '1 second', order_by => 'id')",
        None,
    );
    s.step("SELECT exactly.purge_claim_attempts('100 years')", None);
    s.step(
        "SELECT exactly.complete_batch('not a claim')",
        Some("22P02"),
    );
    let lease = format!("{t}:sync");
    if let Some(token) = s.value(&format!(
        "SELECT token::pg_catalog.text FROM exactly.acquire_lease({}, '1 minute')",
        lit(&lease)
    )) {
        s.step(
            &format!(
                "SELECT * FROM exactly.acquire_lease({}, '1 minute')",
                lit(&lease)
            ),
            None,
        );
        s.step(
            &format!(
                "SELECT exactly.renew_lease({}, {}, '1 minute')",
                lit(&lease),
                lit(&token)
            ),
            None,
        );
        s.step(
            &format!("SELECT * FROM exactly.lock_status({})", lit(&lease)),
            None,
        );
        s.step(
            &format!(
                "SELECT exactly.release_lease({}, {})",
                lit(&lease),
                lit(&token)
            ),
            None,
        );
    }
    let slot = format!("{t}:slots");
    if let Some(token) = s.value(&format!(
        "SELECT exactly.acquire_slot({}, 2, '1 minute')::pg_catalog.text",
        lit(&slot)
    )) {
        s.step(
            &format!(
                "SELECT exactly.renew_slot({}, {}, '1 minute')",
                lit(&slot),
                lit(&token)
            ),
            None,
        );
        s.step(
            &format!(
                "SELECT exactly.release_slot({}, {})",
                lit(&slot),
                lit(&token)
            ),
            None,
        );
    }
    s.step(
        &format!("SELECT exactly.lock({})", lit(&lease)),
        Some("0A000"),
    );
    s.step(
        &format!("SELECT exactly.try_lock({})", lit(&lease)),
        Some("0A000"),
    );
    s.step(
        &format!("SELECT exactly.check_fence({}, 1)", lit(&lease)),
        Some("0A000"),
    );
}

/// Every router function called as a superuser and as `app` (given `grant_usage`) under
/// `public, pg_catalog` and the default `"$user", public`: nothing hostile may run.
fn hostile_search_path(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    for (caller, path, tag) in [
        ("postgres", "public, pg_catalog", "sp"),
        ("app", "public, pg_catalog", "ap"),
        ("postgres", "\"$user\", public", "sd"),
        ("app", "\"$user\", public", "ad"),
    ] {
        let mut s = Stepper::new(sh, caller, path);
        router_surface(&mut s, tag);
        faults.extend(s.faults);
    }
    faults
}

/// The careless PL/Proxy function under `public, pg_catalog`: the same detector must see
/// the hostile `hashtext` run.
fn careless_search_path(sh: &Shards) -> Faults {
    let mut s = Stepper::new(sh, "postgres", "public, pg_catalog");
    s.step("SELECT careless.next_invoice_number('careless-1')", None);
    s.step(
        "SELECT * FROM careless.append_payment('careless-1:a', 1)",
        None,
    );
    s.faults
}

/// A role without `grant_usage` on the router: every function refuses it with 42501, and
/// its calls change nothing on the shards.
fn without_grant_usage(sh: &Shards, schema: &str) -> Faults {
    let mut faults = Vec::new();
    let mut c = sh.router.connect_as("stranger");
    let calls: Vec<String> = if schema == "exactly" {
        [
            "SELECT exactly.shard_for('st-1')",
            "SELECT exactly.shard_for_row('items', '{\"k\": \"st-1\"}')",
            "SELECT * FROM exactly.router_shards()",
            "SELECT exactly.next_invoice_number('st-1')",
            "SELECT exactly.define_invoice_sequence('st-1', 'S', 4)",
            "SELECT * FROM exactly.append_payment('st-1:a', 1)",
            "SELECT * FROM exactly.append_payment(1)",
            "SELECT * FROM exactly.transfer('st-1:a', 'st-1:b', 1)",
            "SELECT * FROM exactly.hold('st-1:a', 'st-1:b', 1)",
            "SELECT * FROM exactly.verify_ledger()",
            "SELECT exactly.balance_at('st-1:a', now())",
            "SELECT * FROM exactly.create_raffle(10, 8)",
            "SELECT exactly.batch_create_tickets(1, 1, 'st')",
            "SELECT * FROM exactly.find_or_create('items', '{\"k\": \"st-1\"}')",
            "SELECT exactly.increment('items', '{\"k\": \"st-1\"}', 'n')",
            "SELECT * FROM exactly.claim_batch('jobs', 'done_at', 5)",
            "SELECT exactly.complete_batch(gen_random_uuid())",
            "SELECT exactly.shard_of_claim(gen_random_uuid())",
            "SELECT * FROM exactly.acquire_lease('st-1:l', '1 minute')",
            "SELECT exactly.acquire_slot('st-1:s', 2, '1 minute')",
            "SELECT * FROM exactly.lock_status('st-1:l')",
            "SELECT exactly.expire_holds()",
            "SELECT exactly.grant_usage('stranger')",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        vec![
            format!("SELECT {schema}.next_invoice_number('st-1')"),
            format!("SELECT * FROM {schema}.append_payment('st-1:a', 1)"),
        ]
    };
    for sql in &calls {
        match raw(&mut c, sql) {
            Ok(rows) => faults.push(format!("{sql} as stranger succeeded: {rows:?}")),
            Err(e) if state(&e) == "42501" => {}
            Err(e) => faults.push(format!(
                "{sql} as stranger: expected 42501, got {}",
                describe(&e)
            )),
        }
    }
    // nothing of theirs on the shards
    for k in 0..SHARDS {
        let left = one(
            &mut sh.shard(k),
            "SELECT (SELECT count(*) FROM exactly.invoice_sequences WHERE tenant LIKE 'st-%')
                  + (SELECT count(*) FROM exactly.accounts WHERE account LIKE 'st-%')
                  + (SELECT count(*) FROM exactly.leases WHERE name LIKE 'st-%')
                  + (SELECT count(*) FROM items WHERE k LIKE 'st-%')",
        );
        if left != "0" {
            faults.push(format!(
                "shard {k} holds {left} rows made by stranger's calls"
            ));
        }
    }
    faults
}

/// Odd routing keys: NULL, empty, ':', 'a:', 5,000 characters, unicode, SQL.
fn odd_keys() -> Vec<Option<String>> {
    let mut keys: Vec<Option<String>> = [
        "",
        ":",
        "a:",
        ":a",
        "::",
        " ",
        "a:b:c",
        "ünïcødé:tëst",
        "🦀",
        "🦀:crab",
        "x\ny",
        "' OR 1=1 --",
        "\\",
        "%",
        "_",
        "default",
    ]
    .iter()
    .map(|s| Some(s.to_string()))
    .collect();
    keys.push(None);
    keys.push(Some("a".repeat(5000)));
    keys.push(Some("é".repeat(2500)));
    keys.push(Some(format!(
        "{}:{}",
        "ß".repeat(10),
        (0..4990)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect::<String>()
    )));
    keys
}

/// Each routed call with an odd key: through the router it must work or fail with a clear
/// SQLSTATE, never XX000; when pg_exactly itself (called directly on the key's shard, in a
/// transaction rolled back) refuses the call, the router must refuse it with the same
/// SQLSTATE (or with 22004/22023 where it reads the key to route); a call that works must
/// land on `shard_for(key)`; `shard_for` itself gives the same shard on every call.
fn odd_key_faults(sh: &Shards, schema: &str) -> Faults {
    let mut faults = Vec::new();
    let mut router = sh.router();
    let mut router2 = sh.router();
    let mut shards: Vec<Client> = (0..SHARDS).map(|k| sh.shard(k)).collect();
    let calls: &[(&str, &str)] = if schema == "exactly" {
        &[
            ("shard_for", "SELECT exactly.shard_for({K})::text"),
            ("next_invoice_number", "SELECT {S}.next_invoice_number({K})"),
            ("define_invoice_sequence", "SELECT {S}.define_invoice_sequence({K}, 'P', 4)"),
            ("append_payment", "SELECT id::text FROM {S}.append_payment({K}, 1)"),
            ("balance_at", "SELECT {S}.balance_at({K}, pg_catalog.now())"),
            ("verify_ledger", "SELECT count(*) FROM {S}.verify_ledger({K})"),
            ("acquire_lease", "SELECT fence FROM {S}.acquire_lease({K}, '1 minute')"),
            ("acquire_slot", "SELECT {S}.acquire_slot({K}, 2, '1 minute') IS NOT NULL"),
            ("lock_status", "SELECT count(*) FROM {S}.lock_status({K})"),
            ("find_or_create", "SELECT created FROM {S}.find_or_create('items', jsonb_build_object('k', {K}::text))"),
            ("increment", "SELECT {S}.increment('items', jsonb_build_object('k', {K}::text), 'n')"),
        ]
    } else {
        &[
            ("next_invoice_number", "SELECT {S}.next_invoice_number({K})"),
            (
                "append_payment",
                "SELECT id::text FROM {S}.append_payment({K}, 1)",
            ),
        ]
    };
    for key in odd_keys() {
        let k_sql = key.as_deref().map(lit).unwrap_or_else(|| "NULL".into());
        let shown: String = key
            .as_deref()
            .map(|k| k.chars().take(24).collect::<String>())
            .unwrap_or_else(|| "NULL".into());
        let shown = format!(
            "key {shown:?}{}",
            key.as_deref()
                .map(|k| format!(" ({} bytes)", k.len()))
                .unwrap_or_default()
        );
        // where the router says the key lives
        let routed = raw(
            &mut router,
            &format!("SELECT exactly.shard_for({k_sql})::text"),
        )
        .map(|r| first(&r));
        let again = raw(
            &mut router2,
            &format!("SELECT exactly.shard_for({k_sql})::text"),
        )
        .map(|r| first(&r));
        let home: Option<usize> = match (&routed, &again) {
            (Ok(a), Ok(b)) if a == b => a.as_deref().and_then(|v| v.parse().ok()),
            (Err(e), Err(_)) if state(e) != "XX000" => None,
            _ => {
                faults.push(format!(
                    "{shown}: shard_for gave {:?} and then {:?}",
                    routed.as_ref().map_err(describe),
                    again.as_ref().map_err(describe)
                ));
                None
            }
        };
        if let Some(h) = home {
            if h >= SHARDS {
                faults.push(format!("{shown}: shard_for says {h}"));
            }
        }
        for (name, template) in calls {
            let sql_for = |s: &str| template.replace("{S}", s).replace("{K}", &k_sql);
            let direct_shard = if name.contains("find_or_create") || name.contains("increment") {
                raw(&mut router, &format!("SELECT exactly.shard_for_row('items', jsonb_build_object('k', {k_sql}::text))::text"))
                    .ok()
                    .and_then(|r| first(&r))
                    .and_then(|v| v.parse::<usize>().ok())
            } else {
                home
            }
            .unwrap_or(0)
            .min(SHARDS - 1);
            let direct = if *name == "shard_for" {
                Ok(())
            } else {
                let c = &mut shards[direct_shard];
                must(c, "BEGIN");
                let r = raw(c, &sql_for("exactly"))
                    .map(|_| ())
                    .map_err(|e| state(&e));
                must(c, "ROLLBACK");
                r
            };
            let through = raw(&mut router, &sql_for(schema));
            let what = format!("{name}({shown})");
            match (&direct, &through) {
                (_, Err(e)) if state(e) == "XX000" || e.code().is_none() => {
                    faults.push(format!("{what} through the router: {}", describe(e)))
                }
                (Err(sd), Ok(rows)) => faults.push(format!(
                    "{what}: pg_exactly on shard {direct_shard} refuses it with {sd}, the router returned {rows:?}"
                )),
                (Err(sd), Err(e)) => {
                    let sr = state(e);
                    let routing = ["22004", "22023"];
                    if sr != *sd && !(routing.contains(&sr.as_str()) && routing.contains(&sd.as_str())) {
                        faults.push(format!(
                            "{what}: pg_exactly on shard {direct_shard} says {sd}, the router {}",
                            describe(e)
                        ));
                    }
                }
                (Ok(()), Err(e)) => {
                    let sr = state(e);
                    if sr != "22004" && sr != "22023" {
                        faults.push(format!(
                            "{what}: works on shard {direct_shard}, the router says {}",
                            describe(e)
                        ));
                    } else {
                        eprintln!("    {what}: works on the shard, the router refuses it: {}", describe(e));
                    }
                }
                (Ok(()), Ok(_)) => {
                    // it worked: it must have landed on the key's shard, and there alone
                    let probe = match *name {
                        "next_invoice_number" => Some("SELECT count(*) FROM exactly.invoice_sequences WHERE tenant = {K}"),
                        "append_payment" => Some("SELECT count(*) FROM exactly.accounts WHERE account = {K}"),
                        _ => None,
                    };
                    if let (Some(probe), Some(h)) = (probe, home) {
                        let found: Vec<i64> = shards
                            .iter_mut()
                            .map(|c| int(c, &probe.replace("{K}", &k_sql)))
                            .collect();
                        let want: Vec<i64> = (0..SHARDS).map(|j| (j == h) as i64).collect();
                        if found != want {
                            faults.push(format!(
                                "{what} worked; shard_for says shard {h}, rows per shard {found:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    faults
}

/// A careless administrator lists partitions p1 and p2 the wrong way round. The router
/// must notice where docs/router.md says it does: `router_shards()` reports shards 1 and 2
/// not ok, and a hold or a raffle made on them is refused with 55000 and leaves nothing
/// (its id would name the wrong shard); on shards 0 and 3 they work, with ids naming their
/// shard; an invoice number of a tenant of shard 1 or 2 is refused with 55000 too (the shard
/// a call reaches checks that it is the shard the router meant). Put right, every shard
/// works again.
fn swapped_partitions(sh: &Shards, api: &str) -> Faults {
    let mut faults = Vec::new();
    let mut admin = sh.router();
    let tenants = keys_on_every_shard(&mut admin, &format!("mis-{api}-"), 1);
    let set = |a: usize, b: usize| {
        format!(
            "ALTER SERVER exactly OPTIONS (SET p1 '{}', SET p2 '{}')",
            sh.shards[a].conninfo(),
            sh.shards[b].conninfo()
        )
    };
    let holds_before: Vec<i64> = (0..SHARDS)
        .map(|k| int(&mut sh.shard(k), "SELECT count(*) FROM exactly.holds"))
        .collect();
    let raffles_before: Vec<i64> = (0..SHARDS)
        .map(|k| int(&mut sh.shard(k), "SELECT count(*) FROM exactly.raffles"))
        .collect();
    must(&mut admin, &set(2, 1));
    let problems = sh.router_problems();
    if !(problems.iter().any(|p| p.starts_with("shard 1"))
        && problems.iter().any(|p| p.starts_with("shard 2")))
    {
        faults.push(format!(
            "with p1 and p2 swapped, router_shards() says only {problems:?}"
        ));
    }
    let mut c = sh.router();
    let mut made_holds = vec![0i64; SHARDS];
    for (t, k) in &tenants {
        let sql = format!(
            "SELECT id FROM {api}.hold({}, {}, 1)",
            lit(&format!("{t}:a")),
            lit(&format!("{t}:b"))
        );
        match (k, raw(&mut c, &sql)) {
            (1 | 2, Err(e)) if state(&e) == "55000" => {}
            (1 | 2, r) => faults.push(format!(
                "{sql} (a tenant of shard {k}) with p1 and p2 swapped: {:?}, expected 55000",
                r.map(|rows| first(&rows)).map_err(|e| describe(&e))
            )),
            (_, Ok(rows)) => {
                made_holds[*k] += 1;
                let id: i64 = first(&rows).and_then(|v| v.parse().ok()).unwrap_or(-1);
                if id >> 48 != *k as i64 {
                    faults.push(format!(
                        "{sql} on shard {k}: hold id {id} names shard {}",
                        id >> 48
                    ));
                }
            }
            (_, Err(e)) => {
                faults.push(format!("{sql} (shard {k}, listed right): {}", describe(&e)))
            }
        }
        // every routed call is checked by the shard it reaches: an invoice number of a
        // tenant of a swapped shard is refused there, not drawn on the other tenant's shard
        let sql = format!("SELECT {api}.next_invoice_number({})", lit(t));
        match (k, raw(&mut c, &sql)) {
            (1 | 2, Err(e)) if state(&e) == "55000" => {}
            (1 | 2, r) => faults.push(format!(
                "{sql} (a tenant of shard {k}) with p1 and p2 swapped: {:?}, expected 55000",
                r.map(|rows| first(&rows)).map_err(|e| describe(&e))
            )),
            (_, Ok(_)) => {}
            (_, Err(e)) => faults.push(format!("{sql} (shard {k}, listed right): {}", describe(&e))),
        }
    }
    if api == "exactly" {
        let mut made_raffles = vec![0i64; SHARDS];
        for _ in 0..16 {
            match raw(&mut c, "SELECT * FROM exactly.create_raffle(10, 8)") {
                Ok(rows) => {
                    let id: i64 = first(&rows).and_then(|v| v.parse().ok()).unwrap_or(-1);
                    let k = (id >> 48) as usize;
                    if k == 1 || k == 2 || k >= SHARDS {
                        faults.push(format!(
                            "with p1 and p2 swapped, create_raffle made raffle {id} (shard {k})"
                        ));
                    } else {
                        made_raffles[k] += 1;
                    }
                }
                Err(e) if state(&e) == "55000" => {}
                Err(e) => faults.push(format!(
                    "create_raffle with p1 and p2 swapped: {}",
                    describe(&e)
                )),
            }
        }
        for k in 0..SHARDS {
            let now = int(&mut sh.shard(k), "SELECT count(*) FROM exactly.raffles");
            if now - raffles_before[k] != made_raffles[k] {
                faults.push(format!(
                    "shard {k} has {} new raffles, the router was told of {}",
                    now - raffles_before[k],
                    made_raffles[k]
                ));
            }
        }
    }
    for k in 0..SHARDS {
        let now = int(&mut sh.shard(k), "SELECT count(*) FROM exactly.holds");
        if now - holds_before[k] != made_holds[k] {
            faults.push(format!(
                "shard {k} has {} new holds, {} were made on it",
                now - holds_before[k],
                made_holds[k]
            ));
        }
    }
    must(&mut admin, &set(1, 2));
    let problems = sh.router_problems();
    if !problems.is_empty() {
        faults.push(format!(
            "put right again, router_shards() says {problems:?}"
        ));
    }
    let mut c = sh.router();
    for (t, k) in &tenants {
        let sql = format!(
            "SELECT id FROM {api}.hold({}, {}, 1)",
            lit(&format!("{t}:a")),
            lit(&format!("{t}:b"))
        );
        match raw(&mut c, &sql) {
            Ok(rows) => {
                let id: i64 = first(&rows).and_then(|v| v.parse().ok()).unwrap_or(-1);
                if id >> 48 != *k as i64 {
                    faults.push(format!(
                        "{sql} after putting the partitions right: hold {id} names shard {}",
                        id >> 48
                    ));
                }
            }
            Err(e) => faults.push(format!(
                "{sql} (shard {k}) after putting the partitions right: {}",
                describe(&e)
            )),
        }
    }
    faults
}

/// Ids and arguments the router must read to route, malformed: each call must fail with a
/// SQLSTATE of its own (never XX000, never a lost connection) or work.
fn odd_ids(sh: &Shards) -> Faults {
    let mut faults = Vec::new();
    let mut c = sh.router();
    let calls = [
        "SELECT exactly.batch_create_tickets((5::bigint << 48) + 1, 1)",
        "SELECT exactly.batch_create_tickets((4::bigint << 48) + 1, 1)",
        "SELECT exactly.batch_create_tickets(-1, 1)",
        "SELECT exactly.batch_create_tickets(9223372036854775807, 1, 'x')",
        "SELECT exactly.batch_create_tickets(NULL, 1)",
        "SELECT exactly.batch_create_tickets(1, NULL)",
        "SELECT * FROM exactly.post_hold((7::bigint << 48) + 3)",
        "SELECT * FROM exactly.post_hold(-9223372036854775808)",
        "SELECT * FROM exactly.post_hold(NULL)",
        "SELECT * FROM exactly.void_hold(-1)",
        "SELECT * FROM exactly.void_hold((3::bigint << 48) + 999999)",
        "SELECT exactly.complete_batch('ffff0000-0000-4000-8000-000000000000')",
        "SELECT exactly.complete_batch('00040000-0000-4000-8000-000000000000')",
        "SELECT exactly.complete_batch('00030000-0000-4000-8000-000000000000')",
        "SELECT exactly.complete_batch(NULL)",
        "SELECT exactly.extend_claim('00050000-0000-4000-8000-000000000000')",
        "SELECT exactly.release_claim(NULL)",
        "SELECT exactly.complete_rows('ffff0000-0000-4000-8000-000000000000', '[1]')",
        "SELECT exactly.fail_rows('00020000-0000-4000-8000-000000000000', '[]', 'x')",
        "SELECT exactly.fail_rows('00020000-0000-4000-8000-000000000000', NULL)",
        "SELECT exactly.shard_of_claim('ffff0000-0000-4000-8000-000000000000')",
        "SELECT exactly.shard_of_claim(NULL)",
        "SELECT exactly.shard_for_row(NULL, '{\"k\": 1}')",
        "SELECT exactly.shard_for_row('items', NULL)",
        "SELECT exactly.shard_for_row('items', '[]')",
        "SELECT exactly.shard_for_row('items', '{}')",
        "SELECT exactly.shard_for_row('items', '\"k\"')",
        "SELECT exactly.shard_for_row('items', '{\"k\": null}')",
        "SELECT exactly.shard_for_row('items', '{\"k\": {\"a\": [1, {\"b\": null}]}}')",
        "SELECT exactly.shard_for_row('', '{\"k\": 1}')",
        "SELECT exactly.shard_for_row('a.b.c.d', '{\"k\": 1}')",
        "SELECT exactly.shard_for_row('\"unterminated', '{\"k\": 1}')",
        "SELECT exactly.shard_for_row('items', '{\"k\": 1e400}')",
        "SELECT * FROM exactly.find_or_create('items', '{}')",
        "SELECT * FROM exactly.find_or_create('items', 'null')",
        "SELECT * FROM exactly.find_or_create('items', '{\"k\": [1, 2]}')",
        "SELECT * FROM exactly.find_or_create('items', '{\"k\": null}')",
        "SELECT * FROM exactly.find_or_create(NULL, '{\"k\": \"x\"}')",
        "SELECT * FROM exactly.find_or_create('no_such_table', '{\"k\": \"x\"}')",
        "SELECT exactly.increment('items', '{\"k\": \"x\"}', NULL)",
        "SELECT exactly.increment('items', '{\"k\": \"x\"}', 'n', 'NaN')",
        "SELECT * FROM exactly.claim_batch(NULL, 'done_at')",
        "SELECT * FROM exactly.claim_batch('jobs', NULL)",
        "SELECT * FROM exactly.claim_batch('jobs', 'done_at', 0)",
        "SELECT * FROM exactly.claim_batch('no_such_table', 'done_at')",
        "SELECT * FROM exactly.transfers('[]')",
        "SELECT * FROM exactly.transfers('{}')",
        "SELECT * FROM exactly.transfers(NULL)",
        "SELECT * FROM exactly.transfers('[{\"from\": null, \"to\": \"a:x\", \"amount\": 1}]')",
        "SELECT * FROM exactly.transfers('[{\"from\": \"a:x\", \"amount\": 1}]')",
        "SELECT * FROM exactly.transfers('[{\"from\": 1, \"to\": 2, \"amount\": 1}]')",
        "SELECT * FROM exactly.transfers('[1, 2]')",
        "SELECT * FROM exactly.transfer(NULL, 'a:x', 1)",
        "SELECT * FROM exactly.transfer('a:x', NULL, 1)",
        "SELECT * FROM exactly.hold(NULL, 'a:x', 1)",
        "SELECT * FROM exactly.append_payment(NULL::text, 1)",
        "SELECT * FROM exactly.append_payments(NULL, ARRAY[1]::numeric[])",
        "SELECT * FROM exactly.verify_ledger(NULL)",
        "SELECT exactly.balance_at(NULL, now())",
        "SELECT * FROM exactly.acquire_lease(NULL, '1 minute')",
        "SELECT exactly.renew_lease(NULL, gen_random_uuid(), '1 minute')",
        "SELECT exactly.release_lease('', gen_random_uuid())",
        "SELECT exactly.acquire_slot(NULL, 1, '1 minute')",
        "SELECT * FROM exactly.lock_status(NULL)",
        "SELECT exactly.lock(NULL)",
        "SELECT exactly.define_invoice_sequence(NULL, 'x')",
        "SELECT * FROM exactly.next_invoice_numbers(NULL, 2)",
        "SELECT exactly.set_next_invoice_number(NULL, 5)",
        "SELECT * FROM exactly.create_raffle(NULL, 12)",
        "SELECT * FROM exactly.create_raffle(-5, 12)",
        "SELECT * FROM exactly.create_raffle(10, 99)",
        "SELECT exactly.purge_ticket_batches(NULL)",
        "SELECT exactly.purge_claim_attempts(NULL)",
    ];
    for sql in calls {
        match raw(&mut c, sql) {
            Ok(_) => {}
            Err(e) if e.code().is_none() || state(&e) == "XX000" || state(&e).starts_with("08") => {
                faults.push(format!("{sql}: {}", describe(&e)));
            }
            Err(_) => {}
        }
        if c.is_closed() {
            faults.push(format!("{sql}: the router closed the connection"));
            c = sh.router();
        }
    }
    faults
}

#[test]
fn hostile_and_careless_callers_get_clear_answers() {
    let sh = Shards::start();
    sh.on_every_shard(SURFACE_TABLES);
    must(
        &mut sh.router(),
        "CREATE ROLE app LOGIN; SELECT exactly.grant_usage('app')",
    );
    let mut faults = Vec::new();
    faults.extend(scenario("shard_for is stable", || {
        shard_for_faults(&sh, "exactly.shard_for")
    }));
    faults.extend(scenario("odd keys", || odd_key_faults(&sh, "exactly")));
    faults.extend(scenario("odd ids and arguments", || odd_ids(&sh)));
    faults.extend(scenario("errors pass through", || {
        errors_pass_through(&sh, "exactly")
    }));
    faults.extend(scenario("without grant_usage", || {
        must(&mut sh.router(), "CREATE ROLE stranger LOGIN");
        without_grant_usage(&sh, "exactly")
    }));
    faults.extend(scenario("hostile search_path", || {
        must(
            &mut sh.router(),
            "CREATE ROLE hostile LOGIN; GRANT CREATE ON SCHEMA public TO hostile",
        );
        sh.router
            .connect_as("hostile")
            .batch_execute(&hostile_script())
            .unwrap_or_else(|e| panic!("planting the hostile objects: {}", describe(&e)));
        hostile_search_path(&sh)
    }));
    faults.extend(scenario("partitions listed in the wrong order", || {
        swapped_partitions(&sh, "exactly")
    }));
    assert_no_faults(&faults);
}

#[test]
fn twins_of_the_hostile_checks_are_caught() {
    let sh = Shards::start();
    sh.on_every_shard(SURFACE_TABLES);
    must(&mut sh.router(), CARELESS_SQL);
    must(&mut sh.router(), PLAIN_SQL);
    let mut uncaught = Vec::new();
    uncaught.extend(twin(
        "plain PL/Proxy with partitions in the wrong order",
        || swapped_partitions(&sh, "plain"),
    ));
    uncaught.extend(twin("a careless PL/Proxy function's errors", || {
        errors_pass_through(&sh, "careless")
    }));
    uncaught.extend(twin("shard_for as hashtext % 4", || {
        shard_for_faults(&sh, "careless.shard_for")
    }));
    uncaught.extend(twin("shard_for at random", || {
        shard_for_faults(&sh, "careless.shard_for_random")
    }));
    uncaught.extend(twin("a careless PL/Proxy function with odd keys", || {
        odd_key_faults(&sh, "careless")
    }));
    must(&mut sh.router(), "CREATE ROLE stranger LOGIN");
    uncaught.extend(twin(
        "a careless PL/Proxy function without grant_usage",
        || without_grant_usage(&sh, "careless"),
    ));
    hostile_roles_for_twin(&sh);
    uncaught.extend(twin(
        "a careless PL/Proxy function under a hostile search_path",
        || careless_search_path(&sh),
    ));
    assert_no_faults(&uncaught);
}

/// The hostile role and its objects, for the twin (no `app` role needed there).
fn hostile_roles_for_twin(sh: &Shards) {
    must(
        &mut sh.router(),
        "CREATE ROLE hostile LOGIN; GRANT CREATE ON SCHEMA public TO hostile",
    );
    sh.router
        .connect_as("hostile")
        .batch_execute(&hostile_script())
        .unwrap_or_else(|e| panic!("planting the hostile objects: {}", describe(&e)));
}

/// What a review found, each checked: an application role calling the router's PL/Proxy
/// functions directly cannot put a key on another shard (the functions find the shard from
/// the key; a wrong shard number is refused by the shard); a router session with another
/// DateStyle draws the number of the period it names, and a shard connection printing dates
/// otherwise than ISO is refused; `claim_batch(..., complete => c)` with c's shard down
/// fails instead of skipping the completion.
#[test]
fn direct_calls_date_styles_and_a_lost_completion_are_caught() {
    let sh = Shards::start();
    let mut admin = sh.router();
    must(&mut admin, "CREATE ROLE app LOGIN; SELECT exactly.grant_usage('app')");
    let tenants = keys_on_every_shard(&mut admin, "direct-", 1);
    let (t1, k1) = tenants[1].clone();
    let (t2, _) = tenants[2].clone();
    let mut app = sh.router.connect_as("app");

    // a direct call naming another shard: refused there, nothing drawn anywhere
    let wrong = (k1 + 1) % SHARDS;
    let r = raw(&mut app, &format!("SELECT exactly_router.next_invoice_number({wrong}, {}, NULL)", lit(&t1)));
    assert_eq!(r.as_ref().map_err(state).err().as_deref(), Some("55000"), "{r:?}");
    assert_eq!(one(&mut app, &format!("SELECT exactly.next_invoice_number({})", lit(&t1))), format!("{t1}-00000001"));
    // and a cross-shard transfer by the PL/Proxy function itself: refused, 0A000
    let r = raw(
        &mut app,
        &format!("SELECT * FROM exactly_router.transfer({k1}, {}, {}, 5, NULL, NULL, NULL)", lit(&format!("{t1}:a")), lit(&format!("{t2}:a"))),
    );
    assert_eq!(r.as_ref().map_err(state).err().as_deref(), Some("0A000"), "{r:?}");

    // another DateStyle on the router: the period named is the period drawn
    must(&mut admin, &format!("SELECT exactly.define_invoice_sequence({}, 'M', 4, '{{yyyy}}-{{mm}}-{{number}}', 'monthly')", lit(&t2)));
    must(&mut admin, "SET DateStyle = 'SQL, DMY'");
    assert_eq!(one(&mut admin, &format!("SELECT exactly.next_invoice_number({}, '2024-03-04')", lit(&t2))), "2024-03-0001");
    assert_eq!(one(&mut admin, &format!("SELECT exactly.next_invoice_number({}, '04/03/2024')", lit(&t2))), "2024-03-0002");
    must(&mut admin, "RESET DateStyle");
    // a shard whose connection prints dates otherwise: refused, not misread
    let (t3, k3) = tenants[3].clone();
    must(&mut sh.shard(k3), "ALTER ROLE postgres SET DateStyle = 'SQL, DMY'");
    let mut fresh = sh.router();
    let r = raw(&mut fresh, &format!("SELECT exactly.next_invoice_number({})", lit(&t3)));
    assert_eq!(r.as_ref().map_err(state).err().as_deref(), Some("55000"), "{r:?}");
    must(&mut sh.shard(k3), "ALTER ROLE postgres RESET DateStyle");

    // a completion on a shard that is down is reported, not skipped
    sh.on_every_shard("CREATE TABLE jobs (id int PRIMARY KEY, done_at timestamptz); INSERT INTO jobs SELECT generate_series(1, 4)");
    let mut worker = sh.router();
    let claims: Vec<String> = must(&mut worker, "SELECT DISTINCT claim::text FROM exactly.claim_batch('jobs', 'done_at', 2)")
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    assert_eq!(claims.len(), SHARDS, "one claim per shard: {claims:?}");
    // shard 0: a NULL claim id also reads as shard 0, and must not be taken for this one
    let on_0 = claims.iter().find(|c| c.starts_with("0000")).unwrap().clone();
    sh.shards[0].stop_fast();
    let r = raw(
        &mut worker,
        &format!("SELECT count(*) FROM exactly.claim_batch('jobs', 'done_at', 2, '200 milliseconds', complete => '{on_0}')"),
    );
    assert_eq!(r.as_ref().map_err(state).err().as_deref(), Some("08006"), "{r:?}");
    // what shards 1-3 claimed in that failed call comes back after its lease; then, without
    // a claim to complete, their rows come (shard 0 skipped with a WARNING)
    sleep_ms(400);
    let rest = int(&mut worker, "SELECT count(*) FROM exactly.claim_batch('jobs', 'done_at', 2)");
    assert_eq!(rest, 2 * (SHARDS as i64 - 1), "the second half of the jobs on shards 1-3");
    sh.shards[0].start_server();
}
