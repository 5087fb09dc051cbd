//! Claims as a queue (docs/coordination.md, "Claims as a queue"; README, "Named locks and
//! exactly-once work claims"), tested from the contract alone, as an outsider: failed
//! attempts and `max_attempts` (dead letters), `retry_after` backoff, `order_by`,
//! `complete_rows`/`fail_rows` racing lease expiry (with `claim_batch(complete => ...)`),
//! composite, uuid and timestamp/numeric keys under many workers and foreign session
//! settings, and careless or hostile callers (NULLs, bad numbers, an application role).
//!
//! Timing checks compare the client's wall clock (`SystemTime`) with the server's
//! `clock_timestamp()`: both read the same host's realtime clock. Every timing check takes
//! the client's times around a call as bounds on the moment the server acted, so that it
//! cannot fire for an implementation that keeps the contract: a claim is surely held from
//! the moment its `claim_batch` returned until `lease` after that call *started* (or until
//! a call that took the row out *started*); a claim's lease surely ran out `lease` after
//! its `claim_batch` *returned*.
//!
//! Every user table here has a trigger that logs each change of its done column (old and
//! new value, the writing transaction's `txid_current()` and `clock_timestamp()`): that is
//! how "marked done exactly once, and only by a completion that took the row" is checked,
//! independently of what the functions return.
//!
//! Twins (each a test of its own, so the checks are shown to be able to fail): the
//! dead-letter checks against a run without `max_attempts`; the backoff checks against a
//! run without `retry_after`; the lease-race checks against a naive PL/pgSQL queue whose
//! completion forgets to check the lease.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_no_faults, at_once, Client, Cluster, XorShift};
use postgres::types::ToSql;
use serde_json::Value;

// ------------------------------------------------------------------------------------------
// helpers

/// A cluster of its own and a connection to it, on which `setup` made the test's tables.
fn cluster_with(setup: impl FnOnce(&mut Client)) -> (Cluster, Client) {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    setup(&mut client);
    (cluster, client)
}

/// The workers' logs as one `$log`: of each named field, every worker's entries in turn.
macro_rules! gathered {
    ($logs:expr => $log:ident { $($field:ident),* }) => {{
        let mut all = $log::default();
        for l in $logs {
            $(all.$field.extend(l.$field);)*
        }
        all
    }};
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The SQLSTATE of an error, or what it is when it has none.
fn code(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// The server's message (and detail, hint, where) of an error, for fault reports.
fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{}{}{}{}",
            d.message(),
            d.detail()
                .map(|x| format!(" DETAIL: {x}"))
                .unwrap_or_default(),
            d.hint().map(|x| format!(" HINT: {x}")).unwrap_or_default(),
            d.where_()
                .map(|x| format!(" WHERE: {x}"))
                .unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// The server log's ERROR/PANIC lines and the lines after them, when a test found faults.
fn server_errors(cluster: &Cluster) -> String {
    let log = cluster.server_log();
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("ERROR:")
            || l.contains("PANIC:")
            || l.contains("TRAP:")
            || l.contains("terminated by signal")
        {
            out.extend(
                lines[i..(i + 4).min(lines.len())]
                    .iter()
                    .map(|l| l.to_string()),
            );
        }
    }
    out.join("\n")
}

fn json(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
}

fn id_of(data: &str) -> i64 {
    json(data)["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id in {data}"))
}

