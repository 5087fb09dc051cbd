//! No deadlocks in any mix (contract point 6), written from the README, DESIGN.md and the
//! 0.3 brief only. 32 connections each run transactions of 2 to 4 random operations in
//! random order among: next_invoice_number on one of 3 tenants, append_payment on one of 3
//! accounts, batch_create_tickets on one of 2 raffles, find_or_create and increment on one
//! of 5 keys of a user table, an insert into a user table numbered by
//! assign_invoice_number (the same 3 tenants), an insert into a user table kept by
//! maintain_running_balance, and claim_batch + complete_batch on a small queue. About one
//! transaction in ten is rolled back on purpose.
//!
//! Every failure's SQLSTATE is counted: there must be no 40P01, and every failure must be
//! 40001 (serialization_failure: pg_exactly refusing to wait out of its lock order). After
//! the run every invariant holds: gapless invoice numbers (function and trigger together),
//! verify_ledger ok with every acknowledged entry present, trigger-kept running balances
//! exact, raffles within their request with tickets_created = their rows, one row per key,
//! increments equal to the committed count, every claimed row completed once.
//!
//! The twin `the_check_catches_deadlocks_of_plain_row_locks` runs the same transactions on
//! plain `UPDATE` row locks in the same random order and shows the same check reports
//! their 40P01s. The harness keeps deadlock_timeout at 100 ms; throughput is printed
//! (run with `--nocapture` to see it), never asserted beyond a generous bound.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{at_once, Client, Cluster, XorShift};

const CONNECTIONS: usize = 32;
const TRANSACTIONS_PER_CONNECTION: usize = 40;
const TENANTS: usize = 3;
const ACCOUNTS: usize = 3;
const KEYS: usize = 5;
const QUEUE_ROWS: i64 = 5000;
/// raffle 1 fills up during the run (calls then create 0), raffle 2 never does
const RAFFLE_REQUESTS: [i64; 2] = [300, 1_000_000];

/// The generous bound on one run's wall time.
const RUN_BOUND: Duration = Duration::from_secs(150);

const SETUP: &str = "
    CREATE TABLE kv (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE,
                     hits bigint NOT NULL DEFAULT 0, label text);
    CREATE TABLE invoices (id bigserial PRIMARY KEY, tenant text NOT NULL, number text,
                           amount numeric);
    CREATE TRIGGER number_it BEFORE INSERT ON invoices FOR EACH ROW
        EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number');
    CREATE TABLE entries (id bigserial PRIMARY KEY, account text NOT NULL, amount numeric NOT NULL,
                          running_balance numeric);
    CREATE TRIGGER keep_balance BEFORE INSERT OR UPDATE OR DELETE ON entries FOR EACH ROW
        EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'running_balance', 'account');
    CREATE TABLE jobs (id bigint PRIMARY KEY, done_at timestamptz);
    CREATE INDEX ON jobs (id) WHERE done_at IS NULL;
    -- the twin's plain row locks, one per resource the operations touch
    CREATE TABLE plain_locks (name text PRIMARY KEY, n bigint NOT NULL DEFAULT 0);";

/// What an operation works on.
#[derive(Clone, Copy, Debug)]
enum Op {
    InvoiceNumber(usize),
    Payment(usize, i64),
    Tickets(usize, i32),
    FindOrCreate(usize),
    Increment(usize),
    InvoiceRow(usize),
    Entry(usize, i64),
    Claim,
}

impl Op {
    fn random(rng: &mut XorShift, kinds: &[u8]) -> Op {
        let kind = kinds[(rng.next() % kinds.len() as u64) as usize];
        let amount = (rng.next() % 2001) as i64 - 1000;
        match kind {
            0 => Op::InvoiceNumber((rng.next() % TENANTS as u64) as usize),
            1 => Op::Payment((rng.next() % ACCOUNTS as u64) as usize, amount),
            2 => Op::Tickets((rng.next() % 2) as usize, 1 + (rng.next() % 5) as i32),
            3 => Op::FindOrCreate((rng.next() % KEYS as u64) as usize),
            4 => Op::Increment((rng.next() % KEYS as u64) as usize),
            5 => Op::InvoiceRow((rng.next() % TENANTS as u64) as usize),
            6 => Op::Entry((rng.next() % ACCOUNTS as u64) as usize, amount),
            _ => Op::Claim,
        }
    }

