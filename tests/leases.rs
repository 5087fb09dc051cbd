//! Leases with fencing tokens and slots (docs/coordination.md, "Leases with fencing tokens"
//! and "Slots"), tested from the contract alone, as an outsider:
//!
//! - 16 connections fight over one lease for 10 s (ttl 200 ms to 1 s; quick, diligent,
//!   sloppy, stalling and abandoning holders, fenced writes to a shared row): never two live
//!   holders, fences 1, 2, 3... in grant order, a fenced write refused (55006) exactly when
//!   a newer grant exists, no write lands after a newer fence's, no grant while an accepted
//!   fenced write is open;
//! - a holder killed (pg_terminate_backend mid fenced write; kill -9 of the server): the
//!   lease (and a slot) ends at its ttl, not before, and its fence is then refused;
//! - an open fenced write (also from a released savepoint) holds up the next grant; from an
//!   old REPEATABLE READ / SERIALIZABLE snapshot check_fence fails with 40001, then 55006;
//! - fences have no gaps after rolled-back and cancelled acquires; times are the clock at
//!   the call, not the transaction's start; old snapshots never grant past a live holder
//!   (acquire_slot refuses those levels: 0A000);
//! - leases through a transaction-pooling PgBouncer (2 server connections, more clients);
//! - 16 contenders for 3 slots: never more than 3 (client-side intervals and a sampler),
//!   NULL only when 3 can be held, every contender served; callers served in arrival order;
//! - hostile objects on the search_path, an application role writing the state tables
//!   directly, a role without usage, and extreme arguments.
//!
//! Every timing check records client-side windows (the start and the end of each call, on
//! one monotonic clock shared by all threads) and only calls something a fault when it is
//! certain whatever the server did inside those windows: a lease granted during `[s, e]`
//! with `ttl` is live at least until `s + ttl` and at most until `e + ttl`, etc. Each test
//! also fails if its own server logged a crashed backend.
//!
//! Each scenario also runs against a naive twin made of plain SQL in the same cluster, which
//! the same checks must catch (tests `twin_*`): schema `naive` (a lease table with
//! check-then-update, a fence check that reads without locking, a count-then-insert
//! semaphore, no argument checks, no pinned search_path, tables granted to the
//! application), `naive_now` (the same on `now()`), `naive_seq` (locked leases with fences
//! from a sequence) and `sess` (leases on session advisory locks); and, for test 1, the
//! real acquire_lease with the fence check left out or replaced by a plain read.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hostile;
use common::text::{describe, raw, Rows};
use common::{at_once, at_once_through, Client, Cluster, NoTls, PgBouncer, XorShift};

// ---------------------------------------------------------------------------------------
// small helpers: everything through the simple query protocol (it must also pass a
// transaction-pooling PgBouncer), values as text
// ---------------------------------------------------------------------------------------

/// Slack for comparing the client's clock with the server's (both read the same machine
/// clock, one monotonic, one real-time): microseconds.
const TOL: u64 = 3_000;

/// Microseconds since `t0`.
fn us(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

fn ms(t: u64) -> String {
    format!("{:.1}ms", t as f64 / 1000.0)
}

fn sleep_ms(n: u64) {
    std::thread::sleep(Duration::from_millis(n))
}

/// A SQL string literal (standard_conforming_strings is on).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn state(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("(no SQLSTATE: {e})"))
}

fn between(rng: &mut XorShift, lo: u64, hi: u64) -> u64 {
    lo + rng.next() % (hi - lo + 1)
}

/// The first column of the first row, if any (None for no row or a NULL).
fn first(rows: &Rows) -> Option<String> {
    rows.first().and_then(|r| r.first().cloned().flatten())
}

fn value(c: &mut Client, sql: &str) -> Result<Option<String>, postgres::Error> {
    raw(c, sql).map(|rows| first(&rows))
}

fn boolean(c: &mut Client, sql: &str) -> Result<bool, postgres::Error> {
    match value(c, sql)?.as_deref() {
        Some("t") => Ok(true),
        Some("f") => Ok(false),
        other => panic!("`{sql}` returned {other:?}, expected a boolean"),
    }
}

fn int(c: &mut Client, sql: &str) -> i64 {
    value(c, sql)
        .unwrap_or_else(|e| panic!("`{sql}`: {}", describe(&e)))
        .unwrap_or_else(|| panic!("`{sql}` returned NULL or no row"))
        .parse()
        .unwrap()
}

fn backend_pid(c: &mut Client) -> i32 {
    int(c, "SELECT pg_catalog.pg_backend_pid()") as i32
}

/// Which implementation a scenario runs against: pg_exactly's, or a naive twin's, all with
/// the same signatures and the same state-table columns.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Api(&'static str);

const EXACTLY: Api = Api("exactly");
/// Plain SQL: check-then-update lease table, fence read without a lock, count-then-insert.
const NAIVE: Api = Api("naive");
/// Leases as session advisory locks (what seed 003 did, stretched across transactions).
const SESS: Api = Api("sess");

impl Api {
    fn acquire_sql(self, name: &str, ttl: &str) -> String {
        format!(
            "SELECT token, fence FROM {}.acquire_lease({}, {})",
            self.0,
            lit(name),
            lit(ttl)
        )
    }

    fn renew_sql(self, name: &str, token: &str, ttl: &str) -> String {
        format!(
            "SELECT {}.renew_lease({}, {}, {})",
            self.0,
            lit(name),
            lit(token),
            lit(ttl)
        )
    }

    fn release_sql(self, name: &str, token: &str) -> String {
        format!("SELECT {}.release_lease({}, {})", self.0, lit(name), lit(token))
    }

    fn check_fence_sql(self, name: &str, fence: i64) -> String {
        format!("SELECT {}.check_fence({}, {fence})", self.0, lit(name))
    }

    fn acquire_slot_sql(self, name: &str, slots: i64, ttl: &str) -> String {
        format!(
            "SELECT {}.acquire_slot({}, {slots}, {})",
            self.0,
            lit(name),
            lit(ttl)
        )
    }

    fn renew_slot_sql(self, name: &str, token: &str, ttl: &str) -> String {
        format!(
            "SELECT {}.renew_slot({}, {}, {})",
            self.0,
            lit(name),
            lit(token),
            lit(ttl)
        )
    }

    fn release_slot_sql(self, name: &str, token: &str) -> String {
        format!("SELECT {}.release_slot({}, {})", self.0, lit(name), lit(token))
    }
}

/// `acquire_lease`: Some((token, fence)) when granted, None for no row.
fn acquire(
    c: &mut Client,
    api: Api,
    name: &str,
    ttl: &str,
) -> Result<Option<(String, i64)>, postgres::Error> {
    let rows = raw(c, &api.acquire_sql(name, ttl))?;
    assert!(rows.len() <= 1, "acquire_lease returned {} rows: {rows:?}", rows.len());
    Ok(rows.first().map(|r| {
        (
            r[0].clone().expect("a granted lease has a token"),
            r[1].as_deref().expect("a granted lease has a fence").parse().unwrap(),
        )
    }))
}

fn ms_ttl(n: u64) -> String {
    format!("{n} milliseconds")
}

/// The user tables the fenced writes go to, and the two naive twins.
fn prepare(cluster: &Cluster) -> Client {
    let mut admin = cluster.connect();
    admin
        .batch_execute(
            "CREATE TABLE guarded (id int PRIMARY KEY, last_fence bigint NOT NULL,
                                   last_worker int NOT NULL, writes bigint NOT NULL);
             INSERT INTO guarded VALUES (1, 0, -1, 0);
             CREATE TABLE write_log (id bigserial PRIMARY KEY, fence bigint NOT NULL, worker int NOT NULL);",
        )
        .unwrap();
    admin.batch_execute(NAIVE_SCHEMA).unwrap();
    admin.batch_execute(SESS_SCHEMA).unwrap();
    admin.batch_execute(NAIVE_SEQ_SCHEMA).unwrap();
    admin
        .batch_execute(
            &NAIVE_SCHEMA
                .replace("CREATE SCHEMA naive;", "CREATE SCHEMA naive_now;")
                .replace("naive.", "naive_now.")
                .replace("clock_timestamp()", "now()"),
        )
        .unwrap();
    admin
}

/// The naive twin with the transaction's start time (`now()`) for its clock.
const NAIVE_NOW: Api = Api("naive_now");
/// Leases under a lock, done right but for one thing: fences drawn from a sequence.
const NAIVE_SEQ: Api = Api("naive_seq");

const NAIVE_SEQ_SCHEMA: &str = r#"
CREATE SCHEMA naive_seq;
CREATE SEQUENCE naive_seq.fences;
CREATE TABLE naive_seq.leases (name text PRIMARY KEY, token uuid NOT NULL, fence bigint NOT NULL,
                               granted_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
CREATE FUNCTION naive_seq.acquire_lease(lease_name text, ttl interval)
RETURNS TABLE (token uuid, fence bigint) LANGUAGE plpgsql AS $f$
#variable_conflict use_column
DECLARE cur naive_seq.leases;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext(lease_name));
  SELECT * INTO cur FROM naive_seq.leases l WHERE l.name = lease_name;
  IF FOUND AND cur.expires_at > clock_timestamp() THEN RETURN; END IF;
  token := gen_random_uuid();
  fence := nextval('naive_seq.fences');
  INSERT INTO naive_seq.leases AS l VALUES (lease_name, token, fence, clock_timestamp(), clock_timestamp() + ttl)
  ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = excluded.fence,
                                   granted_at = excluded.granted_at, expires_at = excluded.expires_at;
  RETURN NEXT;
END $f$;
CREATE FUNCTION naive_seq.check_fence(lease_name text, lease_fence bigint)
RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext(lease_name));
  IF NOT EXISTS (SELECT 1 FROM naive_seq.leases l WHERE l.name = lease_name AND l.fence = lease_fence) THEN
    RAISE EXCEPTION 'stale fence %', lease_fence USING ERRCODE = '55006';
  END IF;
END $f$;
"#;

/// The naive twin, as an application might write it: check, then update; a fence check
/// that reads the current fence without locking anything; a semaphore that counts, then
/// inserts; no argument checks; unqualified names resolved through the caller's search_path;
/// its tables writable by the application.
const NAIVE_SCHEMA: &str = r#"
CREATE SCHEMA naive;
CREATE TABLE naive.leases (name text PRIMARY KEY, token uuid NOT NULL, fence bigint NOT NULL,
                           granted_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE naive.slots (name text NOT NULL, token uuid PRIMARY KEY,
                          acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL);
CREATE FUNCTION naive.acquire_lease(lease_name text, ttl interval)
RETURNS TABLE (token uuid, fence bigint) LANGUAGE plpgsql AS $f$
#variable_conflict use_column
DECLARE cur naive.leases;
BEGIN
  SELECT * INTO cur FROM naive.leases l WHERE l.name = lease_name;
  IF FOUND AND cur.expires_at > clock_timestamp() THEN RETURN; END IF;
  token := gen_random_uuid();
  INSERT INTO naive.leases AS l VALUES (lease_name, token, 1, clock_timestamp(), clock_timestamp() + ttl)
  ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = l.fence + 1,
                                   granted_at = excluded.granted_at, expires_at = excluded.expires_at
  RETURNING l.fence INTO fence;
  RETURN NEXT;
END $f$;
CREATE FUNCTION naive.renew_lease(lease_name text, lease_token uuid, ttl interval)
RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  UPDATE naive.leases l SET expires_at = clock_timestamp() + ttl
   WHERE l.name = lease_name AND l.token = lease_token AND l.expires_at > clock_timestamp();
  RETURN FOUND;
END $f$;
CREATE FUNCTION naive.release_lease(lease_name text, lease_token uuid)
RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  UPDATE naive.leases l SET expires_at = clock_timestamp()
   WHERE l.name = lease_name AND l.token = lease_token AND l.expires_at > clock_timestamp();
  RETURN FOUND;
END $f$;
CREATE FUNCTION naive.check_fence(lease_name text, lease_fence bigint)
RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM naive.leases l WHERE l.name = lease_name AND l.fence = lease_fence) THEN
    RAISE EXCEPTION 'stale fence %', lease_fence USING ERRCODE = '55006';
  END IF;
END $f$;
CREATE FUNCTION naive.acquire_slot(slot_name text, slots int, ttl interval)
RETURNS uuid LANGUAGE plpgsql AS $f$
DECLARE t uuid;
BEGIN
  IF (SELECT count(*) FROM naive.slots s WHERE s.name = slot_name AND s.expires_at > clock_timestamp()) >= slots THEN
    RETURN NULL;
  END IF;
  t := gen_random_uuid();
  INSERT INTO naive.slots VALUES (slot_name, t, clock_timestamp(), clock_timestamp() + ttl);
  RETURN t;
END $f$;
CREATE FUNCTION naive.renew_slot(slot_name text, slot_token uuid, ttl interval)
RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  UPDATE naive.slots s SET expires_at = clock_timestamp() + ttl
   WHERE s.name = slot_name AND s.token = slot_token AND s.expires_at > clock_timestamp();
  RETURN FOUND;
END $f$;
CREATE FUNCTION naive.release_slot(slot_name text, slot_token uuid)
RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  DELETE FROM naive.slots s WHERE s.name = slot_name AND s.token = slot_token AND s.expires_at > clock_timestamp();
  RETURN FOUND;
END $f$;
"#;

/// Leases on session advisory locks: the lease is the server session's, not the token's.
const SESS_SCHEMA: &str = r#"
CREATE SCHEMA sess;
CREATE TABLE sess.leases (name text PRIMARY KEY, token uuid NOT NULL, fence bigint NOT NULL);
CREATE FUNCTION sess.key(lease_name text) RETURNS bigint LANGUAGE sql IMMUTABLE
  AS $f$ SELECT hashtext(lease_name)::bigint & 2147483647 $f$;
CREATE FUNCTION sess.holds(lease_name text) RETURNS boolean LANGUAGE sql
  AS $f$ SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                         AND granted AND classid = 0 AND objid = sess.key(lease_name)::oid AND objsubid = 1) $f$;
CREATE FUNCTION sess.acquire_lease(lease_name text, ttl interval)
RETURNS TABLE (token uuid, fence bigint) LANGUAGE plpgsql AS $f$
#variable_conflict use_column
BEGIN
  IF sess.holds(lease_name) OR NOT pg_try_advisory_lock(sess.key(lease_name)) THEN RETURN; END IF;
  token := gen_random_uuid();
  INSERT INTO sess.leases AS l VALUES (lease_name, token, 1)
  ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = l.fence + 1
  RETURNING l.fence INTO fence;
  RETURN NEXT;
END $f$;
CREATE FUNCTION sess.renew_lease(lease_name text, lease_token uuid, ttl interval)
RETURNS boolean LANGUAGE sql AS $f$
  SELECT sess.holds(lease_name)
     AND EXISTS (SELECT 1 FROM sess.leases l WHERE l.name = lease_name AND l.token = lease_token) $f$;
CREATE FUNCTION sess.release_lease(lease_name text, lease_token uuid)
RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF sess.renew_lease(lease_name, lease_token, '0') THEN
    RETURN pg_advisory_unlock(sess.key(lease_name));
  END IF;
  RETURN false;
END $f$;
CREATE FUNCTION sess.check_fence(lease_name text, lease_fence bigint)
RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM sess.leases l WHERE l.name = lease_name AND l.fence = lease_fence) THEN
    RAISE EXCEPTION 'stale fence %', lease_fence USING ERRCODE = '55006';
  END IF;
END $f$;
"#;

/// A fault found by a check: (kind, what happened). Twins assert on the kind.
type Faults = Vec<(&'static str, String)>;

fn kinds(faults: &Faults) -> Vec<&'static str> {
    let mut kinds: Vec<_> = faults.iter().map(|(k, _)| *k).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

fn report(faults: &Faults) -> String {
    let mut by_kind: HashMap<&str, Vec<&String>> = HashMap::new();
    for (k, f) in faults {
        by_kind.entry(k).or_default().push(f);
    }
    let mut out = format!("{} fault(s)", faults.len());
    let mut keys: Vec<_> = by_kind.keys().copied().collect();
    keys.sort();
    for k in keys {
        let list = &by_kind[k];
        out += &format!("\n[{k}] {} fault(s), first ones:", list.len());
        for f in list.iter().take(8) {
            out += &format!("\n  {f}");
        }
    }
    out
}

fn assert_no_faults(faults: &Faults) {
    assert!(faults.is_empty(), "{}", report(faults));
}

/// Backends that crashed (and PANICs) in the cluster's server log so far, each with the
/// statement it was running: a crash restarts every backend, which the other checks would
/// only see as broken connections.
fn server_crashes(cluster: &Cluster) -> Vec<String> {
    let log = cluster.server_log();
    let lines: Vec<&str> = log.lines().collect();
    let mut crashes = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("terminated by signal") || line.contains("PANIC:") || line.contains("TRAP:") {
            let detail = lines.get(i + 1).filter(|l| l.contains("DETAIL:")).copied().unwrap_or("");
            crashes.push(format!("{line}\n      {detail}"));
        }
    }
    crashes
}