/// `[{"id": 1}, {"id": 2}]`, or the bare values `[1, 2]`.
fn keys_of(ids: &[i64], bare: bool) -> String {
    let items: Vec<String> = ids
        .iter()
        .map(|i| {
            if bare {
                i.to_string()
            } else {
                format!("{{\"id\": {i}}}")
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// What one claim_batch call handed out, with the client's clock before and after it.
struct Batch {
    claim: Option<String>,
    data: Vec<String>,
    start: i64,
    ret: i64,
}

fn try_claim(client: &mut Client, args: &str) -> Result<Batch, postgres::Error> {
    let start = now_us();
    let rows = client.query(
        &format!("SELECT claim::text, data::text FROM exactly.claim_batch({args})"),
        &[],
    )?;
    let ret = now_us();
    let claim: Option<String> = rows.first().map(|r| r.get(0));
    if let Some(c) = &claim {
        assert!(
            rows.iter().all(|r| &r.get::<_, String>(0) == c),
            "one claim per call"
        );
    }
    Ok(Batch {
        claim,
        data: rows.iter().map(|r| r.get(1)).collect(),
        start,
        ret,
    })
}

fn claim(client: &mut Client, args: &str) -> Batch {
    try_claim(client, args)
        .unwrap_or_else(|e| panic!("claim_batch({args}) failed: {} {}", code(&e), message(&e)))
}

#[derive(Clone, Copy, Debug)]
struct Took {
    count: i64,
    start: i64,
    ret: i64,
}

fn timed_count(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Took, postgres::Error> {
    let start = now_us();
    let count: i64 = client.query_one(sql, params)?.get(0);
    Ok(Took {
        count,
        start,
        ret: now_us(),
    })
}

fn complete_rows(client: &mut Client, claim: &str, keys: &str) -> Result<Took, postgres::Error> {
    timed_count(
        client,
        "SELECT exactly.complete_rows($1::text::uuid, $2::text::jsonb)",
        &[&claim, &keys],
    )
}

fn fail_rows(
    client: &mut Client,
    claim: &str,
    keys: &str,
    error: Option<&str>,
) -> Result<Took, postgres::Error> {
    timed_count(
        client,
        "SELECT exactly.fail_rows($1::text::uuid, $2::text::jsonb, $3::text)",
        &[&claim, &keys, &error],
    )
}

fn complete_batch(client: &mut Client, claim: &str) -> Result<Took, postgres::Error> {
    timed_count(
        client,
        "SELECT exactly.complete_batch($1::text::uuid)",
        &[&claim],
    )
}

fn release_claim(client: &mut Client, claim: &str) -> Result<Took, postgres::Error> {
    timed_count(
        client,
        "SELECT exactly.release_claim($1::text::uuid)",
        &[&claim],
    )
}

/// How many rows a claim holds (extend_claim: 0 once it has ended).
fn holding(client: &mut Client, claim: &str) -> i64 {
    client
        .query_one(
            "SELECT exactly.extend_claim($1::text::uuid, '5 minutes')",
            &[&claim],
        )
        .unwrap()
        .get(0)
}

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// The count `sql` must be `expected`; else `fault(the count)` is a fault.
fn expect_rows(
    client: &mut Client,
    sql: &str,
    expected: i64,
    faults: &mut Vec<String>,
    fault: impl FnOnce(i64) -> String,
) {
    let got = count(client, sql);
    if got != expected {
        faults.push(fault(got));
    }
}

/// The call `what` must have failed with `state`: when it succeeded, `fault(its result)` is
/// a fault, and so is another SQLSTATE.
fn expect_refused<T>(
    what: &str,
    result: Result<T, postgres::Error>,
    state: &str,
    faults: &mut Vec<String>,
    fault: impl FnOnce(T) -> String,
) {
    match result {
        Ok(r) => faults.push(fault(r)),
        Err(e) if code(&e) != state => faults.push(format!(
            "{what}: {} {}, expected {state}",
            code(&e),
            message(&e)
        )),
        Err(_) => {}
    }
}

/// The faults that mention any of `words`.
fn mentioning<'a>(faults: &'a [String], words: &'a [&str]) -> impl Iterator<Item = &'a String> {
    faults
        .iter()
        .filter(|f| words.iter().any(|w| f.contains(w)))
}

/// Runs `sql`, which must fail with a SQLSTATE other than XX000: Ok(code), or Err(what
/// happened instead).
fn refused_cleanly(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<String, String> {
    match client.query(sql, params) {
        Ok(rows) => Err(format!("succeeded ({} rows)", rows.len())),
        Err(e) => match e.code() {
            Some(c) if c.code() != "XX000" => Ok(c.code().to_string()),
            _ => Err(format!("{}: {}", code(&e), message(&e))),
        },
    }
}

/// A log of every change of `done_at` in `table`: the row's key (`key_expr`, over NEW), the
/// old and new value, the writing transaction and the server's clock.
fn log_done(client: &mut Client, table: &str, key_expr: &str) {
    client
        .batch_execute(&format!(
            r#"CREATE TABLE IF NOT EXISTS done_log (tbl text, key text, old_done timestamptz,
                   new_done timestamptz, xid bigint, at_us bigint);
               CREATE FUNCTION log_done_{table}() RETURNS trigger LANGUAGE plpgsql AS $f$
               BEGIN
                   INSERT INTO public.done_log VALUES ('{table}', {key_expr}, OLD.done_at,
                       NEW.done_at, txid_current(),
                       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
                   RETURN NULL;
               END $f$;
               CREATE TRIGGER log_done AFTER UPDATE ON {table} FOR EACH ROW
                   WHEN (OLD.done_at IS DISTINCT FROM NEW.done_at)
                   EXECUTE FUNCTION log_done_{table}();"#
        ))
        .unwrap();
}

/// Rows of `table` whose done_at was not set exactly once (from NULL to a time, never
/// changed again), and how many rows were.
fn done_exactly_once_faults(client: &mut Client, table: &str) -> Vec<String> {
    let mut faults = Vec::new();
    let rows = client
        .query(
            "SELECT key, count(*) FILTER (WHERE old_done IS NULL AND new_done IS NOT NULL),
                    count(*) FROM done_log WHERE tbl = $1 GROUP BY key",
            &[&table],
        )
        .unwrap();
    for r in &rows {
        let (key, set, all): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if set != 1 || all != 1 {
            faults.push(format!(
                "{table} row {key}: done_at changed {all} times ({set} from NULL to a time)"
            ));
        }
    }
    let total = count(client, &format!("SELECT count(*) FROM {table}"));
    let pending = count(
        client,
        &format!("SELECT count(*) FROM {table} WHERE done_at IS NULL"),
    );
    if rows.len() as i64 != total || pending != 0 {
        faults.push(format!(
            "{table}: {} of {total} rows were marked done, {pending} still pending",
            rows.len()
        ));
    }
    faults
}

/// A row surely held by a claim from `ret` to `end` (see the file's comment).
#[derive(Clone, Debug)]
struct Hold {
    row: i64,
    claim: String,
    ret: i64,
    end: i64,
}

/// Rows surely held by two claims at the same moment.
fn overlapping_holds(holds: &[Hold]) -> Vec<String> {
    let mut by_row: HashMap<i64, Vec<&Hold>> = HashMap::new();
    for h in holds {
        by_row.entry(h.row).or_default().push(h);
    }
    let mut faults = Vec::new();
    for (row, mut hs) in by_row {
        hs.sort_by_key(|h| h.ret);
        let mut widest: Option<&Hold> = None;
        for h in hs {
            if let Some(w) = widest {
                if h.ret < h.end && h.ret < w.end {
                    faults.push(format!(
                        "row {row} delivered to two live claims at once: {} (surely held until \
                         {} µs later) and {}",
                        w.claim,
                        w.end - h.ret,
                        h.claim
                    ));
                }
            }
            if widest.is_none_or(|w| h.end > w.end) {
                widest = Some(h);
            }
        }
    }
    faults
}

/// The client's view of one claim: what it still holds and when each row surely left it,
/// checked against what each call returned.
struct Held {
    claim: String,
    rows: Vec<i64>,
    start: i64,
    ret: i64,
    lease_us: i64,
    remaining: BTreeSet<i64>,
    ended: bool,
    left: HashMap<i64, i64>,
}

impl Held {
    fn new(claim: &str, rows: &[i64], batch: &Batch, lease_us: i64) -> Held {
        Held {
            claim: claim.to_string(),
            rows: rows.to_vec(),
            start: batch.start,
            ret: batch.ret,
            lease_us,
            remaining: rows.iter().copied().collect(),
            ended: false,
            left: HashMap::new(),
        }
    }

    fn remaining(&self) -> Vec<i64> {
        self.remaining.iter().copied().collect()
    }

    /// A call named `keys` (for complete_batch/release_claim: every remaining row) and
    /// returned `t`: either it took all the named rows the claim holds, or (the claim has
    /// ended) none. Returns whether it took them.
    fn took(&mut self, what: &str, keys: &[i64], t: &Took, faults: &mut Vec<String>) -> bool {
        let named: Vec<i64> = keys
            .iter()
            .copied()
            .filter(|k| self.remaining.contains(k))
            .collect();
        if t.count == 0 {
            if !named.is_empty() && !self.ended && t.ret < self.start + self.lease_us {
                faults.push(format!(
                    "{what} on claim {} returned 0 while its lease surely ran (at least {} ms \
                     more) and it held {named:?}",
                    self.claim,
                    (self.start + self.lease_us - t.ret) / 1000
                ));
            }
            if !named.is_empty() {
                self.ended = true;
            }
            return false;
        }
        if t.count != named.len() as i64 {
            faults.push(format!(
                "{what} on claim {} returned {}, expected 0 or {} (the named rows it held)",
                self.claim,
                t.count,
                named.len()
            ));
        }
        if self.ended {
            faults.push(format!(
                "{what} on claim {} took {} rows after the claim had ended",
                self.claim, t.count
            ));
        }
        if t.start > self.ret + self.lease_us {
            faults.push(format!(
                "{what} on claim {} took {} rows although its lease had surely run out {} ms \
                 before the call",
                self.claim,
                t.count,
                (t.start - self.ret - self.lease_us) / 1000
            ));
        }
        for k in named {
            self.remaining.remove(&k);
            self.left.insert(k, t.start);
        }
        if self.remaining.is_empty() {
            self.ended = true;
        }
        true
    }

    fn holds(&self) -> Vec<Hold> {
        self.rows
            .iter()
            .map(|r| Hold {
                row: *r,
                claim: self.claim.clone(),
                ret: self.ret,
                end: (self.start + self.lease_us).min(*self.left.get(r).unwrap_or(&i64::MAX)),
            })
            .collect()
    }
}

/// `held.took` for a call's result; an error is a fault. Some(times) when it took the rows.
fn account(
    held: &mut Held,
    what: &str,
    keys: &[i64],
    result: Result<Took, postgres::Error>,
    faults: &mut Vec<String>,
) -> Option<Took> {
    match result {
        Ok(t) => held.took(what, keys, &t, faults).then_some(t),
        Err(e) => {
            faults.push(format!(
                "{what} on claim {}: {} {}",
                held.claim,
                code(&e),
                message(&e)
            ));
            None
        }
    }
}

// ------------------------------------------------------------------------------------------
// 1. max_attempts: rows that keep failing are given up after exactly max_attempts

const JOBS: i64 = 700;
const JOB_LEASE_US: i64 = 800_000;

fn bad_job(id: i64) -> bool {
    id % 7 == 0
}

fn jobs_table(client: &mut Client) {
    client
        .batch_execute(&format!(
            "CREATE TABLE jobs (id int PRIMARY KEY, payload text NOT NULL, done_at timestamptz);
             INSERT INTO jobs SELECT i, 'job ' || i FROM generate_series(1, {JOBS}) i;"
        ))
        .unwrap();
    log_done(client, "jobs", "NEW.id::text");
}

/// Pending rows that are not given up.
const JOBS_LEFT: &str = "SELECT count(*) FROM jobs j WHERE j.done_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM exactly.claim_attempts a WHERE a.rel = 'jobs'::regclass
       AND (a.key::jsonb ->> 'id')::int = j.id AND a.given_up_at IS NOT NULL)";

#[derive(Default)]
struct JobsLog {
    holds: Vec<Hold>,
    /// (row, claim call start, claim call return)
    deliveries: Vec<(i64, i64, i64)>,
    /// per bad row and delivery (claim return): the fail_rows text that failed it, if one
    /// did, and how the worker let it fail
    fates: Vec<(i64, i64, Option<String>, &'static str)>,
    /// texts of fail_rows calls that took nothing (their text must never be kept)
    took_nothing: Vec<String>,
    faults: Vec<String>,
}

/// A worker's fail_rows of its bad rows (`bad`, bare keys or not) with `text`, accounted as
/// `what`: the rows' fate and how they failed, (Some(text), what) when it took them; when it
/// took nothing, `text` goes to `took_nothing` and the answer is (None, `nothing`).
fn fail_bad_rows(
    client: &mut Client,
    held: &mut Held,
    (bad, bare): (&[i64], bool),
    (what, text, nothing): (&'static str, String, &'static str),
    took_nothing: &mut Vec<String>,
    faults: &mut Vec<String>,
) -> (Option<String>, &'static str) {
    let r = fail_rows(client, &held.claim, &keys_of(bad, bare), Some(&text));
    match account(held, what, bad, r, faults) {
        Some(_) => (Some(text), what),
        None => {
            took_nothing.push(text);
            (None, nothing)
        }
    }
}

/// A worker's release_claim of all its claim still holds, accounted as `what`: how its bad
/// rows failed, `what` when it took them, else `nothing`.
fn release_the_rest(
    client: &mut Client,
    held: &mut Held,
    (what, nothing): (&'static str, &'static str),
    faults: &mut Vec<String>,
) -> &'static str {
    let rest = held.remaining();
    let r = release_claim(client, &held.claim);
    match account(held, what, &rest, r, faults) {
        Some(_) => what,
        None => nothing,
    }
}

/// 8 workers: rows `id % 7 == 0` always fail — half the time by fail_rows, half by a
/// release or a lease that runs out (also: fail_rows / release_claim after the lease) —
/// the others are completed by complete_rows or complete_batch.
fn work_the_jobs(cluster: &Cluster, max_attempts: Option<i32>, run_for: Duration) -> JobsLog {
    let deadline = Instant::now() + run_for;
    let args = format!(
        "'jobs', 'done_at', batch => 10, lease => '{} milliseconds'{}",
        JOB_LEASE_US / 1000,
        max_attempts
            .map(|m| format!(", max_attempts => {m}"))
            .unwrap_or_default()
    );
    let logs = at_once(cluster, 8, move |w, client| {
        let mut log = JobsLog::default();
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ ((w as u64 + 1) << 17));
        let mut n = 0;
        while Instant::now() < deadline {
            let b = match try_claim(client, &args) {
                Ok(b) => b,
                Err(e) => {
                    log.faults.push(format!(
                        "worker {w}: claim_batch: {} {}",
                        code(&e),
                        message(&e)
                    ));
                    sleep_ms(20);
                    continue;
                }
            };
            let Some(c) = b.claim.clone() else {
                if count(client, JOBS_LEFT) == 0 {
                    break;
                }
                sleep_ms(20);
                continue;
            };
            n += 1;
            let ids: Vec<i64> = b.data.iter().map(|d| id_of(d)).collect();
            for id in &ids {
                log.deliveries.push((*id, b.start, b.ret));
            }
            let mut held = Held::new(&c, &ids, &b, JOB_LEASE_US);
            let (bad, good): (Vec<i64>, Vec<i64>) = ids.iter().partition(|id| bad_job(**id));
            let bare = rng.next() % 2 == 0;
            let text = format!("boom {w}-{n}");
            let mut fate = None;
            let mut how = "";
            let mode = if bad.is_empty() {
                8 + rng.next() % 2
            } else {
                rng.next() % 8
            };
            let faults = &mut log.faults;
            if (2..=7).contains(&mode) && !good.is_empty() {
                let r = complete_rows(client, &c, &keys_of(&good, bare));
                account(&mut held, "complete_rows", &good, r, faults);
            }
            let took_nothing = &mut log.took_nothing;
            match mode {
                // 0 | 1: fail_rows, then complete_batch completes the rest;
                // 2 | 3: complete_rows (above), then fail_rows
                0..=3 => {
                    (fate, how) = fail_bad_rows(
                        client,
                        &mut held,
                        (&bad, bare),
                        ("fail_rows", text, "lease ran out (fail_rows took nothing)"),
                        took_nothing,
                        faults,
                    );
                    if mode <= 1 {
                        let rest = held.remaining();
                        let r = complete_batch(client, &c);
                        account(&mut held, "complete_batch", &rest, r, faults);
                    }
                }
                4 => {
                    how = release_the_rest(
                        client,
                        &mut held,
                        (
                            "release_claim",
                            "lease ran out (release_claim took nothing)",
                        ),
                        faults,
                    );
                }
                5 => how = "lease ran out", // the lease runs out
                // too late: the lease has run out; these must take nothing
                6 => {
                    sleep_ms(JOB_LEASE_US as u64 / 1000 + 100);
                    (fate, how) = fail_bad_rows(
                        client,
                        &mut held,
                        (&bad, bare),
                        (
                            "late fail_rows",
                            format!("late {w}-{n}"),
                            "lease ran out, then a late fail_rows took nothing",
                        ),
                        took_nothing,
                        faults,
                    );
                }
                7 => {
                    sleep_ms(JOB_LEASE_US as u64 / 1000 + 100);
                    how = release_the_rest(
                        client,
                        &mut held,
                        (
                            "late release_claim",
                            "lease ran out, then a late release_claim took nothing",
                        ),
                        faults,
                    );
                }
                8 => {
                    let r = complete_batch(client, &c);
                    account(&mut held, "complete_batch", &ids, r, faults);
                }
                _ => {
                    let r = complete_rows(client, &c, &keys_of(&ids, bare));
                    account(&mut held, "complete_rows", &ids, r, faults);
                }
            }
            for id in &bad {
                log.fates.push((*id, b.ret, fate.clone(), how));
            }
            log.holds.extend(held.holds());
        }
        log
    });
    gathered!(logs => JobsLog { holds, deliveries, fates, took_nothing, faults })
}

fn check_jobs(client: &mut Client, log: &JobsLog, max_attempts: i64) -> Vec<String> {
    let mut faults = log.faults.clone();
    faults.extend(overlapping_holds(&log.holds));
    let mut deliveries: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for (id, start, ret) in &log.deliveries {
        deliveries.entry(*id).or_default().push((*start, *ret));
    }
    let done: HashMap<i64, (i64, i64)> = client
        .query(
            "SELECT key::bigint, count(*) FILTER (WHERE old_done IS NULL AND new_done IS NOT NULL),
                    count(*) FROM done_log WHERE tbl = 'jobs' GROUP BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    type Attempt = (i64, Option<String>, Option<i64>);
    let attempts: HashMap<i64, Attempt> = client
        .query(
            "SELECT (key::jsonb ->> 'id')::bigint, failed_attempts::bigint, last_error,
                    (extract(epoch FROM given_up_at) * 1000000)::bigint
               FROM exactly.claim_attempts WHERE rel = 'jobs'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let pending: HashSet<i64> = client
        .query("SELECT id::bigint FROM jobs WHERE done_at IS NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let took_nothing: HashSet<&String> = log.took_nothing.iter().collect();
    for id in 1..=JOBS {
        let d = deliveries.get(&id).map_or(0, |v| v.len()) as i64;
        let (failed, last_error, given_up) = attempts.get(&id).cloned().unwrap_or((0, None, None));
        let (set, changes) = done.get(&id).copied().unwrap_or((0, 0));
        if !bad_job(id) {
            if set != 1 || changes != 1 || pending.contains(&id) {
                faults.push(format!(
                    "good row {id}: done_at set {set} times ({changes} changes), pending: {}",
                    pending.contains(&id)
                ));
            }
            if failed != d - 1 {
                faults.push(format!(
                    "good row {id}: delivered {d} times, completed once, but failed_attempts = {failed}"
                ));
            }
            if given_up.is_some() {
                faults.push(format!(
                    "good row {id} was given up ({failed} failed attempts)"
                ));
            }
            continue;
        }
        if changes != 0 || !pending.contains(&id) {
            faults.push(format!(
                "bad row {id} was marked done ({changes} changes of done_at)"
            ));
        }
        if d != max_attempts {
            faults.push(format!(
                "bad row {id} was delivered {d} times, not {max_attempts}"
            ));
        }
        if failed != max_attempts {
            faults.push(format!(
                "bad row {id}: failed_attempts = {failed}, not {max_attempts}"
            ));
        }
        let last = log.fates.iter().filter(|f| f.0 == id).max_by_key(|f| f.1);
        match given_up {
            None => faults.push(format!(
                "bad row {id} is not given up ({failed} failed attempts; last delivery: {})",
                last.map_or("none", |f| f.3)
            )),
            Some(at) => {
                for (start, _) in deliveries.get(&id).into_iter().flatten() {
                    if *start > at {
                        faults.push(format!(
                            "bad row {id} was delivered {} ms after it was given up",
                            (start - at) / 1000
                        ));
                    }
                }
            }
        }
        if let Some((_, _, Some(text), _)) = last {
            if last_error.as_deref() != Some(text.as_str()) {
                faults.push(format!(
                    "bad row {id}: last failed by fail_rows(..., '{text}'), but last_error = {last_error:?}"
                ));
            }
        }
        if let Some(e) = &last_error {
            if took_nothing.contains(e) {
                faults.push(format!(
                    "bad row {id}: last_error = '{e}', the text of a fail_rows that took nothing"
                ));
            }
        }
    }
    faults
}

/// 700 rows, 8 workers, max_attempts 3, lease 800 ms: every seventh row always fails (by
/// fail_rows with a text, by release_claim, by its lease running out, and by fail_rows or
/// release_claim arriving after the lease); the others are completed. Every good row is
/// done exactly once; every bad row was delivered exactly 3 times, never to two live claims
/// at once and never after it was given up, has failed_attempts 3, given_up_at set, the
/// text of its last fail_rows as last_error (never the text of a fail_rows that took
/// nothing), and is still pending. No claim hands it out again (with or without
/// max_attempts) until purge_claim_attempts forgets it.
#[test]
fn rows_that_keep_failing_are_given_up_after_exactly_max_attempts() {
    let (cluster, mut client) = cluster_with(jobs_table);
    let started = Instant::now();
    let log = work_the_jobs(&cluster, Some(3), Duration::from_secs(30));
    eprintln!(
        "worked the jobs in {:?}: {} deliveries, {} fail_rows that took nothing",
        started.elapsed(),
        log.deliveries.len(),
        log.took_nothing.len()
    );
    let mut faults = check_jobs(&mut client, &log, 3);
    for r in client
        .query(
            "SELECT claim::text, leased_until < clock_timestamp(), keys::text FROM exactly.claims
              WHERE rel = 'jobs'::regclass",
            &[],
        )
        .unwrap()
    {
        let (c, expired, keys): (String, bool, String) = (r.get(0), r.get(1), r.get(2));
        faults.push(format!(
            "after the workers stopped, claim {c} (expired: {expired}) still holds {keys}"
        ));
    }
    for args in [
        "'jobs', 'done_at', batch => 1000, max_attempts => 3",
        "'jobs', 'done_at', batch => 1000",
    ] {
        let b = claim(&mut client, &args);
        if let Some(c) = &b.claim {
            let ids: Vec<i64> = b.data.iter().map(|d| id_of(d)).collect();
            faults.push(format!(
                "claim_batch({args}) handed out given-up rows {ids:?}"
            ));
            release_claim(&mut client, c).unwrap();
        }
    }
    let bad: Vec<i64> = (1..=JOBS).filter(|id| bad_job(*id)).collect();
    let dead: Vec<i64> = client
        .query(
            "SELECT (key::jsonb ->> 'id')::bigint FROM exactly.claim_attempts
              WHERE rel = 'jobs'::regclass AND given_up_at IS NOT NULL ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if dead != bad {
        faults.push(format!("the dead letters are {dead:?}, expected {bad:?}"));
    }
    assert_no_faults(&faults);

    // forgotten records: the given-up rows are handed out again
    let purged = count(
        &mut client,
        "SELECT exactly.purge_claim_attempts('0 seconds')",
    );
    assert!(purged >= bad.len() as i64, "purged {purged} records");
    let b = claim(
        &mut client,
        "'jobs', 'done_at', batch => 1000, max_attempts => 3",
    );
    let mut again: Vec<i64> = b.data.iter().map(|d| id_of(d)).collect();
    again.sort();
    assert_eq!(again, bad, "purged rows are handed out again");
}

/// Twin: the same workload without max_attempts. The dead-letter checks above fail (the
/// bad rows keep coming back and are never given up), so they can fail.
#[test]
fn twin_without_max_attempts_the_dead_letter_checks_fail() {
    let (cluster, mut client) = cluster_with(jobs_table);
    let log = work_the_jobs(&cluster, None, Duration::from_secs(5));
    let faults = check_jobs(&mut client, &log, 3);
    let caught = mentioning(&faults, &["not given up", "delivered"]).count();
    eprintln!(
        "twin: {} faults, e.g. {:?}",
        faults.len(),
        faults.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        caught > 0,
        "without max_attempts the checks should see rows that are never given up"
    );
}

// ------------------------------------------------------------------------------------------
// 2. retry_after: exponential backoff

const BACKOFF_US: i64 = 200_000;
const BACKOFF_LEASE_US: i64 = 300_000;
const BACKOFF_FAILURES: usize = 4;

struct Delivery {
    id: i64,
    k: usize,
    ret: i64,
    claimed_at: Option<i64>,
    /// the row's claim_attempts record when it was handed out: failed_attempts,
    /// last_failed_at, retry_at
    attempts: Option<(i64, Option<i64>, Option<i64>)>,
}

struct Failure {
    id: i64,
    n: usize,
    /// the failure happened no sooner than this (client clock, µs)
    lower: i64,
    /// ... and, when a call failed it, no later than this
    upper: Option<i64>,
    how: &'static str,
}

#[derive(Default)]
struct BackoffLog {
    deliveries: Vec<Delivery>,
    failures: Vec<Failure>,
    faults: Vec<String>,
}

fn backoff_table(client: &mut Client, rows: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE b2 (id int PRIMARY KEY, done_at timestamptz);
             INSERT INTO b2 SELECT i FROM generate_series(1, {rows}) i;"
        ))
        .unwrap();
}

/// 4 workers poll claim_batch; each row fails on its first BACKOFF_FAILURES deliveries (by
/// fail_rows, release_claim or its lease running out) and is completed on the next.
fn work_with_backoff(cluster: &Cluster, retry_after: bool) -> BackoffLog {
    let deadline = Instant::now() + Duration::from_secs(40);
    let args = format!(
        "'b2', 'done_at', batch => 3, lease => '{} milliseconds'{}",
        BACKOFF_LEASE_US / 1000,
        if retry_after {
            format!(", retry_after => '{} milliseconds'", BACKOFF_US / 1000)
        } else {
            String::new()
        }
    );
    let counter = Arc::new(Mutex::new(HashMap::<i64, usize>::new()));
    let logs = at_once(cluster, 4, move |w, client| {
        let mut log = BackoffLog::default();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 3) << 21));
        while Instant::now() < deadline {
            let b = match try_claim(client, &args) {
                Ok(b) => b,
                Err(e) => {
                    log.faults
                        .push(format!("claim_batch: {} {}", code(&e), message(&e)));
                    continue;
                }
            };
            let Some(c) = b.claim.clone() else {
                if count(client, "SELECT count(*) FROM b2 WHERE done_at IS NULL") == 0 {
                    break;
                }
                sleep_ms(5);
                continue;
            };
            let ids: Vec<i64> = b.data.iter().map(|d| id_of(d)).collect();
            let claimed_at: Option<i64> = client
                .query_opt(
                    "SELECT (extract(epoch FROM claimed_at) * 1000000)::bigint FROM exactly.claims
                      WHERE claim = $1::text::uuid",
                    &[&c],
                )
                .unwrap()
                .map(|r| r.get(0));
            let mut attempts: HashMap<i64, (i64, Option<i64>, Option<i64>)> = client
                .query(
                    "SELECT (key::jsonb ->> 'id')::bigint, failed_attempts::bigint,
                            (extract(epoch FROM last_failed_at) * 1000000)::bigint,
                            (extract(epoch FROM retry_at) * 1000000)::bigint
                       FROM exactly.claim_attempts
                      WHERE rel = 'b2'::regclass AND (key::jsonb ->> 'id')::bigint = ANY($1)",
                    &[&ids],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
                .collect();
            let mut k_of = HashMap::new();
            for id in &ids {
                let mut m = counter.lock().unwrap();
                let k = m.entry(*id).or_insert(0);
                *k += 1;
                k_of.insert(*id, *k);
                log.deliveries.push(Delivery {
                    id: *id,
                    k: *k,
                    ret: b.ret,
                    claimed_at,
                    attempts: attempts.remove(id),
                });
            }
            let mut held = Held::new(&c, &ids, &b, BACKOFF_LEASE_US);
            let lease_ran_out = b.start + BACKOFF_LEASE_US;
            let (finish, fail): (Vec<i64>, Vec<i64>) =
                ids.iter().partition(|id| k_of[*id] > BACKOFF_FAILURES);
            if !finish.is_empty() {
                let r = complete_rows(client, &c, &keys_of(&finish, false));
                if account(&mut held, "complete_rows", &finish, r, &mut log.faults).is_none() {
                    for id in &finish {
                        log.failures.push(Failure {
                            id: *id,
                            n: k_of[id],
                            lower: lease_ran_out,
                            upper: None,
                            how: "its lease ran out (complete_rows came too late)",
                        });
                    }
                }
            }
            if fail.is_empty() {
                continue;
            }
            let mode = rng.next() % 5;
            let (how, took) = match mode {
                0..=2 => {
                    let text = format!("try {}", k_of[&fail[0]]);
                    let r = fail_rows(client, &c, &keys_of(&fail, false), Some(&text));
                    (
                        "fail_rows",
                        account(&mut held, "fail_rows", &fail, r, &mut log.faults),
                    )
                }
                3 => {
                    let r = release_claim(client, &c);
                    (
                        "release_claim",
                        account(&mut held, "release_claim", &fail, r, &mut log.faults),
                    )
                }
                _ => ("its lease ran out", None),
            };
            for id in &fail {
                log.failures.push(match took {
                    Some(t) => Failure {
                        id: *id,
                        n: k_of[id],
                        lower: t.start,
                        upper: Some(t.ret),
                        how,
                    },
                    None => Failure {
                        id: *id,
                        n: k_of[id],
                        lower: lease_ran_out,
                        upper: None,
                        how: "its lease ran out",
                    },
                });
            }
        }
        log
    });
    gathered!(logs => BackoffLog { deliveries, failures, faults })
}

/// How late (µs) retry_at may be against last_failed_at + backoff: the server may read its
/// clock more than once in a call. Never early.
const RETRY_AT_LATENESS_US: i64 = 5_000;

/// The n-th re-delivery of a row comes no sooner than BACKOFF × 2^(n−1) after its n-th
/// failure (client clocks: always sound). With `server`, also: the record read at the
/// re-delivery says n failures, retry_at - last_failed_at is BACKOFF × 2^(n−1) (up to
/// RETRY_AT_LATENESS_US late, never early), a fail_rows/release_claim failure is dated within
/// its call, no re-delivery came from a claim_batch call that had returned before retry_at
/// (or before last_failed_at + backoff), and the claim's claimed_at is not more than a
/// second after retry_at (workers keep asking). claimed_at itself is not compared with
/// retry_at for earliness: it is a clock reading somewhere in the claiming call, not
/// necessarily the one the decision used; how far it precedes retry_at is noted.
fn check_backoff(log: &BackoffLog, server: bool, notes: &mut Vec<String>) -> Vec<String> {
    let mut faults = Vec::new();
    let failures: HashMap<(i64, usize), &Failure> =
        log.failures.iter().map(|f| ((f.id, f.n), f)).collect();
    for d in log.deliveries.iter().filter(|d| d.k >= 2) {
        let n = d.k - 1;
        let backoff = BACKOFF_US << (n - 1);
        let Some(f) = failures.get(&(d.id, n)) else {
            faults.push(format!(
                "row {} was delivered a {}th time without failing before",
                d.id, d.k
            ));
            continue;
        };
        if d.ret - f.lower < backoff {
            faults.push(format!(
                "row {}: re-delivery {n} came at most {} ms after failure {n} ({}), sooner than \
                 {} ms",
                d.id,
                (d.ret - f.lower) / 1000,
                f.how,
                backoff / 1000
            ));
        }
        if !server {
            continue;
        }
        let Some((failed, Some(last), Some(retry))) = d.attempts else {
            faults.push(format!(
                "row {}: at re-delivery {n} its claim_attempts record is {:?}",
                d.id, d.attempts
            ));
            continue;
        };
        if failed != n as i64 {
            faults.push(format!(
                "row {}: failed_attempts = {failed} at re-delivery {n}",
                d.id
            ));
        }
        if retry - last < backoff || retry - last > backoff + RETRY_AT_LATENESS_US {
            faults.push(format!(
                "row {}: after failure {n}, retry_at - last_failed_at = {} µs, expected {backoff}",
                d.id,
                retry - last
            ));
        }
        if d.ret < retry || d.ret < last + backoff {
            faults.push(format!(
                "row {}: re-delivery {n} was handed out by a claim_batch call that returned {} µs \
                 before its retry_at ({} µs before last_failed_at + {backoff})",
                d.id,
                retry - d.ret,
                last + backoff - d.ret
            ));
        }
        if let Some(upper) = f.upper {
            if last < f.lower || last > upper + 1 {
                faults.push(format!(
                    "row {}: failure {n} by {} ran between {} and {} but last_failed_at = {last}",
                    d.id, f.how, f.lower, upper
                ));
            }
        }
        match d.claimed_at {
            Some(at) if at < retry => notes.push(format!(
                "row {}: re-delivery {n}: claimed_at is {} µs before retry_at (the call returned {} µs after it)",
                d.id,
                retry - at,
                d.ret - retry
            )),
            Some(at) if at - retry > 1_000_000 => faults.push(format!(
                "row {}: re-delivery {n} came {} ms after its retry_at although workers kept asking",
                d.id,
                (at - retry) / 1000
            )),
            Some(_) => {}
            None => faults.push(format!("row {}: its claim was not in exactly.claims", d.id)),
        }
    }
    faults
}

/// retry_after 200 ms: 24 rows, each failing 4 times (fail_rows, release_claim or a lease
/// running out), completed on the 5th delivery, 4 workers asking all the time. Every
/// re-delivery n comes no sooner than 200 ms × 2^(n−1) after failure n (and at most a
/// second late); claim_attempts' retry_at is last_failed_at + 200 ms × 2^(n−1) exactly.
#[test]
fn a_failed_row_waits_its_backoff_before_it_is_handed_out_again() {
    let (cluster, mut client) = cluster_with(|c| backoff_table(c, 24));
    let log = work_with_backoff(&cluster, true);
    let mut faults = log.faults.clone();
    let mut notes = Vec::new();
    faults.extend(check_backoff(&log, true, &mut notes));
    eprintln!("notes:\n  {}", notes.join("\n  "));
    if count(&mut client, "SELECT count(*) FROM b2 WHERE done_at IS NULL") != 0 {
        faults.push("rows left pending".into());
    }
    let mut deliveries: HashMap<i64, i64> = HashMap::new();
    for d in &log.deliveries {
        *deliveries.entry(d.id).or_default() += 1;
    }
    for r in client
        .query(
            "SELECT (key::jsonb ->> 'id')::bigint, failed_attempts::bigint FROM exactly.claim_attempts
              WHERE rel = 'b2'::regclass",
            &[],
        )
        .unwrap()
    {
        let (id, failed): (i64, i64) = (r.get(0), r.get(1));
        if failed != deliveries[&id] - 1 {
            faults.push(format!("row {id}: {} deliveries, failed_attempts = {failed}", deliveries[&id]));
        }
    }
    if deliveries.len() != 24
        || deliveries
            .values()
            .any(|n| (*n as usize) <= BACKOFF_FAILURES)
    {
        faults.push(format!("deliveries per row: {deliveries:?}"));
    }
    assert_no_faults(&faults);
}

/// Twin: the same workload without retry_after; the client-side backoff check fails.
#[test]
fn twin_without_retry_after_the_backoff_check_fails() {
    let (cluster, _client) = cluster_with(|c| backoff_table(c, 12));
    let log = work_with_backoff(&cluster, false);
    let faults = check_backoff(&log, false, &mut Vec::new());
    eprintln!("twin: {} faults, e.g. {:?}", faults.len(), faults.first());
    assert!(
        faults.iter().any(|f| f.contains("sooner than")),
        "without retry_after rows come back at once and the check must say so"
    );
}

/// retry_after 1 µs, one row failed 22 times: retry_at - last_failed_at doubles with every
/// failure and stops at 2^20 × retry_after.
#[test]
fn retry_backoff_doubles_and_is_capped_at_two_to_the_twentieth() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("CREATE TABLE cap (id int PRIMARY KEY, done_at timestamptz); INSERT INTO cap VALUES (1)")
        .unwrap();
    let mut faults = Vec::new();
    for n in 1..=22i64 {
        let asked = Instant::now();
        let c = loop {
            let b = claim(
                &mut client,
                "'cap', 'done_at', batch => 1, lease => '1 minute', retry_after => '1 microsecond'",
            );
            if let Some(c) = b.claim {
                break c;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "the row never came back after failure {}",
                n - 1
            );
            sleep_ms(1);
        };
        let t = fail_rows(&mut client, &c, "[1]", Some(&format!("failure {n}"))).unwrap();
        assert_eq!(t.count, 1);
        let r = client
            .query_one(
                "SELECT failed_attempts::bigint, (extract(epoch FROM retry_at - last_failed_at) * 1000000)::bigint,
                        last_error FROM exactly.claim_attempts WHERE rel = 'cap'::regclass",
                &[],
            )
            .unwrap();
        let (failed, wait, error): (i64, i64, Option<String>) = (r.get(0), r.get(1), r.get(2));
        let expected = 1i64 << (n - 1).min(20);
        if failed != n
            || wait < expected
            || wait > expected + RETRY_AT_LATENESS_US
            || error.as_deref() != Some(&format!("failure {n}"))
        {
            faults.push(format!(
                "after failure {n}: failed_attempts {failed}, retry_at - last_failed_at {wait} µs \
                 (expected {expected}, at most {RETRY_AT_LATENESS_US} µs late), last_error {error:?}"
            ));
        }
    }
    assert_no_faults(&faults);
}

// ------------------------------------------------------------------------------------------
// 3. order_by

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Claims `rel` empty in batches of `batch` with `order_by`, completing each; returns the
/// ids of each batch in the order they came.
fn drain_in_order(
    client: &mut Client,
    rel_literal: &str,
    order_by: &str,
    batch: i32,
) -> Vec<Vec<i64>> {
    let mut batches = Vec::new();
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT claim::text, data::text FROM exactly.claim_batch({rel_literal}, 'done_at',
                            batch => {batch}, order_by => $1)"
                ),
                &[&order_by],
            )
            .unwrap_or_else(|e| panic!("claim_batch({rel_literal}, order_by => {order_by:?}): {} {}", code(&e), message(&e)));
        if rows.is_empty() {
            return batches;
        }
        let claim: String = rows[0].get(0);
        let ids: Vec<i64> = rows.iter().map(|r| id_of(&r.get::<_, String>(1))).collect();
        assert_eq!(
            complete_batch(client, &claim).unwrap().count,
            ids.len() as i64
        );
        batches.push(ids);
        assert!(batches.len() < 1000);
    }
}