    /// The resource the twin locks with a plain UPDATE for this operation.
    fn plain_lock(&self) -> String {
        match self {
            Op::InvoiceNumber(t) | Op::InvoiceRow(t) => format!("tenant-{t}"),
            Op::Payment(a, _) => format!("acct-{a}"),
            Op::Tickets(r, _) => format!("raffle-{r}"),
            Op::FindOrCreate(k) | Op::Increment(k) => format!("key-{k}"),
            Op::Entry(a, _) => format!("led-{a}"),
            Op::Claim => "queue".into(),
        }
    }
}

/// Every operation kind.
const ALL_KINDS: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 7];

/// What a committed operation returned.
#[derive(Clone, Debug)]
#[allow(dead_code)] // some fields are there for the failure messages
enum Outcome {
    InvoiceNumber(usize, String),
    Payment(usize, i64, i64, String),
    Tickets(usize, i32),
    FindOrCreate(usize, bool),
    Increment(usize),
    InvoiceRow(usize, String),
    Entry(usize, i64, i64, String),
    Claim(Vec<i64>, i64),
    Plain,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Exactly,
    PlainRowLocks,
}

fn code(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn run_op(client: &mut Client, op: Op, raffles: &[i64; 2], mode: Mode) -> Result<Outcome, postgres::Error> {
    if mode == Mode::PlainRowLocks {
        client.execute("UPDATE plain_locks SET n = n + 1 WHERE name = $1", &[&op.plain_lock()])?;
        return Ok(Outcome::Plain);
    }
    Ok(match op {
        Op::InvoiceNumber(t) => {
            let row = client.query_one("SELECT exactly.next_invoice_number($1)", &[&format!("tenant-{t}")])?;
            Outcome::InvoiceNumber(t, row.get(0))
        }
        Op::Payment(a, amount) => {
            let row = client.query_one(
                "SELECT id, running_balance::text FROM exactly.append_payment($1, $2::text::numeric)",
                &[&format!("acct-{a}"), &amount.to_string()],
            )?;
            Outcome::Payment(a, amount, row.get(0), row.get(1))
        }
        Op::Tickets(r, n) => {
            let row = client.query_one("SELECT exactly.batch_create_tickets($1, $2)", &[&raffles[r], &n])?;
            Outcome::Tickets(r, row.get(0))
        }
        Op::FindOrCreate(k) => {
            let row = client.query_one(
                "SELECT created FROM exactly.find_or_create('kv', jsonb_build_object('key', $1::text),
                                                            '{\"label\": \"made by find_or_create\"}')",
                &[&format!("key-{k}")],
            )?;
            Outcome::FindOrCreate(k, row.get(0))
        }
        Op::Increment(k) => {
            client.query_one(
                "SELECT exactly.increment('kv', jsonb_build_object('key', $1::text), 'hits')",
                &[&format!("key-{k}")],
            )?;
            Outcome::Increment(k)
        }
        Op::InvoiceRow(t) => {
            let row = client.query_one(
                "INSERT INTO invoices (tenant, amount) VALUES ($1, 1) RETURNING number",
                &[&format!("tenant-{t}")],
            )?;
            Outcome::InvoiceRow(t, row.get(0))
        }
        Op::Entry(a, amount) => {
            let row = client.query_one(
                "INSERT INTO entries (account, amount) VALUES ($1, $2::text::numeric)
                 RETURNING id, running_balance::text",
                &[&format!("led-{a}"), &amount.to_string()],
            )?;
            Outcome::Entry(a, amount, row.get(0), row.get(1))
        }
        Op::Claim => {
            let rows = client.query(
                "SELECT claim::text, (data->>'id')::bigint FROM exactly.claim_batch('jobs', 'done_at', 3)",
                &[],
            )?;
            let ids: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
            let marked = match rows.first() {
                Some(row) => client
                    .query_one("SELECT exactly.complete_batch($1::text::uuid)", &[&row.get::<_, String>(0)])?
                    .get(0),
                None => 0,
            };
            Outcome::Claim(ids, marked)
        }
    })
}