/// No backend of the test's own cluster crashed (a kill -9 the test did itself is not in
/// the log as a crash: the postmaster dies with it).
fn assert_no_crash(cluster: &Cluster) {
    let crashes = server_crashes(cluster);
    assert!(crashes.is_empty(), "the server crashed {} time(s):\n{}", crashes.len(), crashes.join("\n"));
}

// ---------------------------------------------------------------------------------------
// the lease workload: grants, renewals, releases, fenced writes, all with their windows
// ---------------------------------------------------------------------------------------

/// What guards a write made under a lease.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Guard {
    /// `SELECT <api>.check_fence(name, fence)` first, in the write's transaction.
    CheckFence,
    /// Nothing: the holder trusts its lease.
    Nothing,
    /// `SELECT fence FROM exactly.leases WHERE name = ...` compared in the client.
    NaiveRead,
}

#[derive(Debug)]
enum Outcome {
    /// Committed; `prev` is the fence the guarded row held when this write locked it.
    Accepted { prev: i64 },
    /// Refused by the guard (55006, or the naive comparison).
    Refused,
    Failed(String),
}

#[derive(Debug)]
struct Write {
    worker: usize,
    fence: i64,
    check: (u64, u64),
    commit: (u64, u64),
    outcome: Outcome,
}

/// One grant of a lease (or one slot), with everything its holder did with it.
#[derive(Debug, Default, Clone)]
struct Grant {
    worker: usize,
    token: String,
    fence: i64,
    mode: &'static str,
    /// microseconds
    ttl: u64,
    acq: (u64, u64),
    /// (start, end, result); every renewal asks for the grant's own ttl again
    renews: Vec<(u64, u64, bool)>,
    release: Option<(u64, u64, bool)>,
}

impl Grant {
    /// Live at least until then, whatever the server did inside the calls' windows.
    fn certain_end(&self) -> u64 {
        if let Some((rs, _, true)) = self.release {
            return rs;
        }
        self.renews
            .iter()
            .filter(|r| r.2)
            .map(|r| r.0 + self.ttl)
            .fold(self.acq.0 + self.ttl, u64::max)
    }

    /// Ended by then at the latest.
    fn upper_end(&self) -> u64 {
        if let Some((_, re, true)) = self.release {
            return re;
        }
        self.renews
            .iter()
            .filter(|r| r.2)
            .map(|r| r.1 + self.ttl)
            .fold(self.acq.1 + self.ttl, u64::max)
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}, worker {}, ttl {}, acquired [{}, {}], renewals {:?}, release {:?})",
            if self.fence == 0 { "slot".to_string() } else { format!("fence {}", self.fence) },
            self.mode,
            self.worker,
            ms(self.ttl),
            ms(self.acq.0),
            ms(self.acq.1),
            self.renews.iter().map(|r| (ms(r.0), ms(r.1), r.2)).collect::<Vec<_>>(),
            self.release.map(|r| (ms(r.0), ms(r.1), r.2)),
        )
    }
}

/// Renewals and the release must agree with the grant's own history: true only while the
/// lease can still be live, false only when it can have ended.
fn check_renewals(g: &Grant, faults: &mut Faults) {
    let mut certain = g.acq.0 + g.ttl;
    let mut upper = g.acq.1 + g.ttl;
    let mut ended = false;
    for &(rs, re, ok) in &g.renews {
        if ok {
            if ended || rs > upper + TOL {
                faults.push((
                    "renew",
                    format!(
                        "renew at [{}, {}] returned true after the lease had ended (by {}): {}",
                        ms(rs),
                        ms(re),
                        ms(upper),
                        g.describe()
                    ),
                ));
            }
            certain = certain.max(rs + g.ttl);
            upper = upper.max(re + g.ttl);
        } else {
            if !ended && re + TOL < certain {
                faults.push((
                    "renew",
                    format!(
                        "renew at [{}, {}] returned false while the lease was live until at least {}: {}",
                        ms(rs),
                        ms(re),
                        ms(certain),
                        g.describe()
                    ),
                ));
            }
            ended = true;
        }
    }
    if let Some((rs, re, ok)) = g.release {
        if ok && (ended || rs > upper + TOL) {
            faults.push((
                "release",
                format!(
                    "release at [{}, {}] returned true after the lease had ended (by {}): {}",
                    ms(rs),
                    ms(re),
                    ms(upper),
                    g.describe()
                ),
            ));
        }
        if !ok && !ended && re + TOL < certain {
            faults.push((
                "release",
                format!(
                    "release at [{}, {}] returned false while the lease was live until at least {}: {}",
                    ms(rs),
                    ms(re),
                    ms(certain),
                    g.describe()
                ),
            ));
        }
    }
}

#[derive(Clone, Copy)]
struct LeaseRun {
    api: Api,
    guard: Guard,
    name: &'static str,
    secs: u64,
    /// counts the grants of the run: the behaviours take turns, so each shows up
    turns: &'static AtomicUsize,
}

impl LeaseRun {
    fn new(api: Api, guard: Guard, name: &'static str, secs: u64) -> LeaseRun {
        LeaseRun { api, guard, name, secs, turns: Box::leak(Box::new(AtomicUsize::new(0))) }
    }
}

/// The behaviours, in the order a run's grants take them.
const BEHAVIOURS: &[&str] = &[
    "diligent",
    "stalls in its transaction",
    "quick",
    "sloppy",
    "staller",
    "quick",
    "diligent",
    "abandoner",
    "quick",
    "sloppy",
    "stalls in its transaction",
    "staller",
];

#[derive(Default)]
struct LeaseLog {
    grants: Vec<Grant>,
    /// acquire_lease calls that returned no row
    refusals: Vec<(u64, u64)>,
    writes: Vec<Write>,
    errors: Vec<String>,
}

/// A holder of one grant, doing its work.
struct Holder<'a> {
    c: &'a mut Client,
    run: LeaseRun,
    t0: Instant,
    g: Grant,
    log: &'a mut LeaseLog,
}