/// The batches must be, as sets, the consecutive chunks of `expected`; returns faults, and
/// notes batches whose rows came back in another order than oldest first.
fn compare_batches(
    what: &str,
    got: &[Vec<i64>],
    expected: &[i64],
    batch: usize,
    faults: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let chunks: Vec<&[i64]> = expected.chunks(batch).collect();
    if got.len() != chunks.len() {
        faults.push(format!(
            "{what}: {} batches, expected {}: {got:?}",
            got.len(),
            chunks.len()
        ));
    }
    for (i, (g, e)) in got.iter().zip(&chunks).enumerate() {
        let gs: BTreeSet<_> = g.iter().collect();
        let es: BTreeSet<_> = e.iter().collect();
        if gs != es {
            faults.push(format!(
                "{what}: batch {i} handed out {g:?}, expected (oldest first) {e:?}"
            ));
        } else if g.as_slice() != *e {
            notes.push(format!(
                "{what}: batch {i} came as {g:?}, oldest first is {e:?}"
            ));
        }
    }
}

/// A copy of the table `odd`, rows and all, named `table` (SQL: quoted where it must be).
fn copy_of_odd(client: &mut Client, table: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (LIKE odd INCLUDING ALL); INSERT INTO {table} SELECT * FROM odd"
        ))
        .unwrap();
}