/// What one connection saw.
#[derive(Default)]
struct Report {
    committed: Vec<Outcome>,
    transactions: usize,
    commits: usize,
    rollbacks_on_purpose: usize,
    failures: BTreeMap<String, usize>,
    /// the operations of transactions that failed with 40P01 (up to the failing one)
    deadlocked: Vec<String>,
}

fn worker(i: usize, client: &mut Client, raffles: [i64; 2], mode: Mode, kinds: &'static [u8]) -> Report {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut report = Report::default();
    for _ in 0..TRANSACTIONS_PER_CONNECTION {
        report.transactions += 1;
        let n_ops = 2 + (rng.next() % 3) as usize;
        let ops: Vec<Op> = (0..n_ops).map(|_| Op::random(&mut rng, kinds)).collect();
        let roll_back = rng.next() % 10 == 0;
        client.batch_execute("BEGIN").unwrap();
        let mut outcomes = Vec::new();
        let mut failed = None;
        for (n, op) in ops.iter().enumerate() {
            match run_op(client, *op, &raffles, mode) {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    if code(&e) == "40P01" && report.deadlocked.len() < 3 {
                        report.deadlocked.push(format!("{:?}", &ops[..=n]));
                    }
                    failed = Some(code(&e));
                    break;
                }
            }
        }
        if let Some(state) = failed {
            *report.failures.entry(state).or_default() += 1;
            client.batch_execute("ROLLBACK").unwrap();
        } else if roll_back {
            report.rollbacks_on_purpose += 1;
            client.batch_execute("ROLLBACK").unwrap();
        } else {
            match client.batch_execute("COMMIT") {
                Ok(()) => {
                    report.commits += 1;
                    report.committed.extend(outcomes);
                }
                Err(e) => *report.failures.entry(code(&e)).or_default() += 1,
            }
        }
    }
    report
}

fn setup(cluster: &Cluster) -> [i64; 2] {
    let mut c = cluster.connect();
    c.batch_execute(SETUP).unwrap();
    c.execute("INSERT INTO jobs SELECT g FROM generate_series(1, $1::bigint) g", &[&QUEUE_ROWS]).unwrap();
    let mut names = Vec::new();
    for t in 0..TENANTS {
        names.push(format!("tenant-{t}"));
    }
    for a in 0..ACCOUNTS {
        names.push(format!("acct-{a}"));
        names.push(format!("led-{a}"));
    }
    for k in 0..KEYS {
        names.push(format!("key-{k}"));
    }
    names.extend(["raffle-0".to_string(), "raffle-1".into(), "queue".into()]);
    for name in names {
        c.execute("INSERT INTO plain_locks (name) VALUES ($1)", &[&name]).unwrap();
    }
    let mut raffles = [0i64; 2];
    for (r, requested) in RAFFLE_REQUESTS.iter().enumerate() {
        raffles[r] = c
            .query_one("INSERT INTO exactly.raffles (tickets_requested) VALUES ($1) RETURNING id", &[requested])
            .unwrap()
            .get(0);
    }
    raffles
}

/// Run the workload; returns every connection's report and prints the throughput.
fn run(cluster: &Cluster, mode: Mode, kinds: &'static [u8], label: &str) -> Vec<Report> {
    let raffles = setup(cluster);
    let started = Instant::now();
    let reports = at_once(cluster, CONNECTIONS, move |i, client| worker(i, client, raffles, mode, kinds));
    let elapsed = started.elapsed();
    let transactions: usize = reports.iter().map(|r| r.transactions).sum();
    let commits: usize = reports.iter().map(|r| r.commits).sum();
    let failures = failure_counts(&reports);
    println!(
        "{label}: {transactions} transactions from {CONNECTIONS} connections in {:.2} s = {:.0} transactions/s \
         ({commits} committed, {} rolled back on purpose, failures by SQLSTATE {failures:?})",
        elapsed.as_secs_f64(),
        transactions as f64 / elapsed.as_secs_f64(),
        reports.iter().map(|r| r.rollbacks_on_purpose).sum::<usize>(),
    );
    for ops in reports.iter().flat_map(|r| r.deadlocked.iter()).take(5) {
        println!("{label}: a transaction that got 40P01 ran {ops}");
    }
    assert!(elapsed < RUN_BOUND, "{label}: the run took {elapsed:?}, more than {RUN_BOUND:?}");
    reports
}