impl Holder<'_> {
    /// A guarded write: BEGIN; guard; (the work: `pause_ms`); read the guarded row FOR UPDATE
    /// and record the fence it holds; write our fence; log; COMMIT. True when accepted.
    fn write(&mut self, pause_ms: u64) -> bool {
        let w = fenced_write(
            self.c,
            self.run.api,
            self.run.guard,
            self.run.name,
            self.g.fence,
            self.g.worker,
            pause_ms,
            self.t0,
        );
        let accepted = matches!(w.outcome, Outcome::Accepted { .. });
        self.log.writes.push(w);
        accepted
    }

    fn renew(&mut self) -> bool {
        let s = us(self.t0);
        let ttl = ms_ttl(self.g.ttl / 1000);
        match boolean(self.c, &self.run.api.renew_sql(self.run.name, &self.g.token, &ttl)) {
            Ok(ok) => {
                self.g.renews.push((s, us(self.t0), ok));
                ok
            }
            Err(e) => {
                self.log
                    .errors
                    .push(format!("worker {}: renew_lease: {}", self.g.worker, describe(&e)));
                false
            }
        }
    }

    fn release(&mut self) {
        let s = us(self.t0);
        match boolean(self.c, &self.run.api.release_sql(self.run.name, &self.g.token)) {
            Ok(ok) => self.g.release = Some((s, us(self.t0), ok)),
            Err(e) => self
                .log
                .errors
                .push(format!("worker {}: release_lease: {}", self.g.worker, describe(&e))),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fenced_write(
    c: &mut Client,
    api: Api,
    guard: Guard,
    name: &str,
    fence: i64,
    worker: usize,
    pause_ms: u64,
    t0: Instant,
) -> Write {
    let mut w = Write { worker, fence, check: (0, 0), commit: (0, 0), outcome: Outcome::Refused };
    if let Err(e) = raw(c, "BEGIN") {
        w.outcome = Outcome::Failed(format!("BEGIN: {}", describe(&e)));
        return w;
    }
    w.check.0 = us(t0);
    let checked: Result<bool, postgres::Error> = match guard {
        Guard::CheckFence => raw(c, &api.check_fence_sql(name, fence)).map(|_| true),
        Guard::Nothing => Ok(true),
        Guard::NaiveRead => value(
            c,
            &format!("SELECT fence FROM {}.leases WHERE name = {}", api.0, lit(name)),
        )
        .map(|v| v.and_then(|v| v.parse::<i64>().ok()) == Some(fence)),
    };
    w.check.1 = us(t0);
    match checked {
        Ok(true) => {}
        Ok(false) => {
            let _ = raw(c, "ROLLBACK");
            return w;
        }
        Err(e) => {
            let _ = raw(c, "ROLLBACK");
            if state(&e) != "55006" {
                w.outcome = Outcome::Failed(format!("check_fence: {}", describe(&e)));
            }
            return w;
        }
    }
    sleep_ms(pause_ms);
    let wrote = (|| -> Result<i64, postgres::Error> {
        let prev = value(c, "SELECT last_fence FROM guarded WHERE id = 1 FOR UPDATE")?
            .unwrap()
            .parse()
            .unwrap();
        raw(
            c,
            &format!(
                "UPDATE guarded SET last_fence = {fence}, last_worker = {worker}, writes = writes + 1 WHERE id = 1;
                 INSERT INTO write_log (fence, worker) VALUES ({fence}, {worker})"
            ),
        )?;
        Ok(prev)
    })();
    match wrote {
        Err(e) => {
            let _ = raw(c, "ROLLBACK");
            w.outcome = Outcome::Failed(format!("the write: {}", describe(&e)));
        }
        Ok(prev) => {
            w.commit.0 = us(t0);
            match raw(c, "COMMIT") {
                Ok(_) => {
                    w.commit.1 = us(t0);
                    w.outcome = Outcome::Accepted { prev };
                }
                Err(e) => w.outcome = Outcome::Failed(format!("COMMIT: {}", describe(&e))),
            }
        }
    }
    w
}

/// One contender: acquire (ttl 200 ms to 1 s) until granted, then one of six behaviours,
/// taking turns across the run: quick (a few ms, released), diligent (writes, renews at half its ttl, releases), sloppy (writes back to back for
/// 0.5 to 1.5 times its ttl without renewing, then releases), stalls in its transaction
/// (checks its fence, then pauses 50 to 250 ms past its ttl before writing), staller
/// (stalls 50 to 250 ms past its ttl, then writes, renews and releases), abandoner (renews
/// once or twice, then walks away and lets the lease run out).
fn lease_worker(i: usize, c: &mut Client, run: LeaseRun, t0: Instant) -> LeaseLog {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let deadline = t0 + Duration::from_secs(run.secs);
    let mut log = LeaseLog::default();
    while Instant::now() < deadline {
        let ttl_ms = between(&mut rng, 200, 1000);
        let s = us(t0);
        let got = acquire(c, run.api, run.name, &ms_ttl(ttl_ms));
        let e = us(t0);
        let (token, fence) = match got {
            Err(err) => {
                log.errors.push(format!("worker {i}: acquire_lease: {}", describe(&err)));
                sleep_ms(10);
                continue;
            }
            Ok(None) => {
                log.refusals.push((s, e));
                sleep_ms(between(&mut rng, 2, 10));
                continue;
            }
            Ok(Some(granted)) => granted,
        };
        let granted = Instant::now();
        let ttl = Duration::from_millis(ttl_ms);
        let mode = BEHAVIOURS[run.turns.fetch_add(1, Ordering::SeqCst) % BEHAVIOURS.len()];
        let g = Grant { worker: i, token, fence, mode, ttl: ttl_ms * 1000, acq: (s, e), ..Default::default() };
        let mut h = Holder { c: &mut *c, run, t0, g, log: &mut log };
        h.write(between(&mut rng, 0, 5));
        match mode {
            "diligent" => {
                let hold = Duration::from_millis(between(&mut rng, 5, 400));
                let mut extended = granted;
                while granted.elapsed() < hold {
                    sleep_ms(between(&mut rng, 5, 30));
                    if extended.elapsed() > ttl / 2 {
                        extended = Instant::now();
                        if !h.renew() {
                            break;
                        }
                    }
                    if !h.write(between(&mut rng, 0, 10)) {
                        break;
                    }
                }
                h.release();
            }
            "quick" => {
                // a few ms: one more write, then give it back
                sleep_ms(between(&mut rng, 1, 10));
                h.write(between(&mut rng, 0, 3));
                h.release();
            }
            "sloppy" => {
                let hold = ttl * between(&mut rng, 50, 150) as u32 / 100;
                while granted.elapsed() < hold {
                    if !h.write(between(&mut rng, 5, 25)) {
                        break;
                    }
                }
                h.release();
            }
            "stalls in its transaction" => {
                // a GC pause between the check and the write: the contract makes the next
                // grant wait for this transaction; a check that locks nothing lets it through
                h.write(ttl_ms + between(&mut rng, 50, 250));
                h.release();
            }
            "staller" => {
                sleep_ms(ttl_ms + between(&mut rng, 50, 250));
                h.write(between(&mut rng, 0, 5));
                if h.renew() {
                    h.write(between(&mut rng, 0, 5));
                }
                h.release();
            }
            _ => {
                // abandoner: renews once or twice, then walks away; the lease runs out
                for _ in 0..between(&mut rng, 1, 2) {
                    sleep_ms(between(&mut rng, 10, ttl_ms / 2));
                    if !h.renew() {
                        break;
                    }
                    h.write(between(&mut rng, 0, 5));
                }
            }
        }
        let g = h.g;
        log.grants.push(g);
        sleep_ms(between(&mut rng, 0, 20));
    }
    log
}

/// Every check on a lease run. `exact_fences`: the fences must be 1, 2, 3... (a fresh name).
fn check_lease_run(logs: &[LeaseLog], client: &mut Client, exact_fences: bool) -> Faults {
    let mut faults = Faults::new();
    for log in logs {
        for e in &log.errors {
            faults.push(("error", e.clone()));
        }
    }
    let mut grants: Vec<&Grant> = logs.iter().flat_map(|l| l.grants.iter()).collect();
    grants.sort_by_key(|g| g.fence);
    // fences: one per grant, growing by one per grant, in the order of the grants
    for pair in grants.windows(2) {
        if pair[0].fence == pair[1].fence {
            faults.push((
                "fence",
                format!("fence granted twice: {} and {}", pair[0].describe(), pair[1].describe()),
            ));
        } else if pair[1].acq.1 + TOL < pair[0].acq.0 {
            faults.push((
                "fence",
                format!(
                    "a higher fence was granted before a lower one: {} then {}",
                    pair[1].describe(),
                    pair[0].describe()
                ),
            ));
        }
    }
    if exact_fences {
        let fences: Vec<i64> = grants.iter().map(|g| g.fence).collect();
        let expected: Vec<i64> = (1..=grants.len() as i64).collect();
        if fences != expected {
            faults.push((
                "fence",
                format!(
                    "the {} grants' fences are not 1..={}: first differences {:?}",
                    grants.len(),
                    grants.len(),
                    fences
                        .iter()
                        .zip(&expected)
                        .filter(|(a, b)| a != b)
                        .take(5)
                        .collect::<Vec<_>>()
                ),
            ));
        }
    }
    // the earliest return / start of any grant with a higher fence than grants[k]
    let n = grants.len();
    let mut later_end = vec![u64::MAX; n + 1];
    let mut later_start = vec![u64::MAX; n + 1];
    for k in (0..n).rev() {
        later_end[k] = later_end[k + 1].min(grants[k].acq.1);
        later_start[k] = later_start[k + 1].min(grants[k].acq.0);
    }
    let above = |fence: i64| grants.partition_point(|g| g.fence <= fence);
    // one live holder at a time
    for (k, g) in grants.iter().enumerate() {
        let next = later_end[k + 1];
        if next != u64::MAX && next + TOL < g.certain_end() {
            let other = grants[k + 1..].iter().min_by_key(|o| o.acq.1).unwrap();
            faults.push((
                "overlap",
                format!(
                    "two live holders: {} was granted (returned at {}) while {} was live until at least {}",
                    other.describe(),
                    ms(next),
                    g.describe(),
                    ms(g.certain_end())
                ),
            ));
        }
        check_renewals(g, &mut faults);
    }
    // acquire_lease returns no row only while some lease can be live
    let mut by_start = grants.clone();
    by_start.sort_by_key(|g| g.acq.0);
    for log in logs {
        for &(s, e) in &log.refusals {
            let live = by_start
                .iter()
                .take_while(|g| g.acq.0 <= e + TOL)
                .any(|g| g.upper_end() + TOL >= s);
            if !live {
                faults.push((
                    "acquire",
                    format!("acquire_lease at [{}, {}] returned no row while no lease could be live", ms(s), ms(e)),
                ));
            }
        }
    }
    // fenced writes
    let mut accepted = 0;
    for log in logs {
        for w in &log.writes {
            let k = above(w.fence);
            match &w.outcome {
                Outcome::Accepted { prev } => {
                    accepted += 1;
                    if *prev > w.fence {
                        faults.push((
                            "order",
                            format!(
                                "worker {}'s write under fence {} (checked [{}, {}], committed [{}, {}]) landed after fence {} had written",
                                w.worker, w.fence, ms(w.check.0), ms(w.check.1), ms(w.commit.0), ms(w.commit.1), prev
                            ),
                        ));
                    }
                    if later_end[k] != u64::MAX && later_end[k] + TOL < w.commit.0 {
                        let newer = grants[k..].iter().min_by_key(|o| o.acq.1).unwrap();
                        faults.push((
                            "stale",
                            format!(
                                "worker {}'s write under fence {} (checked [{}, {}]) was still open (COMMIT sent at {}) when {} had been granted (returned at {})",
                                w.worker, w.fence, ms(w.check.0), ms(w.check.1), ms(w.commit.0), newer.describe(), ms(later_end[k])
                            ),
                        ));
                    }
                }
                Outcome::Refused => {
                    if later_start[k] == u64::MAX || later_start[k] > w.check.1 + TOL {
                        faults.push((
                            "refusal",
                            format!(
                                "worker {}'s write under fence {} checked at [{}, {}] was refused, but no newer grant had been asked for by then",
                                w.worker, w.fence, ms(w.check.0), ms(w.check.1)
                            ),
                        ));
                    }
                }
                Outcome::Failed(e) => faults.push((
                    "error",
                    format!("worker {}'s write under fence {}: {e}", w.worker, w.fence),
                )),
            }
        }
    }
    // the writes' own record, in the order they locked the guarded row
    let logged: Vec<i64> = match raw(client, "SELECT fence FROM write_log ORDER BY id") {
        Ok(rows) => rows.iter().map(|r| r[0].as_deref().unwrap().parse().unwrap()).collect(),
        Err(e) => {
            faults.push(("error", format!("reading the write log after the run: {}", describe(&e))));
            return faults;
        }
    };
    if logged.len() != accepted {
        faults.push((
            "order",
            format!("{} writes acknowledged, {} in the table", accepted, logged.len()),
        ));
    }
    let backwards = logged.windows(2).filter(|p| p[1] < p[0]).count();
    if backwards > 0 {
        faults.push((
            "order",
            format!("the write log goes back to a lower fence {backwards} time(s)"),
        ));
    }
    faults
}

struct LeaseStats {
    grants: usize,
    accepted: usize,
    refused: usize,
    stallers: usize,
    tx_stallers: usize,
    refusals: usize,
    /// grants whose acquire_lease call took over 50 ms (it waited for an open fenced write)
    held_up: usize,
}

fn lease_stats(logs: &[LeaseLog]) -> LeaseStats {
    let writes = || logs.iter().flat_map(|l| l.writes.iter());
    LeaseStats {
        grants: logs.iter().map(|l| l.grants.len()).sum(),
        accepted: writes().filter(|w| matches!(w.outcome, Outcome::Accepted { .. })).count(),
        refused: writes().filter(|w| matches!(w.outcome, Outcome::Refused)).count(),
        stallers: logs
            .iter()
            .flat_map(|l| l.grants.iter())
            .filter(|g| g.mode == "staller")
            .count(),
        tx_stallers: logs
            .iter()
            .flat_map(|l| l.grants.iter())
            .filter(|g| g.mode == "stalls in its transaction")
            .count(),
        refusals: logs.iter().map(|l| l.refusals.len()).sum(),
        held_up: logs
            .iter()
            .flat_map(|l| l.grants.iter())
            .filter(|g| g.acq.1 - g.acq.0 > 50_000)
            .count(),
    }
}

fn contend_for_a_lease(config: postgres::Config, workers: usize, run: LeaseRun) -> Vec<LeaseLog> {
    let t0 = Instant::now() + Duration::from_millis(200); // after every worker has connected
    at_once_through(config, workers, move |i, c| {
        if let Some(wait) = t0.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        lease_worker(i, c, run, t0)
    })
}

// ---------------------------------------------------------------------------------------
// 1. sixteen connections, one lease
// ---------------------------------------------------------------------------------------

/// 16 connections compete for one lease for 10 s with ttls of 200 ms to 1 s, holding it a few
/// to hundreds of ms, renewing, releasing, abandoning it, and stalling past its ttl before a
/// fenced write. Never two live holders; fences 1, 2, 3... in grant order; every fenced write
/// refused (55006) exactly when a newer grant exists; no accepted write under a lower fence
/// than one already written; no newer grant returns while an accepted fenced write is open.
#[test]
fn sixteen_connections_on_one_lease_never_overlap_and_stale_writes_are_refused() {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    let run = LeaseRun::new(EXACTLY, Guard::CheckFence, "third_party_sync", 10);
    let logs = contend_for_a_lease(cluster.config(), 16, run);
    let faults = check_lease_run(&logs, &mut admin, true);
    let stats = lease_stats(&logs);
    eprintln!(
        "{} grants ({} stallers, {} in their transaction, {} held up by an open fenced write), {} accepted writes, {} refused, {} acquires found it held",
        stats.grants, stats.stallers, stats.tx_stallers, stats.held_up, stats.accepted, stats.refused, stats.refusals
    );
    assert_no_crash(&cluster);
    assert_no_faults(&faults);
    assert!(stats.grants >= 15, "only {} grants in 10 s", stats.grants);
    assert!(stats.stallers >= 3, "only {} stallers", stats.stallers);
    assert!(stats.tx_stallers >= 2, "only {} stalls in a fenced transaction", stats.tx_stallers);
    assert!(stats.held_up >= 1, "no grant waited for an open fenced write");
    assert!(stats.accepted >= 50, "only {} accepted writes", stats.accepted);
    assert!(stats.refused >= 3, "only {} stale writes refused", stats.refused);
    assert!(stats.refusals >= 100, "only {} acquires found the lease held", stats.refusals);
    let last: i64 = int(&mut admin, "SELECT fence FROM exactly.leases WHERE name = 'third_party_sync'");
    assert_eq!(last as usize, stats.grants, "exactly.leases holds the last grant's fence");
}

/// The same workload with the fence check replaced by nothing, and by a plain read of
/// `exactly.leases` compared in the client: stale holders' writes land after newer
/// holders' ([order]). On the naive check-then-update lease table: two live holders at
/// once ([overlap]).
#[test]
fn twin_without_a_locking_fence_check_stale_writes_land_out_of_order() {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    // (implementation, guard, lease name, the check that must catch it)
    for (api, guard, name, caught_by) in [
        (EXACTLY, Guard::Nothing, "unguarded", "order"),
        (EXACTLY, Guard::NaiveRead, "read_guarded", "order"),
        // check-then-update grants the lease twice at once
        (NAIVE, Guard::CheckFence, "naive", "overlap"),
    ] {
        admin
            .batch_execute("TRUNCATE write_log; UPDATE guarded SET last_fence = 0, last_worker = -1, writes = 0")
            .unwrap();
        let logs = contend_for_a_lease(cluster.config(), 16, LeaseRun::new(api, guard, name, 4));
        let faults = check_lease_run(&logs, &mut admin, true);
        let stats = lease_stats(&logs);
        eprintln!(
            "twin {api:?} with {guard:?}: {} grants ({} stalled in their transaction), {} accepted writes: {}",
            stats.grants, stats.tx_stallers, stats.accepted, report(&faults)
        );
        assert!(
            kinds(&faults).contains(&caught_by),
            "twin {api:?} with {guard:?} was not caught by [{caught_by}]: {}",
            report(&faults)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. a holder killed mid-lease
// ---------------------------------------------------------------------------------------

/// Poll `acquire_lease(name, '10 s')` every 20 ms until granted or `give_up` (µs since t0);
/// returns (token, fence, window of the granting call, window of the last refused call).
fn poll_until_granted(
    c: &mut Client,
    api: Api,
    name: &str,
    t0: Instant,
    give_up: u64,
) -> Result<(String, i64, (u64, u64)), String> {
    loop {
        let s = us(t0);
        let got = acquire(c, api, name, "10 seconds")
            .map_err(|e| format!("acquire_lease({name}): {}", describe(&e)))?;
        let e = us(t0);
        if let Some((token, fence)) = got {
            return Ok((token, fence, (s, e)));
        }
        if e > give_up {
            return Err(format!("{name}: still not granted at {} (gave up)", ms(e)));
        }
        sleep_ms(20);
    }
}

fn guarded_writes(admin: &mut Client) -> i64 {
    int(admin, "SELECT writes FROM guarded WHERE id = 1")
}

/// After the holder of `(name, token, fence)` is gone and `next` was granted: the old fence
/// is refused, the new one accepted, the old token renews and releases nothing.
fn old_holder_is_fenced_off(
    cluster: &Cluster,
    api: Api,
    name: &str,
    token: &str,
    fence: i64,
) -> Result<(), String> {
    let mut c = cluster.connect();
    raw(&mut c, "BEGIN").unwrap();
    match raw(&mut c, &api.check_fence_sql(name, fence)) {
        Ok(_) => return Err(format!("{name}: check_fence of the dead holder's fence {fence} was accepted after a newer grant")),
        Err(e) if state(&e) == "55006" => {}
        Err(e) => return Err(format!("{name}: check_fence of the old fence: expected 55006, got {}", describe(&e))),
    }
    raw(&mut c, "ROLLBACK").unwrap();
    raw(&mut c, &format!("BEGIN; {}; COMMIT", api.check_fence_sql(name, fence + 1)))
        .map_err(|e| format!("{name}: check_fence of the new fence {}: {}", fence + 1, describe(&e)))?;
    if boolean(&mut c, &api.renew_sql(name, token, "1 second")).map_err(|e| describe(&e))? {
        return Err(format!("{name}: the dead holder's token renewed the lease granted to someone else"));
    }
    if boolean(&mut c, &api.release_sql(name, token)).map_err(|e| describe(&e))? {
        return Err(format!("{name}: the dead holder's token released the lease granted to someone else"));
    }
    Ok(())
}

/// The new grant came after the old lease's ttl (never before `a0 + ttl`) and soon after it
/// (within a second of `a1 + ttl`), with the next fence.
fn granted_at_the_ttl(
    name: &str,
    acquired: (u64, u64),
    ttl_us: u64,
    fence: i64,
    next: (i64, (u64, u64)),
) -> Result<(), String> {
    let (next_fence, (s, e)) = next;
    if e + TOL < acquired.0 + ttl_us {
        return Err(format!(
            "{name}: granted again at [{}, {}], before the dead holder's lease (acquired at [{}, {}], ttl {}) could end",
            ms(s), ms(e), ms(acquired.0), ms(acquired.1), ms(ttl_us)
        ));
    }
    if s > acquired.1 + ttl_us + 1_000_000 {
        return Err(format!(
            "{name}: not granted again until [{}, {}], a second after the lease (acquired at [{}, {}], ttl {}) ended",
            ms(s), ms(e), ms(acquired.0), ms(acquired.1), ms(ttl_us)
        ));
    }
    if next_fence != fence + 1 {
        return Err(format!("{name}: the next grant's fence is {next_fence}, expected {}", fence + 1));
    }
    Ok(())
}

/// A holder whose backend is terminated in the middle of a fenced write: the write is gone,
/// the lease ends at its ttl (2 s), and its fence is refused once the next grant exists.
fn terminated_holder(cluster: &Cluster, admin: &mut Client, api: Api) -> Result<(), String> {
    let t0 = Instant::now();
    let name = "terminated";
    let ttl_us = 2_000_000;
    let mut holder = cluster.connect();
    let a0 = us(t0);
    let (token, fence) = acquire(&mut holder, api, name, "2 seconds")
        .map_err(|e| describe(&e))?
        .ok_or("the first acquire returned no row")?;
    let a1 = us(t0);
    let before = guarded_writes(admin);
    raw(&mut holder, &format!("BEGIN; {}", api.check_fence_sql(name, fence)))
        .map_err(|e| format!("the live holder's fence check: {}", describe(&e)))?;
    raw(&mut holder, &format!("UPDATE guarded SET last_fence = {fence}, writes = writes + 1 WHERE id = 1"))
        .unwrap();
    let pid = backend_pid(&mut holder);
    raw(admin, &format!("SELECT pg_terminate_backend({pid})")).unwrap();
    while int(admin, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")) > 0 {
        sleep_ms(5);
    }
    drop(holder);
    let mut next = cluster.connect();
    let (_, next_fence, window) = poll_until_granted(&mut next, api, name, t0, a1 + ttl_us + 3_000_000)?;
    granted_at_the_ttl(name, (a0, a1), ttl_us, fence, (next_fence, window))?;
    if guarded_writes(admin) != before {
        return Err(format!("{name}: the terminated holder's uncommitted write is there"));
    }
    old_holder_is_fenced_off(cluster, api, name, &token, fence)
}

/// The same with `kill -9` of the whole server (with another connection in the middle of a
/// fenced write under the lease) and a restart: the lease (ttl 6 s) survives the crash,
/// nobody gets it before its ttl, somebody right after, and its fence is then refused.
fn crashed_server(cluster: &Cluster, api: Api) -> Result<(), String> {
    let t0 = Instant::now();
    let name = "crashed";
    let ttl_us = 6_000_000;
    let mut admin = cluster.connect();
    let mut holder = cluster.connect();
    let a0 = us(t0);
    let (token, fence) = acquire(&mut holder, api, name, "6 seconds")
        .map_err(|e| describe(&e))?
        .ok_or("the first acquire returned no row")?;
    let a1 = us(t0);
    let before = guarded_writes(&mut admin);
    // a slot held through the crash as well (the session-lock twin has none)
    let slot = if api == SESS {
        None
    } else {
        value(&mut holder, &api.acquire_slot_sql("crashed slot", 1, "6 seconds")).map_err(|e| describe(&e))?
    };
    let slot_taken = us(t0);
    let mut writer = cluster.connect();
    raw(&mut writer, &format!("BEGIN; {}", api.check_fence_sql(name, fence)))
        .map_err(|e| format!("the live holder's fence check: {}", describe(&e)))?;
    raw(&mut writer, &format!("UPDATE guarded SET last_fence = {fence}, writes = writes + 1 WHERE id = 1"))
        .unwrap();
    cluster.kill9();
    drop((admin, holder, writer));
    cluster.start_server();
    let restarted = us(t0);
    if restarted + 500_000 > a0 + ttl_us {
        panic!("the restart took until {} of a {} lease: nothing left to test", ms(restarted), ms(ttl_us));
    }
    let mut next = cluster.connect();
    if let Some(slot) = &slot {
        if let Some(other) = value(&mut next, &api.acquire_slot_sql("crashed slot", 1, "10 seconds")).map_err(|e| describe(&e))? {
            return Err(format!("the only slot, held through the crash, was granted again at {} (token {other}, holder's {slot})", ms(us(t0))));
        }
    }
    let (_, next_fence, window) = poll_until_granted(&mut next, api, name, t0, a1 + ttl_us + 3_000_000)?;
    granted_at_the_ttl(name, (a0, a1), ttl_us, fence, (next_fence, window))?;
    if let Some(slot) = &slot {
        // by now its ttl has run out
        if let Some(wait) = (slot_taken + ttl_us + TOL).checked_sub(us(t0)) {
            std::thread::sleep(Duration::from_micros(wait));
        }
        if value(&mut next, &api.acquire_slot_sql("crashed slot", 1, "10 seconds")).map_err(|e| describe(&e))?.is_none() {
            return Err(format!("the slot held through the crash was still held at {}, after its ttl", ms(us(t0))));
        }
        if boolean(&mut next, &api.renew_slot_sql("crashed slot", slot, "1 second")).map_err(|e| describe(&e))? {
            return Err("the crashed holder's slot token renewed after its ttl".into());
        }
    }
    if guarded_writes(&mut cluster.connect()) != before {
        return Err(format!("{name}: the uncommitted fenced write survived the crash"));
    }
    old_holder_is_fenced_off(cluster, api, name, &token, fence)
}

/// A holder killed mid-lease, by pg_terminate_backend and by kill -9 of the server.
#[test]
fn a_killed_holders_lease_ends_at_its_ttl_and_its_fence_is_then_refused() {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    let mut faults = Vec::new();
    if let Err(e) = terminated_holder(&cluster, &mut admin, EXACTLY) {
        faults.push(format!("pg_terminate_backend: {e}"));
    }
    drop(admin);
    faults.extend(server_crashes(&cluster).into_iter().map(|c| format!("before the kill -9: {c}")));
    if let Err(e) = crashed_server(&cluster, EXACTLY) {
        faults.push(format!("kill -9: {e}"));
    }
    faults.extend(server_crashes(&cluster).into_iter().map(|c| format!("crash: {c}")));
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

/// The twin on session advisory locks: the lease dies with its holder's session, so the
/// next holder gets it long before the ttl. Both cases are caught.
#[test]
fn twin_a_session_lock_lease_ends_with_its_holder_not_at_its_ttl() {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    let terminated = terminated_holder(&cluster, &mut admin, SESS);
    drop(admin);
    let crashed = crashed_server(&cluster, SESS);
    eprintln!("twin: terminated: {terminated:?}\ntwin: kill -9: {crashed:?}");
    for (what, result) in [("terminated", terminated), ("kill -9", crashed)] {
        let e = result.expect_err(&format!("the session-lock twin passed the {what} case"));
        assert!(e.contains("before the dead holder's lease"), "{what}: caught by another check: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// 3. an open fenced write holds up the next grant
// ---------------------------------------------------------------------------------------

/// Wait until backend `pid` sleeps on a lock; false if it does not within `limit` (the
/// harness's wait_until_blocked, without its panic, so a twin can be caught by it).
fn blocked_within(client: &mut Client, pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let waiting = value(
            client,
            &format!("SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .unwrap();
        if waiting.as_deref() == Some("Lock") {
            return true;
        }
        sleep_ms(5);
    }
    false
}

/// Run `sql` on a connection of its own; returns its backend pid and where its first value
/// (or error) will arrive.
fn query_in_background(cluster: &Cluster, sql: String) -> (i32, mpsc::Receiver<Result<Option<String>, String>>) {
    let mut c = cluster.connect();
    let pid = backend_pid(&mut c);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(value(&mut c, &sql).map_err(|e| describe(&e)));
    });
    (pid, rx)
}

type Acquired = (Result<Option<(String, i64)>, String>, u64, u64);

/// Start `acquire_lease(name, ttl)` on a connection of its own; returns its backend pid and
/// where its result (with the call's window) will arrive.
fn acquire_in_background(cluster: &Cluster, api: Api, name: &'static str, t0: Instant) -> (i32, mpsc::Receiver<Acquired>) {
    let mut c = cluster.connect();
    let pid = backend_pid(&mut c);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let s = us(t0);
        let got = acquire(&mut c, api, name, "10 seconds").map_err(|e| describe(&e));
        let _ = tx.send((got, s, us(t0)));
    });
    (pid, rx)
}

/// A's lease ran out with no newer grant; A's fenced write is accepted (its check run
/// directly, or in a savepoint that is then released), and B's acquire waits until A
/// commits; then B gets fence + 1, and A's fence is refused.
fn open_fenced_write_holds_up_the_next_grant(
    cluster: &Cluster,
    api: Api,
    name: &'static str,
    savepoint: bool,
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut admin = cluster.connect();
    let mut a = cluster.connect();
    let (_, fence) = acquire(&mut a, api, name, "200 milliseconds")
        .map_err(|e| describe(&e))?
        .ok_or("the first acquire returned no row")?;
    sleep_ms(350);
    raw(&mut a, "BEGIN").unwrap();
    if savepoint {
        // as an ORM's nested transaction would: the check in a savepoint, released
        raw(&mut a, "SAVEPOINT guard").unwrap();
    }
    raw(&mut a, &api.check_fence_sql(name, fence)).map_err(|e| {
        format!("check_fence refused a holder whose lease ran out, with no newer grant: {}", describe(&e))
    })?;
    if savepoint {
        raw(&mut a, "RELEASE SAVEPOINT guard").unwrap();
    }
    raw(&mut a, &format!("UPDATE guarded SET last_fence = {fence}, writes = writes + 1 WHERE id = 1")).unwrap();
    let (b_pid, b_result) = acquire_in_background(cluster, api, name, t0);
    if !blocked_within(&mut admin, b_pid, Duration::from_secs(3)) {
        let _ = raw(&mut a, "ROLLBACK");
        return Err(format!(
            "B's acquire_lease did not wait for A's open fenced write: {:?}",
            b_result.recv_timeout(Duration::from_secs(10))
        ));
    }
    sleep_ms(300);
    if let Ok(early) = b_result.try_recv() {
        let _ = raw(&mut a, "ROLLBACK");
        return Err(format!("B's acquire_lease returned while A's fenced write was open: {early:?}"));
    }
    let committing = us(t0);
    raw(&mut a, "COMMIT").map_err(|e| format!("A's COMMIT: {}", describe(&e)))?;
    let (got, _, returned) = b_result
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "B's acquire_lease did not return within 10 s of A's commit".to_string())?;
    let (_, b_fence) = got?.ok_or("B's acquire_lease returned no row after A's lease had run out")?;
    if b_fence != fence + 1 {
        return Err(format!("B got fence {b_fence}, expected {}", fence + 1));
    }
    if returned < committing {
        return Err("B's grant returned before A committed".into());
    }
    if int(&mut admin, "SELECT last_fence FROM guarded WHERE id = 1") != fence {
        return Err("A's write is not there".into());
    }
    raw(&mut admin, &format!("BEGIN; {}; COMMIT", api.check_fence_sql(name, b_fence)))
        .map_err(|e| format!("B's fence check: {}", describe(&e)))?;
    match raw(&mut a, &format!("BEGIN; {}", api.check_fence_sql(name, fence))) {
        Ok(_) => Err("A's fence was accepted after B's grant".into()),
        Err(e) if state(&e) == "55006" => {
            raw(&mut a, "ROLLBACK").unwrap();
            Ok(())
        }
        Err(e) => Err(format!("A's fence after B's grant: expected 55006, got {}", describe(&e))),
    }
}

/// Under REPEATABLE READ and SERIALIZABLE, a check_fence whose snapshot predates the newest
/// grant fails with 40001; retried, it sees the grant and raises 55006.
fn old_snapshot_check_fails_with_40001(cluster: &Cluster, api: Api) -> Result<(), String> {
    let mut faults = Vec::new();
    for (n, level) in ["REPEATABLE READ", "SERIALIZABLE"].into_iter().enumerate() {
        let name: &'static str = ["snapshot_rr", "snapshot_ser"][n];
        let mut a = cluster.connect();
        let mut b = cluster.connect();
        let (_, fence) = acquire(&mut a, api, name, "200 milliseconds")
            .map_err(|e| describe(&e))?
            .ok_or("the first acquire returned no row")?;
        sleep_ms(300);
        raw(&mut a, &format!("BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM guarded")).unwrap();
        let (_, b_fence) = acquire(&mut b, api, name, "10 seconds")
            .map_err(|e| describe(&e))?
            .ok_or("B's acquire returned no row after A's lease had run out")?;
        assert_eq!(b_fence, fence + 1);
        match raw(&mut a, &api.check_fence_sql(name, fence)) {
            Ok(_) => faults.push(format!("{level}: a check_fence from a snapshot before the newer grant was accepted")),
            Err(e) if state(&e) == "40001" => {}
            Err(e) => faults.push(format!("{level}: expected 40001, got {}", describe(&e))),
        }
        raw(&mut a, "ROLLBACK").unwrap();
        raw(&mut a, &format!("BEGIN ISOLATION LEVEL {level}")).unwrap();
        match raw(&mut a, &api.check_fence_sql(name, fence)) {
            Ok(_) => faults.push(format!("{level}: the retried check_fence was accepted")),
            Err(e) if state(&e) == "55006" => {}
            Err(e) => faults.push(format!("{level}: retried: expected 55006, got {}", describe(&e))),
        }
        raw(&mut a, "ROLLBACK").unwrap();
    }
    if faults.is_empty() {
        Ok(())
    } else {
        Err(faults.join("; "))
    }
}

#[test]
fn an_open_fenced_write_makes_the_next_grant_wait() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let waited = open_fenced_write_holds_up_the_next_grant(&cluster, EXACTLY, "held_up", false);
    let in_savepoint = open_fenced_write_holds_up_the_next_grant(&cluster, EXACTLY, "held_up_by_a_savepoint", true);
    let snapshot = old_snapshot_check_fails_with_40001(&cluster, EXACTLY);
    assert_no_crash(&cluster);
    assert!(
        waited.is_ok() && in_savepoint.is_ok() && snapshot.is_ok(),
        "open write: {waited:?}\ncheck in a released savepoint: {in_savepoint:?}\nold snapshot: {snapshot:?}"
    );
}

/// The naive fence check reads without locking: the next grant does not wait for the open
/// write, and an old snapshot accepts a stale fence.
#[test]
fn twin_a_fence_check_without_a_lock_lets_the_next_grant_through() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let waited = open_fenced_write_holds_up_the_next_grant(&cluster, NAIVE, "held_up", false);
    let snapshot = old_snapshot_check_fails_with_40001(&cluster, NAIVE);
    eprintln!("twin: open write: {waited:?}\ntwin: old snapshot: {snapshot:?}");
    let waited = waited.expect_err("the naive twin made the next grant wait");
    assert!(waited.contains("did not wait"), "caught by another check: {waited}");
    let snapshot = snapshot.expect_err("the naive twin refused an old snapshot's check");
    assert!(snapshot.contains("was accepted"), "caught by another check: {snapshot}");
}

/// Fences grow by one with every grant, and only grants: an acquire_lease rolled back with
/// its transaction, or cancelled while it waits for an open fenced write, uses up no fence.
fn fences_have_no_gaps(cluster: &Cluster, api: Api) -> Result<(), String> {
    let name = "gapless";
    let mut admin = cluster.connect();
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    let (_, first) = acquire(&mut a, api, name, "100 milliseconds")
        .map_err(|e| describe(&e))?
        .ok_or("the first acquire returned no row")?;
    sleep_ms(150);
    raw(&mut b, "BEGIN").unwrap();
    let rolled_back = acquire(&mut b, api, name, "10 seconds").map_err(|e| describe(&e))?;
    raw(&mut b, "ROLLBACK").unwrap();
    if rolled_back.as_ref().map(|(_, f)| *f) != Some(first + 1) {
        return Err(format!("the grant after fence {first} (to be rolled back) was {rolled_back:?}"));
    }
    let (_, after_rollback) = acquire(&mut b, api, name, "100 milliseconds")
        .map_err(|e| describe(&e))?
        .ok_or("no row after the rolled-back grant")?;
    if after_rollback != first + 1 {
        return Err(format!(
            "the grant after a rolled-back grant has fence {after_rollback}, expected {} (the rolled-back grant never happened)",
            first + 1
        ));
    }
    sleep_ms(150);
    // an acquire cancelled while it waits for an open fenced write
    raw(&mut a, &format!("BEGIN; {}", api.check_fence_sql(name, after_rollback)))
        .map_err(|e| format!("check_fence of a lease that ran out, no newer grant: {}", describe(&e)))?;
    let (pid, cancelled) = query_in_background(
        cluster,
        format!("SET statement_timeout = '10s'; {}", api.acquire_sql(name, "10 seconds")),
    );
    if !blocked_within(&mut admin, pid, Duration::from_secs(3)) {
        let _ = raw(&mut a, "ROLLBACK");
        return Err(format!("the acquire did not wait for the open fenced write: {:?}", cancelled.recv_timeout(Duration::from_secs(5))));
    }
    raw(&mut admin, &format!("SELECT pg_cancel_backend({pid})")).unwrap();
    match cancelled.recv_timeout(Duration::from_secs(10)) {
        Ok(Err(e)) if e.contains("57014") => {}
        other => {
            let _ = raw(&mut a, "ROLLBACK");
            return Err(format!("the cancelled acquire: {other:?}"));
        }
    }
    raw(&mut a, "COMMIT").unwrap();
    let (_, after_cancel) = acquire(&mut b, api, name, "10 seconds")
        .map_err(|e| describe(&e))?
        .ok_or("no row after the cancelled acquire")?;
    if after_cancel != after_rollback + 1 {
        return Err(format!("the grant after a cancelled acquire has fence {after_cancel}, expected {}", after_rollback + 1));
    }
    Ok(())
}

#[test]
fn fences_have_no_gaps_after_rolled_back_and_cancelled_acquires() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let result = fences_have_no_gaps(&cluster, EXACTLY);
    assert_no_crash(&cluster);
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

/// Fences from a sequence: a rolled-back grant leaves a gap.
#[test]
fn twin_fences_from_a_sequence_have_gaps() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let result = fences_have_no_gaps(&cluster, NAIVE_SEQ);
    eprintln!("twin: {result:?}");
    let e = result.expect_err("the sequence twin has no gaps");
    assert!(e.contains("after a rolled-back grant"), "caught by another check: {e}");
}

/// Times are the server's clock at the call, not the start of the calling transaction: a
/// grant made late in an old transaction lasts its ttl from the call; a lease that ran out
/// after the transaction began has ended for it; a renewal counts from the call; the same
/// for slots.
fn times_are_the_clock_at_the_call(cluster: &Cluster, api: Api) -> Vec<String> {
    let mut faults = Vec::new();
    let mut old = cluster.connect();
    let mut other = cluster.connect();
    let e = |e: postgres::Error| describe(&e);
    // 1. granted late in an old transaction
    raw(&mut old, "BEGIN; SELECT 1").unwrap();
    sleep_ms(1200);
    let granted = acquire(&mut old, api, "clock 1", "1 second");
    let slot = value(&mut old, &api.acquire_slot_sql("clock 1", 1, "1 second"));
    raw(&mut old, "COMMIT").unwrap();
    match (granted, slot) {
        (Ok(Some(_)), Ok(Some(_))) => {
            match acquire(&mut other, api, "clock 1", "1 second") {
                Ok(None) => {}
                got => faults.push(format!("a lease granted for 1 s just now, in a transaction begun 1.2 s before, was granted again: {:?}", got.map_err(e))),
            }
            match value(&mut other, &api.acquire_slot_sql("clock 1", 1, "1 second")) {
                Ok(None) => {}
                got => faults.push(format!("a slot taken for 1 s just now, in a transaction begun 1.2 s before, was taken again: {:?}", got.map_err(e))),
            }
        }
        (granted, slot) => faults.push(format!("in an old transaction: acquire_lease {:?}, acquire_slot {:?}", granted.map_err(e), slot.map_err(e))),
    }
    // 2. ran out after the transaction began
    raw(&mut old, "BEGIN; SELECT 1").unwrap();
    let held = acquire(&mut other, api, "clock 2", "200 milliseconds").map_err(e);
    let held_slot = value(&mut other, &api.acquire_slot_sql("clock 2", 1, "200 milliseconds")).map_err(e);
    sleep_ms(350);
    match acquire(&mut old, api, "clock 2", "1 second") {
        Ok(Some(_)) => {}
        got => faults.push(format!("a lease (acquire: {held:?}) that ran out after the transaction began was not granted in it: {:?}", got.map_err(e))),
    }
    match value(&mut old, &api.acquire_slot_sql("clock 2", 1, "1 second")) {
        Ok(Some(_)) => {}
        got => faults.push(format!("a slot (acquire: {held_slot:?}) that ran out after the transaction began was not free in it: {:?}", got.map_err(e))),
    }
    raw(&mut old, "COMMIT").unwrap();
    // 3. renewed late in an old transaction
    raw(&mut old, "BEGIN; SELECT 1").unwrap();
    let lease = acquire(&mut other, api, "clock 3", "1 second");
    let slot = value(&mut other, &api.acquire_slot_sql("clock 3", 1, "1 second"));
    sleep_ms(700);
    match (lease, slot) {
        (Ok(Some((token, _))), Ok(Some(slot))) => {
            let renewed = boolean(&mut old, &api.renew_sql("clock 3", &token, "2 seconds"));
            let renewed_slot = boolean(&mut old, &api.renew_slot_sql("clock 3", &slot, "2 seconds"));
            raw(&mut old, "COMMIT").unwrap();
            if !matches!((&renewed, &renewed_slot), (Ok(true), Ok(true))) {
                faults.push(format!("renewals of live holders in an old transaction: {:?} {:?}", renewed.map_err(e), renewed_slot.map_err(e)));
            }
            sleep_ms(1500); // 2.2 s after the transaction began, 1.5 s after the renewals of 2 s
            match acquire(&mut other, api, "clock 3", "1 second") {
                Ok(None) => {}
                got => faults.push(format!("a lease renewed for 2 s 1.5 s ago (in a transaction begun 2.2 s ago) was granted again: {:?}", got.map_err(e))),
            }
            match value(&mut other, &api.acquire_slot_sql("clock 3", 1, "1 second")) {
                Ok(None) => {}
                got => faults.push(format!("a slot renewed for 2 s 1.5 s ago (in a transaction begun 2.2 s ago) was taken again: {:?}", got.map_err(e))),
            }
        }
        (lease, slot) => {
            let _ = raw(&mut old, "ROLLBACK");
            faults.push(format!("fresh names: acquire_lease {:?}, acquire_slot {:?}", lease.map_err(e), slot.map_err(e)));
        }
    }
    faults
}

#[test]
fn lease_and_slot_times_are_the_clock_at_the_call_not_the_transaction_start() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let faults = times_are_the_clock_at_the_call(&cluster, EXACTLY);
    assert_no_crash(&cluster);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

/// The naive twin on now(): every case is caught.
#[test]
fn twin_leases_timed_by_the_transaction_start_are_caught() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let faults = times_are_the_clock_at_the_call(&cluster, NAIVE_NOW);
    eprintln!("twin:\n{}", faults.join("\n"));
    for case in ["just now, in a transaction", "not granted in it", "not free in it", "renewed for 2 s"] {
        assert!(faults.iter().any(|f| f.contains(case)), "not caught: {case}: {faults:?}");
    }
}

/// Calls made in a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates a
/// grant still see it, or fail with 40001: no second holder of a live lease, no renewal or
/// release of a lease granted to someone else since. acquire_slot refuses to run at these
/// levels (documented: 0A000), whether slots were taken or freed since the snapshot: never
/// a fourth holder of 3 slots.
fn old_snapshots_never_grant_past_a_live_holder(cluster: &Cluster, api: Api) -> Vec<String> {
    let mut faults = Vec::new();
    let mut t = cluster.connect();
    let mut other = cluster.connect();
    let e = |e: postgres::Error| describe(&e);
    let serialization = |r: &Result<Option<String>, postgres::Error>| matches!(r, Err(e) if state(e) == "40001");
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let begin = format!("BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM guarded");
        // a lease granted after the snapshot
        let name = format!("{level} lease");
        raw(&mut t, &begin).unwrap();
        let held = acquire(&mut other, api, &name, "1 minute").map_err(e);
        let got = acquire(&mut t, api, &name, "1 minute");
        let _ = raw(&mut t, "ROLLBACK");
        match got {
            Ok(None) => {}
            Err(ref x) if state(x) == "40001" => {}
            got => faults.push(format!("{level}: acquire_lease of a lease granted (to {held:?}) after the snapshot: {:?}", got.map_err(e))),
        }
        // a lease granted to someone else after the snapshot: the old token renews nothing
        let name = format!("{level} renew");
        let old = acquire(&mut other, api, &name, "200 milliseconds").map_err(e);
        sleep_ms(300);
        raw(&mut t, &begin).unwrap();
        let newer = acquire(&mut other, api, &name, "1 minute").map_err(e);
        if let Ok(Some((token, _))) = &old {
            let renewed = value(&mut t, &api.renew_sql(&name, token, "1 minute"));
            let _ = raw(&mut t, "ROLLBACK");
            if !(matches!(renewed.as_ref().map(|v| v.as_deref()), Ok(Some("f"))) || serialization(&renewed)) {
                faults.push(format!("{level}: renew_lease with the token of a lease granted again (to {newer:?}) after the snapshot: {:?}", renewed.map_err(e)));
            }
            raw(&mut t, &begin).unwrap();
            let released = value(&mut t, &api.release_sql(&name, token));
            let _ = raw(&mut t, "ROLLBACK");
            if !(matches!(released.as_ref().map(|v| v.as_deref()), Ok(Some("f"))) || serialization(&released)) {
                faults.push(format!("{level}: release_lease with the token of a lease granted again after the snapshot: {:?}", released.map_err(e)));
            }
        } else {
            let _ = raw(&mut t, "ROLLBACK");
            faults.push(format!("{level}: a fresh lease: {old:?}"));
        }
        // 3 slots taken after the snapshot
        let name = format!("{level} slots");
        raw(&mut t, &begin).unwrap();
        let taken: Vec<_> = (0..3).map(|_| value(&mut other, &api.acquire_slot_sql(&name, 3, "1 minute")).map_err(e)).collect();
        let got = value(&mut t, &api.acquire_slot_sql(&name, 3, "1 minute"));
        let _ = raw(&mut t, "ROLLBACK");
        match got {
            Err(ref x) if state(x) == "0A000" => {}
            Ok(Some(ref token)) => faults.push(format!("{level}: a fourth of 3 slots (taken after the snapshot: {taken:?}) was granted: {token}")),
            got => faults.push(format!("{level}: acquire_slot with 3 slots taken after the snapshot: expected the documented 0A000, got {:?}", got.map_err(e))),
        }
        // one of 3 slots released after the snapshot
        let name = format!("{level} freed");
        let taken: Vec<Option<String>> = (0..3)
            .map(|_| value(&mut other, &api.acquire_slot_sql(&name, 3, "1 minute")).ok().flatten())
            .collect();
        raw(&mut t, &begin).unwrap();
        let released = taken[0].as_ref().map(|tok| boolean(&mut other, &api.release_slot_sql(&name, tok)).map_err(e));
        let got = value(&mut t, &api.acquire_slot_sql(&name, 3, "1 minute"));
        let _ = raw(&mut t, "ROLLBACK");
        if !matches!(got, Err(ref x) if state(x) == "0A000") {
            faults.push(format!(
                "{level}: acquire_slot with one of 3 slots released (release: {released:?}) after the snapshot: expected the documented 0A000, got {:?}",
                got.map_err(e)
            ));
        }
    }
    faults
}