/// A copy of `odd` named `table`, claimed empty with order_by `col` in batches of 6, each
/// batch compared with the next 6 of its rows by `col` (NULLs last), ties by id.
fn drain_copy_of_odd(
    client: &mut Client,
    table: &str,
    col: &str,
    faults: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    copy_of_odd(client, table);
    let expected: Vec<i64> = client
        .query(
            &format!(
                "SELECT id::bigint FROM {table} ORDER BY {} NULLS LAST, id",
                quote_ident(col)
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let got = drain_in_order(client, &format!("'{table}'"), col, 6);
    compare_batches(
        &format!("{table} by {col:?}"),
        &got,
        &expected,
        6,
        faults,
        notes,
    );
}

/// order_by: rows inserted out of key order come out oldest first, ties by key, NULLs last;
/// odd column names ("t", "select", "a b", "ORDER", "data") and an odd table name work; an
/// unknown or unorderable column is refused with a SQLSTATE (never XX000) and changes
/// nothing.
#[test]
fn order_by_hands_out_oldest_first_ties_by_key_nulls_last() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let mut faults = Vec::new();
    let mut notes = Vec::new();
    // 60 events, inserted in shuffled key order, created_at with many ties and 10 NULLs
    client
        .batch_execute(
            "CREATE TABLE ev (id int PRIMARY KEY, created_at timestamptz, done_at timestamptz)",
        )
        .unwrap();
    let mut rng = XorShift(0xDEAD_BEEF_1234_5678);
    let mut ids: Vec<i64> = (1..=60).collect();
    rng.shuffle(&mut ids);
    for id in &ids {
        let bucket = rng.next() % 14;
        let created = if bucket >= 12 {
            "NULL".to_string()
        } else {
            format!("timestamptz '2024-01-01 00:00:00+00' - interval '{bucket} minutes'")
        };
        client
            .execute(&format!("INSERT INTO ev VALUES ({id}, {created})"), &[])
            .unwrap();
    }
    let expected: Vec<i64> = client
        .query(
            "SELECT id::bigint FROM ev ORDER BY created_at NULLS LAST, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let nulls = count(
        &mut client,
        "SELECT count(*) FROM ev WHERE created_at IS NULL",
    );
    assert!(
        nulls > 0 && nulls < 60,
        "the data has NULLs and values ({nulls} NULLs)"
    );
    let got = drain_in_order(&mut client, "'ev'", "created_at", 7);
    compare_batches(
        "ev by created_at",
        &got,
        &expected,
        7,
        &mut faults,
        &mut notes,
    );

    // hostile names: a table per column, the same rows, ordered by that column
    client
        .batch_execute(
            r#"CREATE TABLE odd (id int PRIMARY KEY, "t" int, "select" text, "a b" numeric,
                                 "ORDER" date, "data" int, doc json, done_at timestamptz);"#,
        )
        .unwrap();
    let mut ids: Vec<i64> = (1..=40).collect();
    rng.shuffle(&mut ids);
    for id in &ids {
        let v = |rng: &mut XorShift, k: u64| -> Option<u64> {
            let x = rng.next() % k;
            (x != 0).then_some(x)
        };
        let t = v(&mut rng, 6).map_or("NULL".into(), |x| x.to_string());
        let s = v(&mut rng, 5).map_or("NULL".into(), |x| {
            format!("'w{}'", ["", "b", "a", "B", "ab"][x as usize])
        });
        let ab = v(&mut rng, 7).map_or("NULL".into(), |x| format!("{}.5", 3 - x as i64));
        let date =
            v(&mut rng, 6).map_or("NULL".into(), |x| format!("date '2023-12-30' + {}", 5 - x));
        let data = v(&mut rng, 4).map_or("NULL".into(), |x| x.to_string());
        client
            .execute(
                &format!("INSERT INTO odd VALUES ({id}, {t}, {s}, {ab}, {date}, {data}, '{{}}')"),
                &[],
            )
            .unwrap();
    }
    let columns = ["t", "select", "a b", "ORDER", "data", "id"];
    for (i, col) in columns.iter().enumerate() {
        drain_copy_of_odd(
            &mut client,
            &format!("odd_{i}"),
            col,
            &mut faults,
            &mut notes,
        );
    }
    drain_copy_of_odd(
        &mut client,
        r#""we""ird tbl""#,
        "a b",
        &mut faults,
        &mut notes,
    );

    // refused: unknown, empty, injected, unorderable; never XX000, nothing claimed
    copy_of_odd(&mut client, "odd_x");
    for bad in ["nope", "", "id; DROP TABLE odd_x", "id) --", "T", "doc"] {
        let sql =
            "SELECT * FROM exactly.claim_batch('odd_x', 'done_at', batch => 5, order_by => $1)";
        match refused_cleanly(&mut client, sql, &[&bad]) {
            Ok(code) => notes.push(format!("order_by {bad:?} refused with {code}")),
            Err(what) => faults.push(format!(
                "order_by {bad:?}: expected an error with a SQLSTATE, {what}"
            )),
        }
    }
    if count(&mut client, "SELECT count(*) FROM exactly.claims") != 0
        || count(
            &mut client,
            "SELECT count(*) FROM odd_x WHERE done_at IS NULL",
        ) != 40
    {
        faults.push("a refused order_by claimed or changed something".into());
    }
    eprintln!("notes:\n  {}", notes.join("\n  "));
    assert_no_faults(&faults);
}