fn failure_counts(reports: &[Report]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for report in reports {
        for (state, n) in &report.failures {
            *counts.entry(state.clone()).or_default() += n;
        }
    }
    counts
}

/// The check: no deadlock reported, and every failure a serialization failure (40001) the
/// client retries. Returns what is wrong.
fn check_failures(counts: &BTreeMap<String, usize>) -> Result<(), String> {
    let deadlocks = counts.get("40P01").copied().unwrap_or(0);
    let others: BTreeMap<&String, &usize> = counts.iter().filter(|(s, _)| s.as_str() != "40001").collect();
    if deadlocks > 0 || !others.is_empty() {
        return Err(format!("{deadlocks} deadlocks (40P01); failures other than 40001: {others:?}"));
    }
    Ok(())
}

fn number_suffix(number: &str) -> i64 {
    number
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {number}"))
}

/// Every invariant after the run, against what the clients were told had committed.
fn check_invariants(cluster: &Cluster, reports: &[Report]) {
    let mut c = cluster.connect();
    let mut faults: Vec<String> = Vec::new();
    let committed: Vec<&Outcome> = reports.iter().flat_map(|r| r.committed.iter()).collect();

    // invoice numbers: per tenant, the numbers handed out by the function and by the trigger
    // together are exactly 1..N, N the counter; the table holds exactly the trigger's numbers
    for t in 0..TENANTS {
        let tenant = format!("tenant-{t}");
        let mut numbers: Vec<i64> = Vec::new();
        let mut rows: BTreeSet<String> = BTreeSet::new();
        for outcome in &committed {
            match outcome {
                Outcome::InvoiceNumber(x, n) if *x == t => numbers.push(number_suffix(n)),
                Outcome::InvoiceRow(x, n) if *x == t => {
                    numbers.push(number_suffix(n));
                    rows.insert(n.clone());
                }
                _ => {}
            }
        }
        numbers.sort();
        let next: Option<i64> = c
            .query_opt("SELECT next_value FROM exactly.invoice_sequences WHERE tenant = $1", &[&tenant])
            .unwrap()
            .map(|r| r.get(0));
        let n = numbers.len() as i64;
        if numbers != (1..=n).collect::<Vec<_>>() {
            faults.push(format!("{tenant}: committed numbers are not 1..{n}: {numbers:?}"));
        }
        if n > 0 && next != Some(n + 1) {
            faults.push(format!("{tenant}: next_value {next:?}, expected {}", n + 1));
        }
        let in_table: BTreeSet<String> = c
            .query("SELECT number FROM invoices WHERE tenant = $1", &[&tenant])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if in_table != rows {
            faults.push(format!("{tenant}: invoices table holds {} numbers, clients committed {}", in_table.len(), rows.len()));
        }
    }

    // the ledger: verify_ledger, balances and entries, every acknowledged entry present with
    // its acknowledged running balance
    for row in c.query("SELECT account, ok, detail FROM exactly.verify_ledger()", &[]).unwrap() {
        if row.get::<_, Option<bool>>(1) != Some(true) {
            faults.push(format!("verify_ledger: {:?} {:?}", row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(2)));
        }
    }
    for a in 0..ACCOUNTS {
        let account = format!("acct-{a}");
        let mine: Vec<(i64, i64, String)> = committed
            .iter()
            .filter_map(|o| match o {
                Outcome::Payment(x, amount, id, rb) if *x == a => Some((*amount, *id, rb.clone())),
                _ => None,
            })
            .collect();
        let total: i64 = mine.iter().map(|m| m.0).sum();
        let stored = c
            .query_opt("SELECT balance::text, entries FROM exactly.accounts WHERE account = $1", &[&account])
            .unwrap()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)));
        let want = if mine.is_empty() { None } else { Some((total.to_string(), mine.len() as i64)) };
        if stored.as_ref().map(|(b, e)| (b.parse::<f64>().ok(), *e)) != want.as_ref().map(|(b, e)| (b.parse::<f64>().ok(), *e)) {
            faults.push(format!("{account}: balance and entries {stored:?}, committed {want:?}"));
        }
        let rows: BTreeMap<i64, String> = c
            .query("SELECT id, running_balance::text FROM exactly.payments WHERE account = $1", &[&account])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (_, id, rb) in &mine {
            if rows.get(id) != Some(rb) {
                faults.push(format!("{account}: acknowledged entry {id} with running balance {rb}, stored {:?}", rows.get(id)));
            }
        }
        if rows.len() != mine.len() {
            faults.push(format!("{account}: {} entries stored, {} committed", rows.len(), mine.len()));
        }
    }

    // the trigger-kept ledger
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT running_balance, sum(amount) OVER (PARTITION BY account ORDER BY id) AS expected
               FROM entries) x WHERE running_balance IS DISTINCT FROM expected",
            &[],
        )
        .unwrap()
        .get(0);
    if wrong != 0 {
        faults.push(format!("entries: {wrong} wrong running balances"));
    }
    let entries: BTreeMap<i64, String> = c
        .query("SELECT id, running_balance::text FROM entries", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let acknowledged: Vec<(i64, String)> = committed
        .iter()
        .filter_map(|o| match o {
            Outcome::Entry(_, _, id, rb) => Some((*id, rb.clone())),
            _ => None,
        })
        .collect();
    if entries.len() != acknowledged.len() {
        faults.push(format!("entries: {} rows, {} committed inserts", entries.len(), acknowledged.len()));
    }
    for (id, rb) in &acknowledged {
        if entries.get(id) != Some(rb) {
            faults.push(format!("entries: acknowledged row {id} running balance {rb}, stored {:?}", entries.get(id)));
        }
    }

    // raffles
    let raffles: Vec<(i64, i64, i64)> = c
        .query("SELECT id, tickets_requested, tickets_created FROM exactly.raffles ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (r, (id, requested, created)) in raffles.iter().enumerate() {
        let made: i64 = committed
            .iter()
            .map(|o| match o {
                Outcome::Tickets(x, n) if *x == r => *n as i64,
                _ => 0,
            })
            .sum();
        let rows: i64 = c.query_one("SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1", &[id]).unwrap().get(0);
        if created > requested || rows != *created || made != *created {
            faults.push(format!(
                "raffle {id}: requested {requested}, tickets_created {created}, rows {rows}, committed calls created {made}"
            ));
        }
    }
    let duplicate_codes: i64 = c
        .query_one("SELECT count(*) - count(DISTINCT code) FROM exactly.tickets", &[])
        .unwrap()
        .get(0);
    if duplicate_codes != 0 {
        faults.push(format!("{duplicate_codes} duplicate ticket codes"));
    }

    // find_or_create and increment: one row per key, at most one caller told `created`,
    // every committed increment counted
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let rows: Vec<i64> = c.query("SELECT hits FROM kv WHERE key = $1", &[&key]).unwrap().iter().map(|r| r.get(0)).collect();
        let touched = committed.iter().any(|o| matches!(o, Outcome::FindOrCreate(x, _) | Outcome::Increment(x) if *x == k));
        let told_created = committed.iter().filter(|o| matches!(o, Outcome::FindOrCreate(x, true) if *x == k)).count();
        let increments = committed.iter().filter(|o| matches!(o, Outcome::Increment(x) if *x == k)).count() as i64;
        if rows.len() != usize::from(touched) {
            faults.push(format!("{key}: {} rows, touched by a committed call: {touched}", rows.len()));
        }
        if told_created > 1 {
            faults.push(format!("{key}: {told_created} committed callers were told created"));
        }
        if let Some(hits) = rows.first() {
            if *hits != increments {
                faults.push(format!("{key}: hits {hits}, committed increments {increments}"));
            }
        }
    }

    // claims: no row delivered twice among committed claims, completions marked exactly
    // the delivered rows
    let mut delivered: BTreeMap<i64, usize> = BTreeMap::new();
    let mut marked = 0;
    for outcome in &committed {
        if let Outcome::Claim(ids, m) = outcome {
            for id in ids {
                *delivered.entry(*id).or_default() += 1;
            }
            marked += m;
        }
    }
    let twice = delivered.values().filter(|n| **n > 1).count();
    if twice > 0 {
        faults.push(format!("{twice} queue rows completed by two committed claims"));
    }
    let done: BTreeSet<i64> = c
        .query("SELECT id FROM jobs WHERE done_at IS NOT NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let delivered_ids: BTreeSet<i64> = delivered.keys().copied().collect();
    if done != delivered_ids || marked != done.len() as i64 {
        faults.push(format!(
            "queue: {} rows done, {} delivered by committed claims, completions marked {marked}",
            done.len(),
            delivered_ids.len()
        ));
    }
    let live: i64 = c.query_one("SELECT count(*) FROM exactly.claims", &[]).unwrap().get(0);
    if live != 0 {
        faults.push(format!("{live} claims left behind by completed or rolled-back transactions"));
    }

    assert!(faults.is_empty(), "{} invariant fault(s):\n  {}", faults.len(), faults.join("\n  "));
}