#[test]
fn calls_from_an_old_snapshot_never_grant_past_a_live_holder() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let faults = old_snapshots_never_grant_past_a_live_holder(&cluster, EXACTLY);
    assert_no_crash(&cluster);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

/// The naive semaphore counts in its snapshot: a fourth slot.
#[test]
fn twin_a_semaphore_counting_in_an_old_snapshot_grants_a_fourth_slot() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let faults = old_snapshots_never_grant_past_a_live_holder(&cluster, NAIVE);
    eprintln!("twin:\n{}", faults.join("\n"));
    assert!(faults.iter().any(|f| f.contains("a fourth of 3 slots")), "not caught: {faults:?}");
}

// ---------------------------------------------------------------------------------------
// 4. through PgBouncer in transaction pooling mode
// ---------------------------------------------------------------------------------------

/// Rows of `sql` on a pooled client, with the server backend that ran it (first column).
fn pooled(c: &mut Client, sql: &str) -> Result<(i32, Vec<Option<String>>), String> {
    let rows = raw(c, sql).map_err(|e| format!("`{sql}`: {}", describe(&e)))?;
    let row = rows.into_iter().next().ok_or_else(|| format!("`{sql}` returned no row"))?;
    Ok((row[0].as_deref().unwrap().parse().unwrap(), row[1..].to_vec()))
}