// ------------------------------------------------------------------------------------------
// 4. complete_rows / fail_rows racing lease expiry

const RACE_ROWS: i64 = 3000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    CompleteRows,
    FailRows,
    CompleteBatch,
    /// claim_batch(..., complete => this claim)
    CompleteInClaim,
}

#[derive(Clone, Debug)]
struct Call {
    kind: Kind,
    claim: String,
    keys: Vec<i64>,
    start: i64,
    ret: i64,
    xid: i64,
    count: Option<i64>,
}

#[derive(Clone, Debug)]
struct ClaimRec {
    claim: String,
    ids: Vec<i64>,
    start: i64,
    ret: i64,
    lease_us: i64,
}

#[derive(Default)]
struct RaceLog {
    claims: Vec<ClaimRec>,
    calls: Vec<Call>,
    faults: Vec<String>,
}

fn race_table(client: &mut Client, naive: bool) {
    client
        .batch_execute(&format!(
            "CREATE TABLE q4 (id int PRIMARY KEY, done_at timestamptz{});
             INSERT INTO q4 (id) SELECT i FROM generate_series(1, {RACE_ROWS}) i;",
            if naive {
                ", claimed_by uuid, claimed_until timestamptz"
            } else {
                ""
            }
        ))
        .unwrap();
    log_done(client, "q4", "NEW.id::text");
}

/// claim_batch, with the transaction's xid: (xid, claim, ids, start, ret).
fn claim_with_xid(
    client: &mut Client,
    schema: &str,
    batch: u64,
    lease_ms: u64,
    complete: Option<&str>,
) -> Result<(i64, Option<String>, Vec<i64>, i64, i64), postgres::Error> {
    let sql = format!(
        "SELECT txid_current(), (SELECT coalesce(jsonb_agg(jsonb_build_array(c.claim, c.data)), '[]')
           FROM {schema}.claim_batch('q4', 'done_at', batch => {batch},
                                     lease => '{lease_ms} milliseconds'{}) c)::text",
        if complete.is_some() { ", complete => $1::text::uuid" } else { "" }
    );
    let start = now_us();
    let row = match complete {
        Some(c) => client.query_one(&sql, &[&c])?,
        None => client.query_one(&sql, &[])?,
    };
    let ret = now_us();
    let (xid, arr): (i64, String) = (row.get(0), row.get(1));
    let arr = json(&arr);
    let items = arr.as_array().unwrap();
    let claim = items.first().map(|i| i[0].as_str().unwrap().to_string());
    let ids = items.iter().map(|i| i[1]["id"].as_i64().unwrap()).collect();
    Ok((xid, claim, ids, start, ret))
}

fn call_with_xid(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(i64, i64, i64, i64), postgres::Error> {
    let start = now_us();
    let row = client.query_one(sql, params)?;
    Ok((row.get(0), row.get(1), start, now_us()))
}

/// 8 workers for `run_for`: batches of 1–20, leases of 50–150 ms, then a pause of 0–200 ms
/// (around the expiry), then complete_rows and/or fail_rows of random parts, then
/// complete_batch, nothing, or (even workers) the next claim_batch(complete => claim).
/// Then one worker drains what is left with a long lease.
fn race(cluster: &Cluster, schema: &'static str, run_for: Duration) -> RaceLog {
    let deadline = Instant::now() + run_for;
    let logs = at_once(cluster, 8, move |w, client| {
        let mut log = RaceLog::default();
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1 ^ ((w as u64 + 5) << 29));
        let chains = w % 2 == 0;
        let mut prev: Option<(String, Vec<i64>)> = None;
        let fault = |log: &mut RaceLog, what: &str, e: postgres::Error| {
            log.faults
                .push(format!("worker {w}: {what}: {} {}", code(&e), message(&e)));
        };
        while Instant::now() < deadline {
            let batch = 1 + rng.next() % 20;
            let lease_ms = 50 + rng.next() % 101;
            let complete = if chains { prev.take() } else { None };
            let (xid, claim, ids, start, ret) = match claim_with_xid(
                client,
                schema,
                batch,
                lease_ms,
                complete.as_ref().map(|c| c.0.as_str()),
            ) {
                Ok(r) => r,
                Err(e) => {
                    fault(&mut log, "claim_batch", e);
                    continue;
                }
            };
            if let Some((p, _)) = complete {
                log.calls.push(Call {
                    kind: Kind::CompleteInClaim,
                    claim: p,
                    keys: vec![],
                    start,
                    ret,
                    xid,
                    count: None,
                });
            }
            let Some(c) = claim else {
                if count(client, "SELECT count(*) FROM q4 WHERE done_at IS NULL") == 0 {
                    break;
                }
                sleep_ms(5);
                continue;
            };
            log.claims.push(ClaimRec {
                claim: c.clone(),
                ids: ids.clone(),
                start,
                ret,
                lease_us: lease_ms as i64 * 1000,
            });
            sleep_ms(rng.next() % 200);
            let mut remaining = ids.clone();
            let action = rng.next() % 4;
            for kind in [Kind::CompleteRows, Kind::FailRows] {
                let wanted = match (action, kind) {
                    (0, Kind::CompleteRows) | (1, Kind::FailRows) | (2, _) => true,
                    _ => false,
                };
                if !wanted || remaining.is_empty() {
                    continue;
                }
                rng.shuffle(&mut remaining);
                let k = 1 + (rng.next() as usize) % remaining.len();
                let keys: Vec<i64> = remaining[..k].to_vec();
                let json_keys = keys_of(&keys, rng.next() % 2 == 0);
                let result = if kind == Kind::CompleteRows {
                    call_with_xid(
                        client,
                        &format!("SELECT {schema}.complete_rows($1::text::uuid, $2::text::jsonb), txid_current()"),
                        &[&c, &json_keys],
                    )
                } else {
                    call_with_xid(
                        client,
                        &format!("SELECT {schema}.fail_rows($1::text::uuid, $2::text::jsonb, 'racing'), txid_current()"),
                        &[&c, &json_keys],
                    )
                };
                match result {
                    Ok((n, xid, start, ret)) => {
                        log.calls.push(Call {
                            kind,
                            claim: c.clone(),
                            keys: keys.clone(),
                            start,
                            ret,
                            xid,
                            count: Some(n),
                        });
                        if n > 0 {
                            remaining.retain(|r| !keys.contains(r));
                        }
                    }
                    Err(e) => fault(&mut log, "complete_rows/fail_rows", e),
                }
            }
            if chains {
                prev = Some((c, remaining));
            } else if rng.next() % 2 == 0 {
                match call_with_xid(
                    client,
                    &format!("SELECT {schema}.complete_batch($1::text::uuid), txid_current()"),
                    &[&c],
                ) {
                    Ok((n, xid, start, ret)) => log.calls.push(Call {
                        kind: Kind::CompleteBatch,
                        claim: c.clone(),
                        keys: vec![],
                        start,
                        ret,
                        xid,
                        count: Some(n),
                    }),
                    Err(e) => fault(&mut log, "complete_batch", e),
                }
            }
        }
        log
    });
    let mut all = gathered!(logs => RaceLog { claims, calls, faults });
    // drain: every racing lease has run out; one worker, long leases, no failures
    sleep_ms(200);
    let mut client = cluster.connect();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < drain_deadline {
        let (xid, claim, ids, start, ret) =
            match claim_with_xid(&mut client, schema, 1000, 60_000, None) {
                Ok(r) => r,
                Err(e) => {
                    all.faults
                        .push(format!("drain: claim_batch: {} {}", code(&e), message(&e)));
                    break;
                }
            };
        let _ = xid;
        let Some(c) = claim else {
            if count(&mut client, "SELECT count(*) FROM q4 WHERE done_at IS NULL") == 0 {
                break;
            }
            sleep_ms(20);
            continue;
        };
        all.claims.push(ClaimRec {
            claim: c.clone(),
            ids,
            start,
            ret,
            lease_us: 60_000_000,
        });
        match call_with_xid(
            &mut client,
            &format!("SELECT {schema}.complete_batch($1::text::uuid), txid_current()"),
            &[&c],
        ) {
            Ok((n, xid, start, ret)) => all.calls.push(Call {
                kind: Kind::CompleteBatch,
                claim: c,
                keys: vec![],
                start,
                ret,
                xid,
                count: Some(n),
            }),
            Err(e) => all.faults.push(format!(
                "drain: complete_batch: {} {}",
                code(&e),
                message(&e)
            )),
        }
    }
    all
}