/// The whole mix: no 40P01, every failure 40001, every invariant holds.
#[test]
fn any_mix_of_pg_exactly_calls_never_deadlocks() {
    let cluster = Cluster::start();
    let reports = run(&cluster, Mode::Exactly, ALL_KINDS, "all operations");
    let counts = failure_counts(&reports);
    let verdict = check_failures(&counts);
    check_invariants(&cluster, &reports);
    verdict.unwrap();
    let commits: usize = reports.iter().map(|r| r.commits).sum();
    assert!(commits > CONNECTIONS * TRANSACTIONS_PER_CONNECTION / 4, "most transactions commit: {commits}");
}

/// The same mix restricted to the functions whose locks README 0.2.0 already puts in one
/// order (invoice numbers and their trigger, payments, the running-balance trigger, ticket
/// batches), plus claims: the same checks.
#[test]
fn a_mix_of_numbers_payments_tickets_triggers_and_claims_never_deadlocks() {
    let cluster = Cluster::start();
    let reports = run(&cluster, Mode::Exactly, &[0, 1, 2, 5, 6, 7], "numbers, payments, tickets, triggers, claims");
    let counts = failure_counts(&reports);
    let verdict = check_failures(&counts);
    check_invariants(&cluster, &reports);
    verdict.unwrap();
}