/// Pin server backend `pid` with an open transaction on a helper client, so the next
/// statements of other clients run on the pool's other connection.
fn pin_backend(bouncer: &PgBouncer, pid: i32) -> Client {
    let mut helpers = Vec::new();
    for _ in 0..2 {
        let mut h = bouncer.config().connect(NoTls).unwrap();
        raw(&mut h, "BEGIN").unwrap();
        if backend_pid(&mut h) == pid {
            for mut other in helpers {
                raw(&mut other, "COMMIT").unwrap();
            }
            return h;
        }
        helpers.push(h);
    }
    panic!("could not pin backend {pid}: the pool has more than 2 server connections?");
}

/// Acquire on one server connection; renew, fenced write and release from other
/// transactions on the other one (and from another client); a newer grant through the pool;
/// the old fence refused through the pool.
fn pooled_lease(bouncer: &PgBouncer, api: Api) -> Result<(), String> {
    let s = api.0;
    let name = "pooled";
    let connect = || bouncer.config().connect(NoTls).unwrap();
    let (mut a, mut other, mut d) = (connect(), connect(), connect());
    let (acquired_on, row) = pooled(
        &mut a,
        &format!("SELECT pg_catalog.pg_backend_pid(), token, fence FROM {s}.acquire_lease('{name}', '30 seconds')"),
    )?;
    let token = row[0].clone().unwrap();
    let fence: i64 = row[1].as_deref().unwrap().parse().unwrap();
    let mut pin = pin_backend(bouncer, acquired_on);
    let mut faults = Vec::new();
    let elsewhere = |pid: i32, what: &str| -> Result<(), String> {
        assert_ne!(pid, acquired_on, "{what} ran on the pinned backend: the harness is wrong");
        Ok(())
    };
    let (pid, row) = pooled(
        &mut a,
        &format!("SELECT pg_catalog.pg_backend_pid(), {s}.renew_lease('{name}', '{token}', '30 seconds')"),
    )?;
    elsewhere(pid, "renew")?;
    if row[0].as_deref() != Some("t") {
        faults.push(format!("renew_lease from another server connection returned {:?}", row[0]));
    }
    raw(&mut a, "BEGIN").unwrap();
    match pooled(&mut a, &format!("SELECT pg_catalog.pg_backend_pid(), {s}.check_fence('{name}', {fence})")) {
        Ok((pid, _)) => {
            elsewhere(pid, "check_fence")?;
            raw(&mut a, &format!("UPDATE guarded SET last_fence = {fence}, writes = writes + 1 WHERE id = 1; COMMIT"))
                .unwrap();
        }
        Err(e) => {
            raw(&mut a, "ROLLBACK").unwrap();
            faults.push(format!("check_fence of the live lease from another server connection: {e}"));
        }
    }
    let (pid, row) = pooled(
        &mut other,
        &format!("SELECT pg_catalog.pg_backend_pid(), {s}.release_lease('{name}', '{token}')"),
    )?;
    elsewhere(pid, "release")?;
    if row[0].as_deref() != Some("t") {
        faults.push(format!("release_lease by another client on another server connection returned {:?}", row[0]));
    }
    raw(&mut pin, "COMMIT").unwrap();
    match raw(&mut d, &api.acquire_sql(name, "30 seconds")) {
        Ok(rows) if rows.len() == 1 => {
            let next: i64 = rows[0][1].as_deref().unwrap().parse().unwrap();
            if next != fence + 1 {
                faults.push(format!("the next grant through the pool has fence {next}, expected {}", fence + 1));
            }
            match raw(&mut a, &format!("BEGIN; {}", api.check_fence_sql(name, fence))) {
                Ok(_) => faults.push("the released holder's fence was accepted after the next grant".into()),
                Err(e) if state(&e) == "55006" => {}
                Err(e) => faults.push(format!("the old fence through the pool: expected 55006, got {}", describe(&e))),
            }
            raw(&mut a, "ROLLBACK").unwrap();
            if raw(&mut a, &api.acquire_sql(name, "30 seconds")).map(|r| r.len()).unwrap_or(9) != 0 {
                faults.push("a second client was granted the lease while the first grant was live".into());
            }
        }
        Ok(rows) => faults.push(format!("after the release, another client's acquire returned {rows:?}")),
        Err(e) => faults.push(format!("after the release, another client's acquire: {}", describe(&e))),
    }
    if faults.is_empty() {
        Ok(())
    } else {
        Err(faults.join("\n"))
    }
}

/// Through PgBouncer (transaction mode, 2 server connections): the scripted cross-connection
/// cycle above, then 6 clients contending for one lease for 4 s, with every check of test 1.
#[test]
fn leases_work_across_pooled_connections_behind_pgbouncer() {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    let bouncer = PgBouncer::start(&cluster, "transaction", 2);
    let scripted = pooled_lease(&bouncer, EXACTLY);
    assert_no_crash(&cluster);
    assert!(scripted.is_ok(), "{}", scripted.unwrap_err());
    let run = LeaseRun::new(EXACTLY, Guard::CheckFence, "pooled_contention", 4);
    let logs = contend_for_a_lease(bouncer.config(), 6, run);
    let faults = check_lease_run(&logs, &mut admin, true);
    let stats = lease_stats(&logs);
    eprintln!(
        "through the pool: {} grants, {} accepted writes, {} refused, {} acquires found it held",
        stats.grants, stats.accepted, stats.refused, stats.refusals
    );
    assert_no_crash(&cluster);
    assert_no_faults(&faults);
    assert!(stats.grants >= 5 && stats.accepted >= 10, "too little happened: {} grants, {} writes", stats.grants, stats.accepted);
}

/// The session-lock twin through the same pool: the lease stays with the server connection
/// that acquired it, so renew and release from another connection fail.
#[test]
fn twin_session_lock_leases_break_behind_pgbouncer() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let bouncer = PgBouncer::start(&cluster, "transaction", 2);
    let result = pooled_lease(&bouncer, SESS);
    eprintln!("twin: {result:?}");
    let e = result.expect_err("the session-lock twin works through a transaction pool");
    assert!(e.contains("renew_lease from another server connection"), "caught by another check: {e}");
}

// ---------------------------------------------------------------------------------------
// 5. slots
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct SlotLog {
    grants: Vec<Grant>,
    refusals: Vec<(u64, u64)>,
    errors: Vec<String>,
    /// the sampler's: the most live rows it saw at once, and each sample over the limit
    sampled_max: i64,
    samples: usize,
    over: Vec<String>,
}

fn slot_worker(i: usize, c: &mut Client, api: Api, name: &str, slots: i64, t0: Instant, deadline: Instant) -> SlotLog {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 7).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut log = SlotLog::default();
    while Instant::now() < deadline {
        let ttl_ms = between(&mut rng, 300, 1000);
        let ttl = ms_ttl(ttl_ms);
        let s = us(t0);
        let got = value(c, &api.acquire_slot_sql(name, slots, &ttl));
        let e = us(t0);
        let token = match got {
            Err(err) => {
                log.errors.push(format!("worker {i}: acquire_slot: {}", describe(&err)));
                sleep_ms(10);
                continue;
            }
            Ok(None) => {
                log.refusals.push((s, e));
                sleep_ms(between(&mut rng, 1, 6));
                continue;
            }
            Ok(Some(token)) => token,
        };
        let mut g = Grant { worker: i, token, ttl: ttl_ms * 1000, acq: (s, e), ..Default::default() };
        let mut renew = |c: &mut Client, g: &mut Grant| {
            let s = us(t0);
            match boolean(c, &api.renew_slot_sql(name, &g.token, &ttl)) {
                Ok(ok) => g.renews.push((s, us(t0), ok)),
                Err(err) => log.errors.push(format!("worker {i}: renew_slot: {}", describe(&err))),
            }
        };
        // short holds, so that each contender gets about 10 slots on average and one that
        // got none was treated unfairly rather than unluckily
        let mode = between(&mut rng, 0, 99);
        if mode < 73 {
            g.mode = "release";
            sleep_ms(between(&mut rng, 5, 150));
        } else if mode < 88 {
            g.mode = "renew";
            sleep_ms(between(&mut rng, 5, ttl_ms / 4));
            renew(c, &mut g);
            sleep_ms(between(&mut rng, 5, 100));
        } else {
            g.mode = "expire";
            sleep_ms(ttl_ms + between(&mut rng, 20, 60));
            renew(c, &mut g);
        }
        if g.mode != "expire" {
            let s = us(t0);
            match boolean(c, &api.release_slot_sql(name, &g.token)) {
                Ok(ok) => g.release = Some((s, us(t0), ok)),
                Err(err) => log.errors.push(format!("worker {i}: release_slot: {}", describe(&err))),
            }
        }
        log.grants.push(g);
        sleep_ms(between(&mut rng, 30, 100)); // other work before asking again
    }
    log
}