/// Checks the race's calls against the done_log (see the test's comment).
fn check_race(client: &mut Client, log: &RaceLog) -> Vec<String> {
    let mut faults = log.faults.clone();
    let entries: Vec<(i64, bool, bool, i64, i64)> = client
        .query(
            "SELECT key::bigint, old_done IS NULL, new_done IS NULL, xid, at_us FROM done_log WHERE tbl = 'q4'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let mut by_xid: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for (id, old_null, new_null, xid, at) in &entries {
        if !*old_null || *new_null {
            faults.push(format!(
                "row {id}: done_at changed from {} to {}",
                if *old_null { "NULL" } else { "a time" },
                if *new_null { "NULL" } else { "a time" }
            ));
        }
        by_xid.entry(*xid).or_default().push((*id, *at));
    }
    let mut calls_by_claim: HashMap<&str, Vec<&Call>> = HashMap::new();
    for c in &log.calls {
        calls_by_claim.entry(c.claim.as_str()).or_default().push(c);
    }
    let mut known_xids = HashSet::new();
    let mut holds = Vec::new();
    let mut marks: Vec<(i64, &str, i64)> = Vec::new(); // (row, marking claim, server time)
    for claim in &log.claims {
        let mut remaining: BTreeSet<i64> = claim.ids.iter().copied().collect();
        let mut ended = false;
        let mut left: HashMap<i64, i64> = HashMap::new();
        let surely_live_until = claim.start + claim.lease_us;
        let surely_over_after = claim.ret + claim.lease_us;
        let mut calls = calls_by_claim
            .get(claim.claim.as_str())
            .cloned()
            .unwrap_or_default();
        calls.sort_by_key(|c| c.start);
        for call in calls {
            known_xids.insert(call.xid);
            let marked: Vec<(i64, i64)> = by_xid.get(&call.xid).cloned().unwrap_or_default();
            let marked_ids: BTreeSet<i64> = marked.iter().map(|m| m.0).collect();
            let what = format!(
                "{:?} of claim {} (keys {:?}, returned {:?})",
                call.kind, claim.claim, call.keys, call.count
            );
            for m in &marked_ids {
                if !remaining.contains(m) {
                    faults.push(format!(
                        "{what} marked row {m}, which the claim did not hold"
                    ));
                }
            }
            let named: BTreeSet<i64> = match call.kind {
                Kind::CompleteBatch | Kind::CompleteInClaim => remaining.clone(),
                _ => call
                    .keys
                    .iter()
                    .copied()
                    .filter(|k| remaining.contains(k))
                    .collect(),
            };
            let took: BTreeSet<i64> = match call.kind {
                Kind::FailRows => {
                    if !marked.is_empty() {
                        faults.push(format!("{what} marked {marked_ids:?} done"));
                    }
                    if call.count.unwrap() > 0 {
                        named.clone()
                    } else {
                        BTreeSet::new()
                    }
                }
                _ => {
                    if let Some(n) = call.count {
                        if n != marked.len() as i64 {
                            faults.push(format!(
                                "{what} returned {n} but marked {} rows: {marked_ids:?}",
                                marked.len()
                            ));
                        }
                    }
                    marked_ids.clone()
                }
            };
            if let Some(n) = call.count {
                if n != 0 && n != named.len() as i64 {
                    faults.push(format!(
                        "{what}: expected 0 or {} (the named rows it held)",
                        named.len()
                    ));
                }
            }
            if took.is_empty() {
                if !named.is_empty() && !ended && call.ret < surely_live_until {
                    faults.push(format!(
                        "{what} took nothing although the claim's lease surely ran {} ms more and it held {named:?}",
                        (surely_live_until - call.ret) / 1000
                    ));
                }
                if !named.is_empty() {
                    ended = true;
                }
                continue;
            }
            if took != named {
                faults.push(format!("{what} took {took:?} of {named:?}: all or nothing"));
            }
            if ended {
                faults.push(format!("{what} took {took:?} after the claim had ended"));
            }
            if call.start > surely_over_after {
                faults.push(format!(
                    "{what} took {took:?} although the claim's lease had surely run out {} ms before the call",
                    (call.start - surely_over_after) / 1000
                ));
            }
            for r in &took {
                remaining.remove(r);
                left.insert(*r, call.start);
            }
            if remaining.is_empty() {
                ended = true;
            }
            for (id, at) in marked {
                marks.push((id, claim.claim.as_str(), at));
            }
        }
        for r in &claim.ids {
            holds.push(Hold {
                row: *r,
                claim: claim.claim.clone(),
                ret: claim.ret,
                end: surely_live_until.min(*left.get(r).unwrap_or(&i64::MAX)),
            });
        }
    }
    faults.extend(overlapping_holds(&holds));
    let mut holds_by_row: HashMap<i64, Vec<&Hold>> = HashMap::new();
    for h in &holds {
        holds_by_row.entry(h.row).or_default().push(h);
    }
    for (id, by, at) in &marks {
        for h in holds_by_row.get(id).into_iter().flatten() {
            if h.claim != *by && h.ret <= *at && *at <= h.end {
                faults.push(format!(
                    "row {id} was marked done by claim {by} while live claim {} held it",
                    h.claim
                ));
            }
        }
    }
    for (xid, marked) in &by_xid {
        if !known_xids.contains(xid) {
            faults.push(format!(
                "transaction {xid} marked rows {:?} done, but no completion of a claim that held them ran in it",
                marked.iter().map(|m| m.0).collect::<Vec<_>>()
            ));
        }
    }
    faults.extend(done_exactly_once_faults(client, "q4"));
    faults
}

/// complete_rows / fail_rows / complete_batch / claim_batch(complete => previous) racing
/// lease expiry: 8 workers, 3000 rows, leases of 50–150 ms, calls made 0–200 ms after the
/// claim; then a drain. From a trigger's log of every change of done_at, with the writing
/// transaction: each row's done_at is set once, from NULL, and never changed again; every
/// change was made by a completion call (its transaction), of rows its claim held, and the
/// call returned how many it marked (0: none; fail_rows: none); no call took rows from a
/// claim whose lease had surely run out, and none refused rows of a claim whose lease surely
/// still ran; a completion takes all the named rows it holds or none; no row was marked done
/// while another live claim held it, nor held by two live claims at once; nothing is lost.
#[test]
fn completions_racing_lease_expiry_mark_each_row_once_and_only_under_a_live_claim() {
    let (cluster, mut client) = cluster_with(|c| race_table(c, false));
    let log = race(&cluster, "exactly", Duration::from_secs(8));
    let kinds = |k: Kind| log.calls.iter().filter(|c| c.kind == k).count();
    let zero = log.calls.iter().filter(|c| c.count == Some(0)).count();
    eprintln!(
        "{} claims; complete_rows {}, fail_rows {}, complete_batch {}, complete => {}; {} returned 0",
        log.claims.len(),
        kinds(Kind::CompleteRows),
        kinds(Kind::FailRows),
        kinds(Kind::CompleteBatch),
        kinds(Kind::CompleteInClaim),
        zero
    );
    assert!(
        zero > 10,
        "the race should have calls arriving after the lease ({zero})"
    );
    let faults = check_race(&mut client, &log);
    if !faults.is_empty() {
        eprintln!("server log errors:\n{}", server_errors(&cluster));
    }
    assert_no_faults(&faults);
}