/// find_or_create and increment on five keys of one user table, mixed with invoice
/// numbers: the user table's row locks must join pg_exactly's lock order too.
#[test]
fn find_or_create_and_increment_mixed_with_invoice_numbers_never_deadlock() {
    let cluster = Cluster::start();
    let reports = run(&cluster, Mode::Exactly, &[0, 3, 4, 4], "find_or_create, increment, invoice numbers");
    let counts = failure_counts(&reports);
    let verdict = check_failures(&counts);
    check_invariants(&cluster, &reports);
    verdict.unwrap();
}

/// The twin: the same transactions (same seeds, same resources in the same random order)
/// taking plain `UPDATE ... WHERE name = $1` row locks deadlock, and `check_failures`
/// reports it. So the check above can fail.
#[test]
fn the_check_catches_deadlocks_of_plain_row_locks() {
    let cluster = Cluster::start();
    let reports = run(&cluster, Mode::PlainRowLocks, ALL_KINDS, "plain row locks (the twin)");
    let counts = failure_counts(&reports);
    assert!(counts.get("40P01").copied().unwrap_or(0) > 0, "plain row locks in random order deadlock: {counts:?}");
    let verdict = check_failures(&counts);
    assert!(verdict.is_err() && verdict.unwrap_err().contains("40P01"), "the check reports the deadlocks");
}