fn sampler(c: &mut Client, api: Api, name: &str, slots: i64, t0: Instant, deadline: Instant) -> SlotLog {
    let mut log = SlotLog::default();
    let sql = format!(
        "SELECT count(*) FROM {}.slots WHERE name = {} AND expires_at > clock_timestamp()",
        api.0,
        lit(name)
    );
    while Instant::now() < deadline {
        let live = int(c, &sql);
        log.samples += 1;
        log.sampled_max = log.sampled_max.max(live);
        if live > slots {
            log.over.push(format!("{live} live rows of {}.slots at {}", api.0, ms(us(t0))));
        }
        sleep_ms(2);
    }
    log
}

/// The most intervals (inclusive bounds) that overlap at one moment, and that moment.
fn max_overlap(intervals: &[(u64, u64)]) -> (usize, u64) {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for &(s, e) in intervals {
        if s <= e {
            events.push((s, 1));
            events.push((e, -1));
        }
    }
    events.sort_by_key(|&(t, d)| (t, -d)); // at one moment, starts before ends (inclusive)
    let (mut now, mut best, mut at) = (0i32, 0i32, 0);
    for (t, d) in events {
        now += d;
        if now > best {
            best = now;
            at = t;
        }
    }
    (best as usize, at)
}

fn check_slot_run(logs: &[SlotLog], contenders: usize, slots: usize) -> Faults {
    let mut faults = Faults::new();
    let grants: Vec<&Grant> = logs.iter().flat_map(|l| l.grants.iter()).collect();
    for log in logs {
        for e in &log.errors {
            faults.push(("error", e.clone()));
        }
        for o in log.over.iter().take(20) {
            faults.push(("sampler", o.clone()));
        }
    }
    // never more than `slots` holders certainly live at one moment
    let certain: Vec<(u64, u64)> = grants
        .iter()
        .map(|g| (g.acq.1, g.certain_end().saturating_sub(TOL)))
        .collect();
    let (most, at) = max_overlap(&certain);
    if most > slots {
        let holders: Vec<String> = grants
            .iter()
            .filter(|g| g.acq.1 <= at && at + TOL <= g.certain_end())
            .map(|g| g.describe())
            .collect();
        faults.push((
            "overlap",
            format!("{most} holders were live at {} (limit {slots}):\n    {}", ms(at), holders.join("\n    ")),
        ));
    }
    // NULL only while `slots` holders can be live
    let possible: Vec<(u64, u64)> = grants
        .iter()
        .map(|g| (g.acq.0.saturating_sub(TOL), g.upper_end() + TOL))
        .collect();
    let mut free_refusals = 0;
    let mut example = String::new();
    for log in logs {
        for &(s, e) in &log.refusals {
            let clipped: Vec<(u64, u64)> = possible
                .iter()
                .filter(|&&(ps, pe)| ps <= e && pe >= s)
                .map(|&(ps, pe)| (ps.max(s), pe.min(e)))
                .collect();
            if max_overlap(&clipped).0 < slots {
                free_refusals += 1;
                if example.is_empty() {
                    example = format!("acquire_slot at [{}, {}]", ms(s), ms(e));
                }
            }
        }
    }
    if free_refusals > 0 {
        faults.push((
            "acquire",
            format!("{free_refusals} acquire_slot calls returned NULL while fewer than {slots} slots could be held, e.g. {example}"),
        ));
    }
    for g in &grants {
        check_renewals(g, &mut faults);
    }
    // fairness: everyone who kept asking got a slot
    let mut got = vec![0; contenders];
    for g in &grants {
        got[g.worker] += 1;
    }
    if got.contains(&0) {
        faults.push(("fairness", format!("slots granted per contender: {got:?}")));
    }
    faults
}

fn contend_for_slots(cluster: &Cluster, api: Api, name: &'static str, secs: u64) -> Vec<SlotLog> {
    const CONTENDERS: usize = 16;
    let t0 = Instant::now() + Duration::from_millis(200);
    let deadline = t0 + Duration::from_secs(secs);
    at_once(cluster, CONTENDERS + 1, move |i, c| {
        if let Some(wait) = t0.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if i == CONTENDERS {
            sampler(c, api, name, 3, t0, deadline)
        } else {
            slot_worker(i, c, api, name, 3, t0, deadline)
        }
    })
}

/// The calls for one name are served one at a time, in the order they arrive: while a
/// transaction that took the only slot is open, three callers queue (each waits on the
/// name); it releases the slot and commits; the first caller gets the slot, the other two
/// NULL.
fn slot_calls_served_in_arrival_order(cluster: &Cluster, api: Api) -> Result<(), String> {
    let name = "fifo";
    let mut admin = cluster.connect();
    let mut b = cluster.connect();
    raw(&mut b, "BEGIN").unwrap();
    let token = value(&mut b, &api.acquire_slot_sql(name, 1, "1 minute"))
        .map_err(|e| describe(&e))?
        .ok_or("NULL for the only slot of a fresh name")?;
    let mut callers = Vec::new();
    for k in 0..3 {
        let (pid, rx) = query_in_background(cluster, api.acquire_slot_sql(name, 1, "1 minute"));
        if !blocked_within(&mut admin, pid, Duration::from_secs(3)) {
            let _ = raw(&mut b, "ROLLBACK");
            return Err(format!(
                "caller {k}'s acquire_slot did not wait while a transaction taking the name's slot was open: {:?}",
                rx.recv_timeout(Duration::from_secs(5))
            ));
        }
        callers.push(rx);
    }
    if !boolean(&mut b, &api.release_slot_sql(name, &token)).map_err(|e| describe(&e))? {
        return Err("release_slot of the slot taken in the same transaction returned false".into());
    }
    raw(&mut b, "COMMIT").unwrap();
    let got: Vec<Result<Option<String>, String>> = callers
        .into_iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| Err("no answer in 10 s".into())))
        .collect();
    let served: Vec<bool> = got.iter().map(|r| matches!(r, Ok(Some(_)))).collect();
    if served != [true, false, false] || got.iter().any(|r| r.is_err()) {
        return Err(format!("callers in arrival order got {got:?}, expected the first a slot, the others NULL"));
    }
    Ok(())
}

#[test]
fn slot_calls_are_served_in_the_order_they_arrive() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let result = slot_calls_served_in_arrival_order(&cluster, EXACTLY);
    assert_no_crash(&cluster);
    assert!(result.is_ok(), "{}", result.unwrap_err());
}

/// 16 contenders for 3 slots of one name for 10 s (ttl 300 ms to 1 s; hold 5 to 150 ms and
/// release, renew once, or let it run out), a sampler counting live rows of exactly.slots every 2 ms: never more
/// than 3 holders (by the client-side intervals and by the sampler), NULL only when 3 can
/// be held, renewals and releases consistent, and every contender got a slot.
#[test]
fn sixteen_contenders_never_hold_more_than_three_slots_and_each_gets_one() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let logs = contend_for_slots(&cluster, EXACTLY, "tenant_42_sync", 10);
    let faults = check_slot_run(&logs, 16, 3);
    let grants: usize = logs.iter().map(|l| l.grants.len()).sum();
    let refusals: usize = logs.iter().map(|l| l.refusals.len()).sum();
    let sampler = &logs[16];
    let per_contender: Vec<usize> = logs[..16].iter().map(|l| l.grants.len()).collect();
    eprintln!(
        "{grants} slots granted (per contender {per_contender:?}), {refusals} refusals, sampler: {} samples, max {}",
        sampler.samples, sampler.sampled_max
    );
    assert_no_crash(&cluster);
    assert_no_faults(&faults);
    assert!(grants >= 100 && refusals >= 100, "too little contention: {grants} grants, {refusals} refusals");
    assert!(sampler.samples >= 500 && sampler.sampled_max == 3, "the sampler saw at most {} of 3", sampler.sampled_max);
}

/// The count-then-insert semaphore does not queue its callers, and gives out more than 3
/// slots.
#[test]
fn twin_a_count_then_insert_semaphore_gives_out_more_than_three_slots() {
    let cluster = Cluster::start();
    prepare(&cluster);
    let fifo = slot_calls_served_in_arrival_order(&cluster, NAIVE);
    eprintln!("twin: arrival order: {fifo:?}");
    assert!(fifo.expect_err("the naive semaphore queued its callers").contains("did not wait"));
    let logs = contend_for_slots(&cluster, NAIVE, "tenant_42_sync", 5);
    let faults = check_slot_run(&logs, 16, 3);
    eprintln!("twin: {}", report(&faults));
    let kinds = kinds(&faults);
    assert!(
        kinds.contains(&"overlap") || kinds.contains(&"sampler"),
        "the naive semaphore was not caught over its limit: {}",
        report(&faults)
    );
}

// ---------------------------------------------------------------------------------------
// 6. hostile use
// ---------------------------------------------------------------------------------------

/// Functions a hostile role plants in `public`: (name, argument types, return type, what it
/// returns). Each records that it ran.
const SHADOW_FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("clock_timestamp", "", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("statement_timestamp", "", "timestamptz", "pg_catalog.statement_timestamp()"),
    ("transaction_timestamp", "", "timestamptz", "pg_catalog.transaction_timestamp()"),
    ("gen_random_uuid", "", "uuid", "pg_catalog.gen_random_uuid()"),
    ("uuid_generate_v4", "", "uuid", "pg_catalog.gen_random_uuid()"),
    ("random", "", "double precision", "pg_catalog.random()"),
    ("pg_backend_pid", "", "integer", "pg_catalog.pg_backend_pid()"),
    ("txid_current", "", "bigint", "pg_catalog.txid_current()"),
    ("hashtext", "text", "integer", "pg_catalog.hashtext($1)"),
    ("hashtextextended", "text, bigint", "bigint", "pg_catalog.hashtextextended($1, $2)"),
    ("md5", "text", "text", "pg_catalog.md5($1)"),
    ("length", "text", "integer", "pg_catalog.length($1)"),
    ("octet_length", "text", "integer", "pg_catalog.octet_length($1)"),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("pg_advisory_xact_lock", "bigint", "void", "pg_catalog.pg_advisory_xact_lock($1)"),
    ("pg_advisory_xact_lock_shared", "bigint", "void", "pg_catalog.pg_advisory_xact_lock_shared($1)"),
    ("pg_try_advisory_xact_lock", "bigint", "boolean", "pg_catalog.pg_try_advisory_xact_lock($1)"),
    ("pg_advisory_xact_lock", "integer, integer", "void", "pg_catalog.pg_advisory_xact_lock($1, $2)"),
    ("pg_advisory_xact_lock_shared", "integer, integer", "void", "pg_catalog.pg_advisory_xact_lock_shared($1, $2)"),
    ("pg_try_advisory_xact_lock", "integer, integer", "boolean", "pg_catalog.pg_try_advisory_xact_lock($1, $2)"),
    ("nextval", "text", "bigint", "pg_catalog.nextval($1::pg_catalog.regclass)"),
    ("make_interval", "integer", "interval", "pg_catalog.make_interval(0, 0, 0, 0, 0, 0, $1)"),
    ("age", "timestamptz", "interval", "pg_catalog.age($1)"),
    ("date_trunc", "text, timestamptz", "timestamptz", "pg_catalog.date_trunc($1, $2)"),
];

const SHADOW_OPERATORS: &[&str] = &["=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "||"];
const OPERATOR_TYPES: &[&str] = &[
    "text", "uuid", "bigint", "integer", "smallint", "numeric", "timestamptz", "timestamp",
    "interval", "boolean", "double precision", "name", "oid",
];
const SHADOW_DOMAINS: &[&str] = &["text", "uuid", "int8", "int4", "timestamptz", "bool", "float8", "numeric"];
const SHADOW_VIEWS: &[&str] = &["leases", "slots", "claims", "pg_locks", "pg_stat_activity"];

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
CREATE FUNCTION public.hostile_max_step(s bigint, v bigint) RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$ BEGIN PERFORM public.hostile_hit('aggregate public.max(bigint)');
  RETURN CASE WHEN s IS NULL OR v > s THEN v ELSE s END; END $f$;
CREATE AGGREGATE public.max(bigint) (SFUNC = public.hostile_max_step, STYPE = bigint);
"#;
    for (name, args, ret, body) in SHADOW_FUNCTIONS {
        let params: Vec<String> = if args.is_empty() {
            vec![]
        } else {
            args.split(", ").enumerate().map(|(i, t)| format!("a{i} {t}")).collect()
        };
        let body = if *ret == "void" { format!("PERFORM {body}; RETURN;") } else { format!("RETURN {body};") };
        sql += &format!(
            "CREATE FUNCTION public.{name}({params}) RETURNS {ret} LANGUAGE plpgsql VOLATILE \
             SET search_path = pg_catalog AS $b$ BEGIN PERFORM public.hostile_hit('function public.{name}({args})'); {body} END $b$;\n",
            params = params.join(", "),
        );
    }
    for view in SHADOW_VIEWS {
        sql += &format!(
            "CREATE VIEW public.{view} AS SELECT NULL::pg_catalog.text AS name WHERE public.hostile_hit('view public.{view}');\n\
             GRANT SELECT ON public.{view} TO PUBLIC;\n"
        );
    }
    sql += &hostile::operators_sql(SHADOW_OPERATORS, OPERATOR_TYPES, &[], 100);
    for domain in SHADOW_DOMAINS {
        sql += &format!(
            "CREATE DOMAIN public.{domain} AS pg_catalog.{domain} CHECK (public.hostile_hit('domain public.{domain}'));\n"
        );
    }
    sql += "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;\n";
    sql
}

/// Roles: `hostile` (CREATE on public, with its objects planted), `app` (given the
/// implementation's usage), `stranger` (nothing).
fn roles(cluster: &Cluster, admin: &mut Client, api: Api) {
    admin
        .batch_execute(
            "CREATE ROLE hostile LOGIN; GRANT CREATE ON SCHEMA public TO hostile;
             CREATE ROLE app LOGIN; CREATE ROLE stranger LOGIN;",
        )
        .unwrap();
    if api == EXACTLY {
        admin.batch_execute("SELECT exactly.grant_usage('app')").unwrap();
    } else {
        // the naive twin's "grant usage": the application may use its tables as it likes
        admin
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {s} TO app; GRANT ALL ON ALL TABLES IN SCHEMA {s} TO app;
                 GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO app;",
                s = api.0
            ))
            .unwrap();
    }
    cluster
        .connect_as("hostile")
        .batch_execute(&hostile_script())
        .unwrap_or_else(|e| panic!("planting the hostile objects: {}", describe(&e)));
}

/// What hostile code did so far: (runs, a description), read on a connection of our own
/// whose search_path is pg_catalog alone.
fn hostile_evidence(k: &mut Client) -> (i64, String) {
    let rows = raw(
        k,
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hostile_hits),
                (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'hostile'),
                (SELECT string_agg(DISTINCT what || ' as ' || by_user, '; ') FROM public.hostile_log)",
    )
    .unwrap();
    let hits: i64 = rows[0][0].as_deref().unwrap().parse().unwrap();
    let superuser = rows[0][1].as_deref() == Some("t");
    (
        hits + superuser as i64,
        format!(
            "{hits} hostile call(s){}: {}",
            if superuser { ", AND HOSTILE BECAME SUPERUSER" } else { "" },
            rows[0][2].clone().unwrap_or_default()
        ),
    )
}