/// Twin: a PL/pgSQL queue with the same functions whose completion forgets to check the
/// lease (claims are otherwise careful: SKIP LOCKED, claimed_by/claimed_until). The race
/// checks catch it completing rows after the lease ran out.
#[test]
fn twin_a_completion_that_skips_the_lease_check_is_caught() {
    let (cluster, mut client) = cluster_with(|c| race_table(c, true));
    client
        .batch_execute(
            r#"CREATE SCHEMA naive;
               CREATE FUNCTION naive.ids(keys jsonb) RETURNS SETOF int LANGUAGE sql AS $$
                   SELECT CASE jsonb_typeof(e) WHEN 'object' THEN (e ->> 'id')::int ELSE (e #>> '{}')::int END
                     FROM jsonb_array_elements(keys) e $$;
               CREATE FUNCTION naive.complete_batch(c uuid) RETURNS bigint LANGUAGE sql AS $$
                   WITH u AS (UPDATE q4 SET done_at = clock_timestamp(), claimed_by = NULL
                               WHERE claimed_by = c AND done_at IS NULL RETURNING 1)
                   SELECT count(*) FROM u $$;
               CREATE FUNCTION naive.complete_rows(c uuid, keys jsonb) RETURNS bigint LANGUAGE sql AS $$
                   WITH u AS (UPDATE q4 SET done_at = clock_timestamp(), claimed_by = NULL
                               WHERE claimed_by = c AND done_at IS NULL AND id IN (SELECT naive.ids(keys))
                               RETURNING 1)
                   SELECT count(*) FROM u $$;
               CREATE FUNCTION naive.fail_rows(c uuid, keys jsonb, error text DEFAULT NULL) RETURNS bigint
               LANGUAGE sql AS $$
                   WITH u AS (UPDATE q4 SET claimed_by = NULL, claimed_until = NULL
                               WHERE claimed_by = c AND claimed_until > clock_timestamp()
                                 AND id IN (SELECT naive.ids(keys)) RETURNING 1)
                   SELECT count(*) FROM u $$;
               CREATE FUNCTION naive.claim_batch(rel regclass, done_column text, batch int, lease interval,
                                                 complete uuid DEFAULT NULL)
               RETURNS TABLE (claim uuid, data jsonb) LANGUAGE plpgsql AS $$
               DECLARE c uuid := gen_random_uuid();
               BEGIN
                   IF complete IS NOT NULL THEN PERFORM naive.complete_batch(complete); END IF;
                   RETURN QUERY
                   WITH picked AS (SELECT q.id FROM q4 q WHERE q.done_at IS NULL
                                      AND (q.claimed_until IS NULL OR q.claimed_until < clock_timestamp())
                                    ORDER BY q.id LIMIT batch FOR UPDATE SKIP LOCKED),
                        u AS (UPDATE q4 SET claimed_by = c, claimed_until = clock_timestamp() + lease
                                FROM picked WHERE q4.id = picked.id RETURNING q4.*)
                   SELECT c, to_jsonb(u) FROM u;
               END $$;"#,
        )
        .unwrap();
    let log = race(&cluster, "naive", Duration::from_secs(4));
    let faults = check_race(&mut client, &log);
    let lease_broken = ["surely run out", "while live claim"];
    let caught = mentioning(&faults, &lease_broken).count();
    eprintln!(
        "twin: {} faults, {caught} of them completions after the lease or under another live claim, e.g. {:?}",
        faults.len(),
        mentioning(&faults, &lease_broken).next()
    );
    assert!(
        caught > 0,
        "the naive completion should be caught completing after the lease"
    );
}

// ------------------------------------------------------------------------------------------
// 5. composite, uuid and timestamp/numeric keys

/// Whether the server was built with ICU (nondeterministic collations need it): then
/// keyed_tables made the case-insensitive table.
fn has_icu(client: &mut Client) -> bool {
    client.query_one("SELECT pg_catalog.to_regclass('cit') IS NOT NULL", &[]).unwrap().get(0)
}

fn keyed_tables(client: &mut Client) {
    client
        .batch_execute(
            r#"CREATE TABLE comp (tenant text, id int, payload text, done_at timestamptz, PRIMARY KEY (tenant, id));
               INSERT INTO comp SELECT t, i, 'p' || i
                 FROM unnest(ARRAY['acme', 'O''Brien & Co', 'zürich', 'a"b', ' spaced ', 'ACME']) t,
                      generate_series(1, 250) i;
               CREATE TABLE uu (id uuid PRIMARY KEY, payload text, done_at timestamptz);
               INSERT INTO uu SELECT gen_random_uuid(), 'p' || i FROM generate_series(1, 1500) i;
               CREATE TABLE ts (at timestamptz, n numeric, done_at timestamptz, PRIMARY KEY (at, n));
               INSERT INTO ts SELECT timestamptz '2024-03-01 00:00:00.000001+00' + (i / 5) * interval '1.234567 s',
                                     (ARRAY[1.10, 0.1000000000000000055511151231257827,
                                            -12345678901234567890.5, 0, 1e-20])[i % 5 + 1]
                 FROM generate_series(0, 1499) i;"#,
        )
        .unwrap();
    // equal values with other bytes: a case-insensitive collation (where the server has ICU:
    // the PostgreSQL 17 and 18 built here have none), float8's -0
    match client.batch_execute(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE cit (name text COLLATE ci PRIMARY KEY, done_at timestamptz);
         INSERT INTO cit VALUES ('Zürich'), ('acme');",
    ) {
        Ok(()) => {}
        Err(e) if e.code().is_some_and(|c| c.code() == "0A000") => {} // "ICU is not supported in this build"
        Err(e) => panic!("{e}"),
    }
    client
        .batch_execute(
            "CREATE TABLE f8 (x float8 PRIMARY KEY, done_at timestamptz); INSERT INTO f8 VALUES (0), (1.5);",
        )
        .unwrap();
    log_done(client, "comp", "NEW.tenant || '/' || NEW.id");
    log_done(client, "uu", "NEW.id::text");
    log_done(
        client,
        "ts",
        "extract(epoch FROM NEW.at)::text || '/' || NEW.n::text",
    );
}

/// One claim of `batch` rows of `table` (lease 5 minutes): (claim, data).
fn claim_rows(client: &mut Client, table: &str, batch: i32) -> (String, Vec<String>) {
    let b = claim(
        client,
        &format!("'{table}', 'done_at', batch => {batch}, lease => '5 minutes'"),
    );
    (b.claim.expect("rows to claim"), b.data)
}

fn arr(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// Each wrong key shape must be refused by complete_rows and fail_rows with a SQLSTATE
/// (never XX000), leaving the claim and the attempts as they were.
fn wrong_shapes_refused(
    client: &mut Client,
    table: &str,
    claim: &str,
    shapes: &[&str],
    faults: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let held = holding(client, claim);
    let attempts = count(client, "SELECT count(*) FROM exactly.claim_attempts");
    for keys in shapes {
        let mut codes = Vec::new();
        for sql in [
            "SELECT exactly.complete_rows($1::text::uuid, $2::text::jsonb)",
            "SELECT exactly.fail_rows($1::text::uuid, $2::text::jsonb, 'x')",
        ] {
            match refused_cleanly(client, sql, &[&claim, keys]) {
                Ok(code) => codes.push(code),
                Err(what) => faults.push(format!(
                    "{table}: keys {keys} ({}): expected an error with a SQLSTATE, {what}",
                    if sql.contains("complete_rows") {
                        "complete_rows"
                    } else {
                        "fail_rows"
                    }
                )),
            }
        }
        notes.push(format!("{table}: {keys} refused with {}", codes.join("/")));
    }
    if holding(client, claim) != held
        || count(client, "SELECT count(*) FROM exactly.claim_attempts") != attempts
    {
        faults.push(format!(
            "{table}: refused keys changed the claim or the attempts"
        ));
    }
}

fn expect_count(
    what: &str,
    result: Result<Took, postgres::Error>,
    expected: i64,
    faults: &mut Vec<String>,
) {
    match result {
        Ok(t) if t.count == expected => {}
        Ok(t) => faults.push(format!("{what}: returned {}, expected {expected}", t.count)),
        Err(e) => faults.push(format!("{what}: {} {}", code(&e), message(&e))),
    }
}

/// `n` with a different scale (1.10 -> 1.100, 0 -> 0.0): the same numeric value.
fn rescaled(data: &str) -> String {
    let mut v = json(data);
    let n = v["n"].to_string();
    let wider = if n.contains('.') {
        format!("{n}0")
    } else {
        format!("{n}.0")
    };
    v["n"] = serde_json::from_str(&wider).unwrap();
    serde_json::to_string(&v).unwrap()
}

/// The key checks of one session at a time: extra fields, rows not in the claim, empty
/// keys, wrong shapes, and keys taken under other session settings.
fn key_checks(cluster: &Cluster, faults: &mut Vec<String>, notes: &mut Vec<String>) {
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    let mut other = cluster.connect();
    a.batch_execute("SET TimeZone = 'UTC'").unwrap();
    b.batch_execute(
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata'; SET extra_float_digits = 3",
    )
    .unwrap();

    // composite: extra fields, rows outside the claim, a row of another live claim
    let (c1, d1) = claim_rows(&mut a, "comp", 4);
    let (c2, d2) = claim_rows(&mut other, "comp", 2);
    let mut first = json(&d1[0]);
    first["extra"] = serde_json::json!([1, {"x": null}]);
    first["done_at"] = Value::String("garbage".into());
    first["payload"] = serde_json::json!(12);
    let keys = arr(&[
        serde_json::to_string(&first).unwrap(),
        d2[0].clone(),                              // held by another live claim
        r#"{"tenant": "acme", "id": 250}"#.into(),  // pending, in no claim
        r#"{"tenant": "nobody", "id": -1}"#.into(), // no such row
    ]);
    expect_count(
        "comp: complete_rows with extra fields and foreign keys",
        complete_rows(&mut a, &c1, &keys),
        1,
        faults,
    );
    if count(
        &mut a,
        "SELECT count(*) FROM comp WHERE done_at IS NOT NULL",
    ) != 1
    {
        faults.push("comp: rows outside the claim were marked done".into());
    }
    expect_count(
        "comp: the other claim still holds its row",
        complete_rows(&mut other, &c2, &arr(&d2[..1])),
        1,
        faults,
    );
    expect_count(
        "comp: release the other claim",
        release_claim(&mut other, &c2),
        1,
        faults,
    );
    expect_count(
        "comp: [] takes nothing",
        complete_rows(&mut a, &c1, "[]"),
        0,
        faults,
    );
    if holding(&mut a, &c1) != 3 {
        faults.push("comp: the claim does not hold its 3 rows after [] and foreign keys".into());
    }
    wrong_shapes_refused(
        &mut a,
        "comp",
        &c1,
        &[
            r#"[{"tenant": "acme"}]"#,
            r#"[{"id": 1}]"#,
            r#"["acme"]"#,
            r#"[["acme", 1]]"#,
            r#"[1]"#,
            r#"{"tenant": "acme", "id": 1}"#,
            r#""acme""#,
            r#"5"#,
            r#"[{"tenant": "acme", "id": "abc"}]"#,
            r#"[{"tenant": "acme", "id": 1.5}]"#,
            r#"[{"tenant": "acme", "id": 99999999999}]"#,
            r#"[null]"#,
        ],
        faults,
        notes,
    );
    // garbage with a valid key before it: refused as a whole, nothing taken
    wrong_shapes_refused(
        &mut a,
        "comp",
        &c1,
        &[&format!("[{}, {{\"tenant\": \"acme\"}}]", d1[1])],
        faults,
        notes,
    );
    expect_count(
        "comp: the rest, as the data came",
        complete_rows(&mut b, &c1, &arr(&d1[1..])),
        3,
        faults,
    );
    if holding(&mut a, &c1) != 0 {
        faults.push("comp: a claim whose last row was completed did not end".into());
    }
    // an ended claim: 0, whatever the keys
    for keys in [r#"[{"nope": 1}]"#, r#""x""#, "[]"] {
        match complete_rows(&mut a, &c1, keys) {
            Ok(t) if t.count == 0 => {}
            Ok(t) => faults.push(format!(
                "comp: ended claim, keys {keys}: returned {}",
                t.count
            )),
            Err(e) => faults.push(format!(
                "comp: ended claim, keys {keys}: expected 0 whatever the keys, got {} {}",
                code(&e),
                message(&e)
            )),
        }
    }

    // uuid: bare values in other spellings of the same uuid, under other settings
    let (cu, du) = claim_rows(&mut a, "uu", 5);
    let uuids: Vec<String> = du
        .iter()
        .map(|d| json(d)["id"].as_str().unwrap().to_string())
        .collect();
    let spelled = arr(&[
        format!("\"{}\"", uuids[0].to_uppercase()),
        format!("\"{}\"", uuids[1].replace('-', "")),
        format!("\"{{{}}}\"", uuids[2]),
    ]);
    expect_count(
        "uu: bare uuids, upper case / no hyphens / braces",
        complete_rows(&mut b, &cu, &spelled),
        3,
        faults,
    );
    wrong_shapes_refused(
        &mut a,
        "uu",
        &cu,
        &[
            r#"["not-a-uuid"]"#,
            "[42]",
            r#"[{"id": "zz"}]"#,
            "[true]",
            r#"[{"nope": "x"}]"#,
            &format!("\"{}\"", uuids[3]),
        ],
        faults,
        notes,
    );
    expect_count(
        "uu: object keys",
        complete_rows(
            &mut b,
            &cu,
            &format!("[{{\"id\": \"{}\"}}, {}]", uuids[3], du[4]),
        ),
        2,
        faults,
    );

    // timestamptz + numeric: keys taken under one session's settings, used under another's
    let (ca, da) = claim_rows(&mut a, "ts", 10);
    let (cb, db) = claim_rows(&mut b, "ts", 10);
    expect_count(
        "ts: A's keys in session B",
        complete_rows(&mut b, &ca, &arr(&da[0..2])),
        2,
        faults,
    );
    expect_count(
        "ts: n in another scale",
        complete_rows(&mut b, &ca, &arr(&[rescaled(&da[2]), rescaled(&da[3])])),
        2,
        faults,
    );
    expect_count(
        "ts: fail_rows in B with A's keys",
        fail_rows(&mut b, &ca, &arr(&da[4..5]), Some("from B")),
        1,
        faults,
    );
    wrong_shapes_refused(
        &mut b,
        "ts",
        &ca,
        &[
            r#"[{"at": "not a time", "n": 1}]"#,
            r#"[{"at": "2024-03-01T00:00:00.000001+00:00", "n": "abc"}]"#,
            r#"[{"at": "2024-03-01T00:00:00.000001+00:00"}]"#,
            r#"[{"n": 1.10}]"#,
            "[1]",
            r#"{"at": "2024-03-01T00:00:00.000001+00:00", "n": 1.10}"#,
        ],
        faults,
        notes,
    );
    if !db[0].contains("+05:30") {
        notes.push(format!(
            "ts: session B's data renders at as {}",
            json(&db[0])["at"]
        ));
    }
    expect_count(
        "ts: B's keys in session A",
        complete_rows(&mut a, &cb, &arr(&db[0..5])),
        5,
        faults,
    );
    expect_count(
        "ts: B's keys, n rescaled, in session A",
        complete_rows(&mut a, &cb, &arr(&[rescaled(&db[5])])),
        1,
        faults,
    );
    expect_rows(
        &mut a,
        "SELECT count(*) FROM exactly.claim_attempts WHERE rel = 'ts'::regclass AND failed_attempts = 1 AND last_error = 'from B'",
        1,
        faults,
        |failed| format!("ts: fail_rows from B recorded {failed} failed rows, expected 1"),
    );
    let (held_a, held_b) = (holding(&mut a, &ca), holding(&mut b, &cb));
    expect_count(
        "ts: complete_batch A",
        complete_batch(&mut a, &ca),
        held_a,
        faults,
    );
    expect_count(
        "ts: complete_batch B",
        complete_batch(&mut b, &cb),
        held_b,
        faults,
    );
    // the failed row comes back, and completes under B with A's rendering of it
    let (cr, dr) = claim_rows(&mut a, "ts", 1000);
    let back = json(&da[4]);
    let found = dr.iter().any(|d| {
        let v = json(d);
        v["at"] == back["at"] && v["n"].to_string() == back["n"].to_string()
    });
    if !found {
        faults.push("ts: the row failed from B did not come back".into());
    }
    expect_count(
        "ts: the failed row, A's old keys, in B",
        complete_rows(&mut b, &cr, &arr(&da[4..5])),
        1,
        faults,
    );
    release_claim(&mut a, &cr).unwrap();

    // equal as values of the key's type, other bytes: found through the type's equality
    let mut claims = vec![];
    if has_icu(&mut a) {
        let (cc, _) = claim_rows(&mut a, "cit", 10);
        expect_count(
            "cit (text COLLATE case-insensitive): keys in another case",
            complete_rows(&mut b, &cc, r#"["ZÜRICH", {"name": "ACME"}]"#),
            2,
            faults,
        );
        claims.push(cc);
    }
    let (cf, _) = claim_rows(&mut a, "f8", 10);
    expect_count(
        "f8 (float8): -0.0 for 0, 1.50 for 1.5",
        complete_rows(&mut b, &cf, "[-0.0, 1.50]"),
        2,
        faults,
    );
    claims.push(cf);
    for c in claims {
        if holding(&mut a, &c) > 0 {
            release_claim(&mut a, &c).unwrap();
        }
    }
}

/// Drains `table` with 8 workers passing back the `data` objects as they came (for `uu`,
/// odd workers pass the bare uuids): every call completes its whole claim, every row is
/// delivered once.
fn drain_keyed(cluster: &Cluster, table: &'static str) -> Vec<String> {
    let delivered = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let seen = delivered.clone();
    let faults: Vec<String> = at_once(cluster, 8, move |w, client| {
        let mut faults = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            let b = match try_claim(
                client,
                &format!("'{table}', 'done_at', batch => 25, lease => '1 minute'"),
            ) {
                Ok(b) => b,
                Err(e) => {
                    faults.push(format!(
                        "{table}: claim_batch: {} {}",
                        code(&e),
                        message(&e)
                    ));
                    continue;
                }
            };
            let Some(c) = b.claim else {
                if count(
                    client,
                    &format!("SELECT count(*) FROM {table} WHERE done_at IS NULL"),
                ) == 0
                {
                    break;
                }
                sleep_ms(5);
                continue;
            };
            {
                let mut seen = seen.lock().unwrap();
                for d in &b.data {
                    let v = json(d);
                    let key = format!("{}/{}/{}/{}", v["tenant"], v["id"], v["at"], v["n"]);
                    *seen.entry(key).or_insert(0) += 1;
                }
            }
            let keys = if table == "uu" && w % 2 == 1 {
                arr(&b
                    .data
                    .iter()
                    .map(|d| json(d)["id"].to_string())
                    .collect::<Vec<_>>())
            } else {
                arr(&b.data)
            };
            match complete_rows(client, &c, &keys) {
                Ok(t) if t.count == b.data.len() as i64 => {}
                Ok(t) => faults.push(format!(
                    "{table}: complete_rows took {} of {}",
                    t.count,
                    b.data.len()
                )),
                Err(e) => faults.push(format!(
                    "{table}: complete_rows: {} {}",
                    code(&e),
                    message(&e)
                )),
            }
        }
        faults
    })
    .into_iter()
    .flatten()
    .collect();
    let mut faults = faults;
    for (key, n) in delivered.lock().unwrap().iter() {
        if *n != 1 {
            faults.push(format!("{table}: row {key} delivered {n} times"));
        }
    }
    faults
}

/// Tables keyed by (tenant text, id int), (id uuid) and (at timestamptz, n numeric): keys
/// with extra fields are accepted, keys of rows outside the claim ignored, wrong shapes
/// refused with a SQLSTATE (never XX000) and changing nothing; keys taken under DateStyle
/// 'SQL, DMY', TimeZone 'Asia/Kolkata', extra_float_digits 3 work under UTC and back, and
/// so do other spellings of the same value (a numeric's scale, a uuid's case, a text key's
/// case under a case-insensitive collation, float8's -0); then 8
/// workers drain each table passing the data back as it came (bare uuids for half of them):
/// each row delivered once and marked done exactly once.
#[test]
fn composite_uuid_and_timestamp_keys_drain_exactly_once_under_eight_workers() {
    let (cluster, mut client) = cluster_with(keyed_tables);
    let mut faults = Vec::new();
    let mut notes = Vec::new();
    key_checks(&cluster, &mut faults, &mut notes);
    if count(&mut client, "SELECT count(*) FROM exactly.claims") != 0 {
        faults.push("claims left after the key checks".into());
    }
    for table in ["comp", "uu", "ts"] {
        faults.extend(drain_keyed(&cluster, table));
        faults.extend(done_exactly_once_faults(&mut client, table));
    }
    eprintln!("notes:\n  {}", notes.join("\n  "));
    assert_no_faults(&faults);
}

// ------------------------------------------------------------------------------------------
// 6. careless and hostile callers

/// NULLs (22004), max_attempts 0 or negative and retry_after zero or negative (22023); the
/// arguments documented with a NULL default accept NULL; nothing is claimed by a refused call.
#[test]
fn careless_arguments_are_refused_with_their_sqlstate() {
    let (_cluster, mut client) = cluster_with(jobs_table);
    let (c, _) = claim_rows(&mut client, "jobs", 2);
    let mut faults = Vec::new();
    let cases: Vec<(String, &str)> = vec![
        ("SELECT * FROM exactly.claim_batch(NULL, 'done_at')".into(), "22004"),
        ("SELECT * FROM exactly.claim_batch('jobs', NULL)".into(), "22004"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', batch => NULL)".into(), "22004"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', lease => NULL)".into(), "22004"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', max_attempts => 0)".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', max_attempts => -1)".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', max_attempts => -2147483648)".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', retry_after => '0 seconds')".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', retry_after => '-1 second')".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', retry_after => '00:00:00')".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', retry_after => '-1 month 2 days')".into(), "22023"),
        ("SELECT * FROM exactly.claim_batch('jobs', 'done_at', batch => 100001)".into(), "22023"),
        ("SELECT exactly.complete_rows(NULL, '[]')".into(), "22004"),
        (format!("SELECT exactly.complete_rows('{c}', NULL)"), "22004"),
        ("SELECT exactly.fail_rows(NULL, '[]')".into(), "22004"),
        (format!("SELECT exactly.fail_rows('{c}', NULL)"), "22004"),
        (format!("SELECT exactly.fail_rows('{c}', NULL, 'x')"), "22004"),
    ];
    for (sql, expected) in &cases {
        expect_refused(
            sql,
            client.query(sql.as_str(), &[]),
            expected,
            &mut faults,
            |_| format!("{sql}: succeeded, expected {expected}"),
        );
    }
    if count(&mut client, "SELECT count(*) FROM exactly.claims") != 1 {
        faults.push("a refused call claimed rows".into());
    }
    if holding(&mut client, &c) != 2
        || count(&mut client, "SELECT count(*) FROM exactly.claim_attempts") != 0
    {
        faults.push("a refused call changed the claim or the attempts".into());
    }
    // documented NULL defaults, passed explicitly
    for args in [
        "'jobs', 'done_at', batch => 1, max_attempts => NULL",
        "'jobs', 'done_at', batch => 1, retry_after => NULL",
        "'jobs', 'done_at', batch => 1, order_by => NULL",
        "'jobs', 'done_at', batch => 1, complete => NULL",
        "'jobs', 'done_at', batch => 1, complete => gen_random_uuid()",
    ] {
        match try_claim(&mut client, args) {
            Ok(b) if b.claim.is_some() => {
                complete_batch(&mut client, b.claim.as_ref().unwrap()).unwrap();
            }
            Ok(_) => faults.push(format!("claim_batch({args}) handed out nothing")),
            Err(e) => faults.push(format!("claim_batch({args}): {} {}", code(&e), message(&e))),
        }
    }
    match client.query_one(
        &format!("SELECT exactly.fail_rows('{c}', '[{{\"id\": 1}}]', NULL)"),
        &[],
    ) {
        Ok(r) if r.get::<_, i64>(0) == 1 => {}
        Ok(r) => faults.push(format!(
            "fail_rows(..., NULL) returned {}",
            r.get::<_, i64>(0)
        )),
        Err(e) => faults.push(format!(
            "fail_rows with error NULL (its default): {} {}",
            code(&e),
            message(&e)
        )),
    }
    assert_no_faults(&faults);
}