/// Every function on its paths, by `caller` under `path`, with its results checked; after
/// every step, nothing hostile may have run.
fn hostile_calls(cluster: &Cluster, api: Api, caller: &str, path: &str, tag: &str) -> Vec<String> {
    let mut c = cluster.connect_as(caller);
    let mut k = cluster.connect();
    raw(&mut k, "SET search_path = pg_catalog").unwrap();
    raw(&mut c, &format!("SET search_path = {path}")).unwrap();
    let mut faults = Vec::new();
    let lease = format!("hostile lease {tag}");
    let short = format!("hostile short {tag}");
    let slot = format!("hostile slot {tag}");
    let short_slot = format!("hostile short slot {tag}");
    let mut seen = hostile_evidence(&mut k).0;
    let mut tokens: HashMap<&str, String> = HashMap::new();
    type Step = (&'static str, Box<dyn Fn(&mut Client, &mut HashMap<&'static str, String>) -> Result<(), String>>);
    let s = api;
    let (l1, l2, l3, l4, l5, l6, l7) = (lease.clone(), lease.clone(), lease.clone(), lease.clone(), lease.clone(), lease.clone(), lease.clone());
    let (l8, sh1, sh2) = (lease.clone(), short.clone(), short.clone());
    let (s1, s2, s3, s4, s5, s6) = (slot.clone(), slot.clone(), slot.clone(), slot.clone(), slot.clone(), slot.clone());
    let (ss1, ss2) = (short_slot.clone(), short_slot.clone());
    let err = |e: postgres::Error| describe(&e);
    let steps: Vec<Step> = vec![
        ("acquire_lease (first grant)", Box::new(move |c, t| {
            let (token, fence) = acquire(c, s, &l1, "300 milliseconds").map_err(err)?.ok_or("no row for a free lease")?;
            if fence != 1 { return Err(format!("first fence {fence}")); }
            t.insert("lease", token);
            Ok(())
        })),
        ("acquire_lease (held)", Box::new(move |c, _| {
            match acquire(c, s, &l2, "1 second").map_err(err)? { None => Ok(()), Some(g) => Err(format!("granted while held: {g:?}")) }
        })),
        ("renew_lease (live)", Box::new(move |c, t| {
            if boolean(c, &s.renew_sql(&l3, &t["lease"], "300 milliseconds")).map_err(err)? { Ok(()) } else { Err("false".into()) }
        })),
        ("check_fence (current)", Box::new(move |c, _| {
            raw(c, &format!("BEGIN; {}; COMMIT", s.check_fence_sql(&l4, 1))).map(|_| ()).map_err(|e| { let _ = raw(c, "ROLLBACK"); err(e) })
        })),
        ("release_lease (live, then again)", Box::new(move |c, t| {
            let first = boolean(c, &s.release_sql(&l5, &t["lease"])).map_err(err)?;
            let again = boolean(c, &s.release_sql(&l5, &t["lease"])).map_err(err)?;
            let renew = boolean(c, &s.renew_sql(&l5, &t["lease"], "1 second")).map_err(err)?;
            if (first, again, renew) == (true, false, false) { Ok(()) } else { Err(format!("release, release, renew: {first}, {again}, {renew}")) }
        })),
        ("acquire_lease (after release)", Box::new(move |c, t| {
            let (token, fence) = acquire(c, s, &l6, "1 second").map_err(err)?.ok_or("no row after the release")?;
            if fence != 2 { return Err(format!("second fence {fence}")); }
            t.insert("lease2", token);
            Ok(())
        })),
        ("check_fence (stale)", Box::new(move |c, _| {
            let r = raw(c, &format!("BEGIN; {}", s.check_fence_sql(&l7, 1)));
            let _ = raw(c, "ROLLBACK");
            match r { Ok(_) => Err("accepted".into()), Err(e) if state(&e) == "55006" => Ok(()), Err(e) => Err(err(e)) }
        })),
        ("check_fence (never granted)", Box::new(move |c, _| {
            let r = raw(c, &format!("BEGIN; {}", s.check_fence_sql(&l8, 3)));
            let _ = raw(c, "ROLLBACK");
            match r { Ok(_) => Err("accepted".into()), Err(e) if state(&e) == "55006" => Ok(()), Err(e) => Err(err(e)) }
        })),
        ("acquire_lease (ran out)", Box::new(move |c, _| {
            acquire(c, s, &sh1, "1 millisecond").map_err(err)?.ok_or("no row for a free lease")?;
            sleep_ms(20);
            let (_, fence) = acquire(c, s, &sh2, "1 second").map_err(err)?.ok_or("no row after the lease ran out")?;
            if fence == 2 { Ok(()) } else { Err(format!("fence {fence} after a lease ran out")) }
        })),
        ("acquire_slot (free, full, more slots)", Box::new(move |c, t| {
            let a = value(c, &s.acquire_slot_sql(&s1, 1, "1 second")).map_err(err)?.ok_or("NULL for a free slot")?;
            if let Some(b) = value(c, &s.acquire_slot_sql(&s1, 1, "1 second")).map_err(err)? { return Err(format!("second of 1 slot granted: {b}")); }
            let b = value(c, &s.acquire_slot_sql(&s1, 2, "1 second")).map_err(err)?.ok_or("NULL for the second of 2 slots")?;
            t.insert("slot", a);
            t.insert("slot2", b);
            Ok(())
        })),
        ("renew_slot", Box::new(move |c, t| {
            if boolean(c, &s.renew_slot_sql(&s2, &t["slot"], "1 second")).map_err(err)? { Ok(()) } else { Err("false".into()) }
        })),
        ("release_slot (live, then again)", Box::new(move |c, t| {
            let first = boolean(c, &s.release_slot_sql(&s3, &t["slot"])).map_err(err)?;
            let again = boolean(c, &s.release_slot_sql(&s3, &t["slot"])).map_err(err)?;
            let renew = boolean(c, &s.renew_slot_sql(&s3, &t["slot"], "1 second")).map_err(err)?;
            if (first, again, renew) == (true, false, false) { Ok(()) } else { Err(format!("release, release, renew: {first}, {again}, {renew}")) }
        })),
        ("acquire_slot (after release)", Box::new(move |c, _| {
            value(c, &s.acquire_slot_sql(&s4, 2, "1 second")).map_err(err)?.ok_or("NULL after a release")?;
            if let Some(x) = value(c, &s.acquire_slot_sql(&s5, 2, "1 second")).map_err(err)? { return Err(format!("third of 2 slots granted: {x}")); }
            Ok(())
        })),
        ("release_slot (the other one)", Box::new(move |c, t| {
            if boolean(c, &s.release_slot_sql(&s6, &t["slot2"])).map_err(err)? { Ok(()) } else { Err("false".into()) }
        })),
        ("acquire_slot (ran out)", Box::new(move |c, _| {
            value(c, &s.acquire_slot_sql(&ss1, 1, "1 millisecond")).map_err(err)?.ok_or("NULL for a free slot")?;
            sleep_ms(20);
            value(c, &s.acquire_slot_sql(&ss2, 1, "1 second")).map_err(err)?.ok_or("NULL after the slot ran out")?;
            Ok(())
        })),
    ];
    for (what, step) in steps {
        let result = step(&mut c, &mut tokens);
        let _ = raw(&mut c, "ROLLBACK"); // leave no transaction open, whatever happened
        let (hits, evidence) = hostile_evidence(&mut k);
        if hits != seen {
            faults.push(format!("{what} [as {caller}, search_path = {path}]: hostile code ran: {evidence}"));
            seen = hits;
        }
        if let Err(e) = result {
            faults.push(format!("{what} [as {caller}, search_path = {path}]: wrong result: {e}"));
        }
    }
    faults
}

fn hostile_faults(api: Api, paths: &[&str]) -> Vec<String> {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    roles(&cluster, &mut admin, api);
    let mut faults = Vec::new();
    let mut n = 0;
    for caller in ["postgres", "app"] {
        for path in paths {
            n += 1;
            faults.extend(hostile_calls(&cluster, api, caller, path, &n.to_string()));
        }
    }
    faults.extend(server_crashes(&cluster).into_iter().map(|c| format!("server crash: {c}")));
    faults
}

/// A hostile role's functions, operators (`public.=(text,text)` and ~200 more), aggregates,
/// views and domains on the caller's search_path, `public, pg_catalog` or the default: none
/// of them runs inside acquire_lease, renew_lease, release_lease, check_fence or the slot
/// functions, called by a superuser and by an application role, and every result is right.
#[test]
fn hostile_search_path_objects_never_run_inside_leases_and_slots() {
    let faults = hostile_faults(EXACTLY, &["public, pg_catalog", "\"$user\", public"]);
    assert!(faults.is_empty(), "{} fault(s):\n{}", faults.len(), faults.join("\n"));
}

fn refused_in_txn(c: &mut Client, sql: &str, want: &str) -> Result<(), String> {
    raw(c, "BEGIN").unwrap();
    let result = raw(c, sql);
    let _ = raw(c, "ROLLBACK");
    match result {
        Ok(rows) => Err(format!("`{sql}` succeeded ({} rows), expected {want}", rows.len())),
        Err(e) if state(&e) == want => Ok(()),
        Err(e) => Err(format!("`{sql}`: expected {want}, got {}", describe(&e))),
    }
}

/// The application role can call everything, read the tables, and cannot change them
/// directly; a role without usage gets 42501 from every function.
fn privilege_faults(api: Api) -> Vec<String> {
    let cluster = Cluster::start();
    let mut admin = prepare(&cluster);
    roles(&cluster, &mut admin, api);
    let s = api.0;
    let mut faults = Vec::new();
    let (token, fence) = acquire(&mut admin, api, "owned", "1 hour").unwrap().unwrap();
    let slot = value(&mut admin, &api.acquire_slot_sql("owned", 2, "1 hour")).unwrap().unwrap();
    let snapshot = |admin: &mut Client| {
        raw(
            admin,
            &format!(
                "SELECT (SELECT string_agg(l::text, ',' ORDER BY name) FROM {s}.leases l WHERE name = 'owned'),
                        (SELECT string_agg(x::text, ',' ORDER BY token) FROM {s}.slots x WHERE name = 'owned')"
            ),
        )
        .unwrap()
    };
    let before = snapshot(&mut admin);
    let mut app = cluster.connect_as("app");
    let writes = [
        format!("INSERT INTO {s}.leases (name, token, fence, granted_at, expires_at) VALUES ('forged', '{token}', 99, pg_catalog.now(), pg_catalog.now() + interval '1 hour')"),
        format!("UPDATE {s}.leases SET fence = 0"),
        format!("UPDATE {s}.leases SET expires_at = pg_catalog.now() WHERE name = 'owned'"),
        format!("DELETE FROM {s}.leases"),
        format!("TRUNCATE {s}.leases"),
        format!("SELECT * FROM {s}.leases FOR UPDATE"),
        format!("INSERT INTO {s}.slots (name, token, acquired_at, expires_at) VALUES ('owned', pg_catalog.gen_random_uuid(), pg_catalog.now(), pg_catalog.now() + interval '1 hour')"),
        format!("UPDATE {s}.slots SET expires_at = pg_catalog.now()"),
        format!("DELETE FROM {s}.slots WHERE token = '{slot}'"),
        format!("TRUNCATE {s}.slots"),
        format!("SELECT * FROM {s}.slots FOR SHARE"),
    ];
    for sql in &writes {
        if let Err(e) = refused_in_txn(&mut app, sql, "42501") {
            faults.push(format!("app: {e}"));
        }
    }
    for sql in [format!("SELECT count(*) FROM {s}.leases"), format!("SELECT count(*) FROM {s}.slots")] {
        if let Err(e) = raw(&mut app, &sql) {
            faults.push(format!("app: `{sql}` (SELECT is granted): {}", describe(&e)));
        }
    }
    // and everything works for it
    let cycle = (|| -> Result<(), String> {
        let e = |e: postgres::Error| describe(&e);
        let (t, f) = acquire(&mut app, api, "app's", "1 second").map_err(e)?.ok_or("no row")?;
        raw(&mut app, &format!("BEGIN; {}; COMMIT", api.check_fence_sql("app's", f))).map_err(e)?;
        if !boolean(&mut app, &api.renew_sql("app's", &t, "1 second")).map_err(e)? { return Err("renew false".into()); }
        if !boolean(&mut app, &api.release_sql("app's", &t)).map_err(e)? { return Err("release false".into()); }
        let st = value(&mut app, &api.acquire_slot_sql("app's", 1, "1 second")).map_err(e)?.ok_or("NULL slot")?;
        if !boolean(&mut app, &api.renew_slot_sql("app's", &st, "1 second")).map_err(e)? { return Err("renew_slot false".into()); }
        if !boolean(&mut app, &api.release_slot_sql("app's", &st)).map_err(e)? { return Err("release_slot false".into()); }
        // another role's lease is fenced and held for it too
        if acquire(&mut app, api, "owned", "1 second").map_err(e)?.is_some() { return Err("granted the superuser's live lease".into()); }
        Ok(())
    })();
    if let Err(e) = cycle {
        faults.push(format!("app: the documented cycle failed: {e}"));
    }
    if snapshot(&mut admin) != before {
        faults.push(format!("the state tables changed: before {before:?}, after {:?}", snapshot(&mut admin)));
    }
    let mut stranger = cluster.connect_as("stranger");
    for sql in [
        api.acquire_sql("stranger's", "1 second"),
        api.renew_sql("owned", &token, "1 second"),
        api.release_sql("owned", &token),
        api.check_fence_sql("owned", fence),
        api.acquire_slot_sql("stranger's", 1, "1 second"),
        api.renew_slot_sql("owned", &slot, "1 second"),
        api.release_slot_sql("owned", &slot),
    ] {
        if let Err(e) = refused_in_txn(&mut stranger, &sql, "42501") {
            faults.push(format!("a role without usage: {e}"));
        }
    }
    faults.extend(server_crashes(&cluster).into_iter().map(|c| format!("server crash: {c}")));
    faults
}

/// An application role given exactly.grant_usage('app') can call every lease and slot
/// function and read the tables, and cannot INSERT/UPDATE/DELETE/TRUNCATE/lock
/// exactly.leases or exactly.slots (42501); a role without it gets 42501 from every function.
#[test]
fn an_app_role_calls_everything_but_cannot_write_leases_or_slots() {
    let faults = privilege_faults(EXACTLY);
    assert!(faults.is_empty(), "{} fault(s):\n{}", faults.len(), faults.join("\n"));
}

/// How one extreme call must end.
#[derive(Clone, Copy, Debug)]
enum Want {
    State(&'static str),
    /// succeeds, returning this first value ("t", "f"), or any non-NULL value for "*"
    Value(&'static str),
    /// succeeds with this many rows
    Rows(usize),
    /// succeeds with one row whose value is NULL
    Null,
}

fn expect(c: &mut Client, sql: &str, want: Want) -> Result<Rows, String> {
    let result = raw(c, sql);
    let _ = raw(c, "ROLLBACK");
    let shown: String = if sql.len() > 160 { format!("{}...", &sql[..sql.char_indices().nth(150).map(|(i, _)| i).unwrap_or(sql.len())]) } else { sql.to_string() };
    match (result, want) {
        (Err(e), _) if state(&e) == "XX000" => Err(format!("`{shown}`: INTERNAL ERROR XX000: {}", describe(&e))),
        (Err(e), Want::State(s)) if state(&e) == s => Ok(vec![]),
        (Err(e), _) => Err(format!("`{shown}`: expected {want:?}, got {}", describe(&e))),
        (Ok(rows), Want::State(s)) => Err(format!("`{shown}`: succeeded ({rows:?}), expected SQLSTATE {s}")),
        (Ok(rows), Want::Rows(n)) if rows.len() == n => Ok(rows),
        (Ok(rows), Want::Null) if rows.len() == 1 && first(&rows).is_none() => Ok(rows),
        (Ok(rows), Want::Value(v)) if rows.len() == 1 && (first(&rows).as_deref() == Some(v) || (v == "*" && first(&rows).is_some())) => Ok(rows),
        (Ok(rows), _) => Err(format!("`{shown}`: expected {want:?}, got {rows:?}")),
    }
}

fn check(faults: &mut Vec<String>, c: &mut Client, sql: &str, want: Want) {
    if let Err(e) = expect(c, sql, want) {
        faults.push(e);
    }
}

fn extreme_faults(api: Api) -> Vec<String> {
    let cluster = Cluster::start();
    let mut c = prepare(&cluster);
    let s = api.0;
    let mut faults = Vec::new();
    let (tok, _) = acquire(&mut c, api, "x", "1 hour").unwrap().unwrap();
    let stok = value(&mut c, &api.acquire_slot_sql("sx", 3, "1 hour")).unwrap().unwrap();
    use Want::*;
    let mut cases: Vec<(String, Want)> = vec![
        // NULLs: 22004
        (format!("SELECT * FROM {s}.acquire_lease(NULL, '1 second')"), State("22004")),
        (format!("SELECT * FROM {s}.acquire_lease('x2', NULL)"), State("22004")),
        (format!("SELECT * FROM {s}.acquire_lease(NULL, NULL)"), State("22004")),
        (format!("SELECT {s}.renew_lease(NULL, '{tok}', '1 second')"), State("22004")),
        (format!("SELECT {s}.renew_lease('x', NULL, '1 second')"), State("22004")),
        (format!("SELECT {s}.renew_lease('x', '{tok}', NULL)"), State("22004")),
        (format!("SELECT {s}.release_lease(NULL, '{tok}')"), State("22004")),
        (format!("SELECT {s}.release_lease('x', NULL)"), State("22004")),
        (format!("SELECT {s}.check_fence(NULL, 1)"), State("22004")),
        (format!("SELECT {s}.check_fence('x', NULL)"), State("22004")),
        (format!("SELECT {s}.acquire_slot(NULL, 3, '1 second')"), State("22004")),
        (format!("SELECT {s}.acquire_slot('sx2', NULL, '1 second')"), State("22004")),
        (format!("SELECT {s}.acquire_slot('sx2', 3, NULL)"), State("22004")),
        (format!("SELECT {s}.renew_slot(NULL, '{stok}', '1 second')"), State("22004")),
        (format!("SELECT {s}.renew_slot('sx', NULL, '1 second')"), State("22004")),
        (format!("SELECT {s}.renew_slot('sx', '{stok}', NULL)"), State("22004")),
        (format!("SELECT {s}.release_slot(NULL, '{stok}')"), State("22004")),
        (format!("SELECT {s}.release_slot('sx', NULL)"), State("22004")),
        // empty names: 22023
        (format!("SELECT * FROM {s}.acquire_lease('', '1 second')"), State("22023")),
        (format!("SELECT {s}.renew_lease('', '{tok}', '1 second')"), State("22023")),
        (format!("SELECT {s}.release_lease('', '{tok}')"), State("22023")),
        (format!("SELECT {s}.check_fence('', 1)"), State("22023")),
        (format!("SELECT {s}.acquire_slot('', 3, '1 second')"), State("22023")),
        (format!("SELECT {s}.renew_slot('', '{stok}', '1 second')"), State("22023")),
        (format!("SELECT {s}.release_slot('', '{stok}')"), State("22023")),
        // ttl not positive: 22023
        (format!("SELECT * FROM {s}.acquire_lease('y', '0')"), State("22023")),
        (format!("SELECT * FROM {s}.acquire_lease('y', '-1 second')"), State("22023")),
        (format!("SELECT * FROM {s}.acquire_lease('y', '-1 microsecond')"), State("22023")),
        (format!("SELECT * FROM {s}.acquire_lease('y', '1 day -25 hours')"), State("22023")),
        (format!("SELECT * FROM {s}.acquire_lease('y', '-1000 years')"), State("22023")),
        (format!("SELECT {s}.renew_lease('x', '{tok}', '0')"), State("22023")),
        (format!("SELECT {s}.renew_lease('x', '{tok}', '-1 hour')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sy', 3, '0')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sy', 3, '-5 minutes')"), State("22023")),
        (format!("SELECT {s}.renew_slot('sx', '{stok}', '0')"), State("22023")),
        (format!("SELECT {s}.renew_slot('sx', '{stok}', '-1 second')"), State("22023")),
        // slots outside 1..1000000: 22023
        (format!("SELECT {s}.acquire_slot('sz', 0, '1 second')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sz', -1, '1 second')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sz', 1000001, '1 second')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sz', 2147483647, '1 second')"), State("22023")),
        (format!("SELECT {s}.acquire_slot('sz', -2147483648, '1 second')"), State("22023")),
        // fences never granted for the name: 55006
        (format!("SELECT {s}.check_fence('x', 0)"), State("55006")),
        (format!("SELECT {s}.check_fence('x', -1)"), State("55006")),
        (format!("SELECT {s}.check_fence('x', -9223372036854775808)"), State("55006")),
        (format!("SELECT {s}.check_fence('x', 9223372036854775807)"), State("55006")),
        (format!("SELECT {s}.check_fence('x', 2)"), State("55006")),
        (format!("SELECT {s}.check_fence('never leased', 1)"), State("55006")),
        (format!("SELECT {s}.check_fence('never leased', 0)"), State("55006")),
        // tokens that are not the holder's: false
        (format!("SELECT {s}.renew_lease('x', '00000000-0000-0000-0000-000000000000', '1 second')"), Value("f")),
        (format!("SELECT {s}.release_lease('x', 'ffffffff-ffff-ffff-ffff-ffffffffffff')"), Value("f")),
        (format!("SELECT {s}.renew_lease('never leased', '{tok}', '1 second')"), Value("f")),
        (format!("SELECT {s}.release_lease('X', '{tok}')"), Value("f")),
        (format!("SELECT {s}.renew_slot('sx', '{tok}', '1 second')"), Value("f")),
        (format!("SELECT {s}.release_slot('sx2', '{stok}')"), Value("f")),
        (format!("SELECT {s}.renew_slot('sx', '00000000-0000-0000-0000-000000000000', '1 second')"), Value("f")),
        // the bad calls changed nothing: the holders still hold, the names are still free
        (format!("SELECT {s}.renew_lease('x', '{tok}', '1 hour')"), Value("t")),
        (format!("SELECT {s}.check_fence('x', 1)"), Rows(1)),
        (format!("SELECT {s}.renew_slot('sx', '{stok}', '1 hour')"), Value("t")),
        (format!("SELECT fence FROM {s}.acquire_lease('y', '1 second')"), Value("1")),
        (format!("SELECT fence FROM {s}.acquire_lease('x2', '1 second')"), Value("1")),
        (format!("SELECT count(*) FROM {s}.leases WHERE name = ''"), Value("0")),
        (format!("SELECT {s}.acquire_slot('sz', 1, '1 second')"), Value("*")),
        (format!("SELECT {s}.acquire_slot('sy', 1, '1 second')"), Value("*")),
        (format!("SELECT count(*) FROM {s}.slots WHERE name IN ('sx2', '')"), Value("0")),
        // named arguments, as the README's examples call them
        (format!("SELECT token, fence FROM {s}.acquire_lease(name => 'named', ttl => '30 seconds')"), Rows(1)),
        (format!("SELECT {s}.check_fence(name => 'named', fence => 1)"), Rows(1)),
        (format!("SELECT {s}.acquire_slot(name => 'named', slots => 3, ttl => '2 minutes')"), Value("*")),
        (format!("SELECT {s}.acquire_slot('sync:tenant-42', 3, ttl => '2 minutes')"), Value("*")),
        // the limits themselves
        (format!("SELECT {s}.acquire_slot('big', 1000000, '1 second')"), Value("*")),
        (format!("SELECT {s}.acquire_slot('one', 1, '1 microsecond')"), Value("*")),
        // huge ttls
        (format!("SELECT * FROM {s}.acquire_lease('forever', '1 second')"), Rows(0)),
        (format!("SELECT {s}.check_fence('forever', 1)"), Rows(1)),
        (format!("SELECT {s}.acquire_slot('forever slot', 1, '1000 years')"), Value("*")),
        (format!("SELECT {s}.acquire_slot('forever slot', 1, '1 second')"), Null),
    ];
    let forever = acquire(&mut c, api, "forever", "1000 years");
    for (sql, want) in cases.drain(..) {
        check(&mut faults, &mut c, &sql, want);
    }
    match forever {
        Ok(Some((token, 1))) => {
            check(&mut faults, &mut c, &api.renew_sql("forever", &token, "1000 years"), Value("t"));
            // past the end of time: refused cleanly, or renewed
            match raw(&mut c, &api.renew_sql("forever", &token, "290000 years")) {
                Err(e) if state(&e) == "XX000" => faults.push(format!("renew_lease for 290000 years: INTERNAL ERROR XX000: {}", describe(&e))),
                Err(_) => {}
                Ok(rows) if first(&rows).as_deref() == Some("t") => {}
                Ok(rows) => faults.push(format!("renew_lease of a live lease for 290000 years returned {rows:?}")),
            }
            check(&mut faults, &mut c, &api.release_sql("forever", &token), Value("t"));
        }
        other => faults.push(format!("acquire_lease('forever', '1000 years') on a fresh name: {:?}", other.map_err(|e| describe(&e)))),
    }
    // a ttl that takes expires_at past the end of time: refused cleanly (or granted and held)
    for (sql, held) in [
        (api.acquire_sql("too far", "290000 years"), api.acquire_sql("too far", "1 second")),
        (api.acquire_slot_sql("too far", 1, "290000 years"), api.acquire_slot_sql("too far", 1, "1 second")),
    ] {
        match raw(&mut c, &sql) {
            Err(e) if state(&e) == "XX000" => faults.push(format!("`{sql}`: INTERNAL ERROR XX000: {}", describe(&e))),
            Err(_) => {}
            Ok(rows) if rows.len() == 1 && first(&rows).is_some() => {
                // granted: then it is held
                let again = raw(&mut c, &held).map(|r| (r.len(), first(&r)));
                if !matches!(again, Ok((0, _)) | Ok((1, None))) {
                    faults.push(format!("`{sql}` was granted but `{held}` then got {again:?}"));
                }
            }
            Ok(rows) => faults.push(format!("`{sql}` returned {rows:?}")),
        }
        let _ = raw(&mut c, "ROLLBACK");
    }
    // odd names: each its own lease, granted (fence 1), then held, fenced, renewed, released
    let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
    let random_unicode: String = (0..10_000)
        .map(|_| {
            let ranges = [(0x4E00u32, 0x9FFF), (0x0400, 0x04FF), (0x1F300, 0x1F5FF), (0x0600, 0x06FF), (0x00A1, 0x00FF)];
            let (lo, hi) = ranges[(rng.next() % ranges.len() as u64) as usize];
            char::from_u32(lo + (rng.next() % (hi - lo) as u64) as u32).unwrap()
        })
        .collect();
    let names: Vec<String> = vec![
        "n".repeat(10_000),
        format!("{}m", "n".repeat(9_999)),
        random_unicode.clone(),
        format!("{}!", &random_unicode[..random_unicode.char_indices().nth(9_999).unwrap().0]),
        random_unicode.chars().skip(5_000).take(1_000).collect(),
        random_unicode.chars().skip(2_000).take(2_500).collect(),
        "ключ-🔒-名前-\u{202E}-مفتاح".into(),
        "\u{e9}".into(),
        "e\u{301}".into(),
        "a".into(),
        "A".into(),
        "a ".into(),
        " ".into(),
        "\t\n".into(),
        "'; DROP TABLE guarded; --".into(),
        "\\".into(),
        "%".into(),
        "_".into(),
        "a%".into(),
        "$1".into(),
        "x\u{1}y".into(),
    ];
    for name in &names {
        // names key the state tables' indexes: longer than 1000 bytes is refused (22023)
        if name.len() > 1000 - "#slot".len() {
            for sql in [api.acquire_sql(name, "1 minute"), api.acquire_slot_sql(name, 1, "1 minute")] {
                let got = raw(&mut c, &sql).map(|_| ()).map_err(|e| state(&e));
                if name.len() > 1000 && got != Err("22023".into()) {
                    faults.push(format!("a name of {} bytes: `{}...` gave {got:?}, not 22023", name.len(), sql.chars().take(40).collect::<String>()));
                }
                let _ = raw(&mut c, "ROLLBACK");
            }
            continue;
        }
        let count = name.chars().count();
        let what = if count > 40 {
            let head: String = name.chars().take(12).collect();
            let tail: String = name.chars().skip(count - 4).collect();
            format!("name {head:?}...{tail:?} ({count} chars, {} bytes)", name.len())
        } else {
            format!("name {name:?}")
        };
        let outcome = (|| -> Result<(), String> {
            let e = |e: postgres::Error| describe(&e);
            let (token, fence) = acquire(&mut c, api, name, "1 minute").map_err(e)?.ok_or("no row for a fresh name")?;
            if fence != 1 {
                return Err(format!("a fresh name's first fence is {fence}"));
            }
            if acquire(&mut c, api, name, "1 minute").map_err(e)?.is_some() {
                return Err("granted twice".into());
            }
            raw(&mut c, &format!("BEGIN; {}; COMMIT", api.check_fence_sql(name, 1))).map_err(e)?;
            if !boolean(&mut c, &api.renew_sql(name, &token, "1 minute")).map_err(e)? {
                return Err("renew false".into());
            }
            if !boolean(&mut c, &api.release_sql(name, &token)).map_err(e)? {
                return Err("release false".into());
            }
            let (_, again) = acquire(&mut c, api, name, "1 minute").map_err(e)?.ok_or("no row after the release")?;
            if again != 2 {
                return Err(format!("fence {again} after a release"));
            }
            Ok(())
        })();
        let _ = raw(&mut c, "ROLLBACK");
        if let Err(e) = outcome {
            faults.push(format!("{what}, as a lease: {e}"));
        }
        let outcome = (|| -> Result<(), String> {
            let e = |e: postgres::Error| describe(&e);
            let slot_name = format!("{name}#slot");
            let slot = value(&mut c, &api.acquire_slot_sql(&slot_name, 1, "1 minute")).map_err(e)?.ok_or("NULL for a fresh slot")?;
            if value(&mut c, &api.acquire_slot_sql(&slot_name, 1, "1 minute")).map_err(e)?.is_some() {
                return Err("the second of 1 slot was granted".into());
            }
            if !boolean(&mut c, &api.release_slot_sql(&slot_name, &slot)).map_err(e)? {
                return Err("release_slot false".into());
            }
            Ok(())
        })();
        let _ = raw(&mut c, "ROLLBACK");
        if let Err(e) = outcome {
            faults.push(format!("{what}, as a slot: {e}"));
        }
    }
    faults.extend(server_crashes(&cluster).into_iter().map(|c| format!("server crash: {c}")));
    faults
}

/// Extreme and invalid arguments: NULLs (22004), empty names, non-positive ttls and slots
/// outside 1..1000000 (22023), fences 0 / negative / i64::MIN / i64::MAX / not yet granted
/// (55006), wrong tokens (false), ttls of 1 µs and 1000 years, one past the end of time,
/// names of 10,000 characters (repetitive and random unicode), look-alike and SQL-like
/// names: never XX000, the bad calls change nothing, each name is its own lease.
#[test]
fn extreme_arguments_get_their_documented_sqlstates() {
    let faults = extreme_faults(EXACTLY);
    assert!(faults.is_empty(), "{} fault(s):\n{}", faults.len(), faults.join("\n"));
}

/// The naive twin runs the hostile role's code, lets the application write its tables, and
/// takes bad arguments: each check above catches it.
#[test]
fn twin_naive_leases_run_hostile_code_take_direct_writes_and_bad_arguments() {
    let hostile = hostile_faults(NAIVE, &["public, pg_catalog"]);
    let privileges = privilege_faults(NAIVE);
    let extreme = extreme_faults(NAIVE);
    eprintln!(
        "twin: hostile:\n{}\ntwin: privileges:\n{}\ntwin: extreme:\n{}",
        hostile.join("\n"),
        privileges.join("\n"),
        extreme.join("\n")
    );
    assert!(hostile.iter().any(|f| f.contains("hostile code ran")), "hostile code not detected");
    assert!(privileges.iter().any(|f| f.contains("succeeded") && f.contains("expected 42501")), "direct writes not detected");
    assert!(extreme.iter().any(|f| f.contains("expected State(\"22023\")") || f.contains("expected SQLSTATE 22023")), "bad arguments not detected");
    assert!(extreme.iter().any(|f| f.contains("22004")), "NULLs not detected");
}