/// An application role given exactly.grant_usage and SELECT, UPDATE on its table uses
/// every queue function (max_attempts, retry_after, order_by, complete =>, complete_rows,
/// fail_rows, release, extend, purge) but cannot write exactly.claim_attempts or
/// exactly.claims itself (42501); a role that may only read the table cannot complete rows
/// of someone else's claim (42501) and changes nothing.
#[test]
fn an_application_role_uses_the_queue_but_cannot_write_its_state() {
    let (cluster, mut admin) = cluster_with(jobs_table);
    admin
        .batch_execute(
            "ALTER TABLE jobs ADD COLUMN created_at timestamptz;
             UPDATE jobs SET created_at = now() - id * interval '1 second';
             GRANT INSERT ON done_log TO PUBLIC;
             CREATE ROLE app LOGIN; SELECT exactly.grant_usage('app');
             GRANT SELECT, UPDATE ON jobs TO app;
             CREATE ROLE reader LOGIN; SELECT exactly.grant_usage('reader');
             GRANT SELECT ON jobs TO reader;",
        )
        .unwrap();
    let mut app = cluster.connect_as("app");
    let mut reader = cluster.connect_as("reader");
    let mut faults = Vec::new();

    // the functions, as app
    let b = claim(&mut app, "'jobs', 'done_at', batch => 3, lease => '1 minute', max_attempts => 1, retry_after => '1 hour', order_by => 'created_at'");
    let c = b.claim.expect("app claims");
    let ids: Vec<i64> = b.data.iter().map(|d| id_of(d)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    if sorted != vec![698, 699, 700] {
        faults.push(format!(
            "order_by created_at as app handed out {ids:?}, expected the oldest [700, 699, 698]"
        ));
    }
    expect_count(
        "app: fail_rows",
        fail_rows(&mut app, &c, &keys_of(&ids[..1], true), Some("app says no")),
        1,
        &mut faults,
    );
    expect_rows(
        &mut app,
        "SELECT count(*) FROM exactly.claim_attempts WHERE given_up_at IS NOT NULL AND last_error = 'app says no'",
        1,
        &mut faults,
        |given_up| format!("app: the failed row is not a dead letter ({given_up})"),
    );
    if holding(&mut app, &c) != 2 {
        faults.push("app: extend_claim".into());
    }
    expect_count(
        "app: complete_rows",
        complete_rows(&mut app, &c, &keys_of(&ids[1..2], false)),
        1,
        &mut faults,
    );
    let b2 = claim(
        &mut app,
        &format!("'jobs', 'done_at', batch => 2, complete => '{c}'"),
    );
    let c2 = b2.claim.expect("app claims again");
    if count(
        &mut admin,
        &format!(
            "SELECT count(*) FROM jobs WHERE id = {} AND done_at IS NOT NULL",
            ids[2]
        ),
    ) != 1
    {
        faults.push(
            "app: claim_batch(complete => previous) did not complete the previous claim".into(),
        );
    }
    expect_count(
        "app: release_claim",
        release_claim(&mut app, &c2),
        2,
        &mut faults,
    );
    let purged: i64 = app
        .query_one("SELECT exactly.purge_claim_attempts('0 seconds')", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| {
            faults.push(format!(
                "app: purge_claim_attempts: {} {}",
                code(&e),
                message(&e)
            ));
            -1
        });
    if purged < 1 {
        faults.push(format!("app: purge_claim_attempts returned {purged}"));
    }

    // ... but not the state tables
    let (c3, d3) = claim_rows(&mut app, "jobs", 2);
    app.query("SELECT * FROM exactly.claim_attempts", &[])
        .unwrap();
    app.query("SELECT * FROM exactly.claims", &[]).unwrap();
    for sql in [
        "INSERT INTO exactly.claim_attempts DEFAULT VALUES",
        "UPDATE exactly.claim_attempts SET given_up_at = NULL, failed_attempts = 0",
        "DELETE FROM exactly.claim_attempts",
        "TRUNCATE exactly.claim_attempts",
        "UPDATE exactly.claims SET leased_until = leased_until + interval '1 year'",
        "DELETE FROM exactly.claims",
        "INSERT INTO exactly.claims DEFAULT VALUES",
    ] {
        expect_refused(
            &format!("app: {sql}"),
            app.execute(sql, &[]),
            "42501",
            &mut faults,
            |n| format!("app: {sql}: succeeded ({n} rows)"),
        );
    }
    // a reader cannot complete someone else's claim (it may not update the table)
    expect_refused(
        "reader: complete_rows",
        reader.query(
            "SELECT exactly.complete_rows($1::text::uuid, $2::text::jsonb)",
            &[&c3, &arr(&d3)],
        ),
        "42501",
        &mut faults,
        |r| {
            format!(
                "reader: complete_rows succeeded ({:?})",
                r.first().map(|r| r.get::<_, i64>(0))
            )
        },
    );
    expect_refused(
        "reader: claim_batch",
        reader.query(
            "SELECT * FROM exactly.claim_batch('jobs', 'done_at', batch => 1)",
            &[],
        ),
        "42501",
        &mut faults,
        |r| format!("reader: claim_batch succeeded ({} rows)", r.len()),
    );
    if holding(&mut app, &c3) != 2 {
        faults.push("the reader's refused calls changed app's claim".into());
    }
    expect_count(
        "app: complete_rows after all that",
        complete_rows(&mut app, &c3, &arr(&d3)),
        2,
        &mut faults,
    );
    expect_rows(
        &mut admin,
        "SELECT count(*) FROM jobs WHERE done_at IS NOT NULL",
        4,
        &mut faults,
        |done| {
            format!("{done} rows done, expected 4 (2 + the previous claim's 1 + complete_rows' 1)")
        },
    );
    assert_no_faults(&faults);
}
