//! Double-entry transfers, multi-leg transfers, holds (two-phase transfers), timeouts and
//! balance limits under real concurrency: every test drives many real connections (one
//! thread, one backend each) against a throwaway cluster.
//!
//! Written from the documentation alone (docs/ledger.md, DESIGN.md's "Double-entry
//! transfers and holds" and its guarantees table, the README's "Running balances"), as an
//! attacker and a careless user would, before the implementation could be read:
//! - 20 connections transfer random amounts between random pairs of 10 accounts, named in
//!   random order, 1 to 3 transfers per transaction (separate calls or one multi-leg call),
//!   a fifth rolled back: no 40P01, exact balances, every transfer exactly its two entries;
//!   the same load on a plain PL/pgSQL twin deadlocks;
//! - 40 connections race `exactly.hold` out of an account with `min_balance`, and into one
//!   with `max_balance`: never more reserved than the limit allows (a monitor samples it
//!   throughout); a check-then-insert twin over-reserves;
//! - holds, posts, voids, transfers and appends racing against `min_balance`/`max_balance`;
//! - multi-leg calls whose later leg is refused (limits, same account, currencies, bad
//!   amounts, bad legs) while other connections transfer on the same accounts: nothing
//!   of the refused call remains;
//! - holds expiring while they are being posted, voided and expired by `expire_holds()`;
//! - one idempotency key from 16 connections at once (transfers and holds);
//! - a post racing a void (and a post, and a void) of the same hold: exactly one wins;
//! - `balance_at` after concurrent transfers with explicit `event_at`s, at and just before
//!   each moment (an entry "at or before" counts).
//!
//! Every test ends with `ledger_faults`: running balances chain per account, each account's
//! balance and entry count match its entries, every transfer has exactly its two entries,
//! no entry points at a missing transfer, pending totals equal the sums of pending holds,
//! limits hold, and `exactly.verify_ledger()` is all ok.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{at_once, ledger_checks, sqlstate, Client, Cluster, XorShift};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn code(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Rows of a query as text (NULL as "NULL"), through the simple protocol.
fn texts(client: &mut Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn one(client: &mut Client, sql: &str) -> String {
    texts(client, sql)
        .first()
        .and_then(|r| r.first().cloned())
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A numeric's text as cents ("-12.3" -> -1230); panics on finer amounts.
fn cents_of(text: &str) -> i64 {
    let negative = text.starts_with('-');
    let t = text.trim_start_matches('-');
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut frac = frac.trim_end_matches('0').to_string();
    assert!(frac.len() <= 2, "not a whole number of cents: {text}");
    while frac.len() < 2 {
        frac.push('0');
    }
    let v = int.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
    if negative {
        -v
    } else {
        v
    }
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// Everything that must hold of the ledger at any committed moment. Empty when all is well.
fn ledger_faults(client: &mut Client) -> Vec<String> {
    let mut faults = ledger_checks::entry_faults(client);
    faults.extend(invariant_faults(client));
    faults.extend(ledger_checks::verify_ledger_faults(client));
    faults
}

/// Pending totals and limits, in one statement (one snapshot): cheap enough to sample
/// while the load runs.
const INVARIANTS: &str = "
WITH d AS (SELECT from_account AS account, sum(amount) AS s FROM exactly.holds
           WHERE state::text = 'pending' GROUP BY 1),
     c AS (SELECT to_account AS account, sum(amount) AS s FROM exactly.holds
           WHERE state::text = 'pending' GROUP BY 1)
SELECT 'account ' || a.account || ': pending_debits ' || coalesce(a.pending_debits, 0)::text
       || ' pending_credits ' || coalesce(a.pending_credits, 0)::text
       || ', but pending holds out ' || coalesce(d.s, 0)::text || ' in ' || coalesce(c.s, 0)::text
FROM exactly.accounts a LEFT JOIN d USING (account) LEFT JOIN c USING (account)
WHERE coalesce(a.pending_debits, 0) <> coalesce(d.s, 0) OR coalesce(a.pending_credits, 0) <> coalesce(c.s, 0)
UNION ALL
SELECT 'account ' || account || ': balance ' || balance::text || ' - pending_debits '
       || coalesce(pending_debits, 0)::text || ' below min_balance ' || min_balance::text
FROM exactly.accounts WHERE balance - coalesce(pending_debits, 0) < min_balance
UNION ALL
SELECT 'account ' || account || ': balance ' || balance::text || ' + pending_credits '
       || coalesce(pending_credits, 0)::text || ' above max_balance ' || max_balance::text
FROM exactly.accounts WHERE balance + coalesce(pending_credits, 0) > max_balance
UNION ALL
SELECT 'hold ' || id || ' is ' || state::text || ' with posted_amount ' || coalesce(posted_amount::text, 'NULL')
       || ' transfer ' || coalesce(transfer_id::text, 'NULL')
FROM exactly.holds
WHERE (state::text = 'posted') <> (transfer_id IS NOT NULL)
   OR (state::text = 'posted') <> (posted_amount IS NOT NULL)
   OR state::text NOT IN ('pending', 'posted', 'voided', 'expired')
   OR posted_amount > amount OR posted_amount <= 0
UNION ALL
SELECT 'hold ' || h.id || ' has ' || count(t.id) || ' transfers'
FROM exactly.holds h LEFT JOIN exactly.transfers t ON t.hold_id = h.id
GROUP BY h.id, h.state HAVING count(t.id) <> CASE WHEN h.state::text = 'posted' THEN 1 ELSE 0 END
UNION ALL
SELECT 'hold ' || h.id || ' (' || h.from_account || ' -> ' || h.to_account || ', posted '
       || h.posted_amount::text || ') but its transfer ' || t.id || ' is ' || t.from_account
       || ' -> ' || t.to_account || ' ' || t.amount::text || ' hold_id ' || coalesce(t.hold_id::text, 'NULL')
FROM exactly.holds h JOIN exactly.transfers t ON t.id = h.transfer_id
WHERE t.from_account <> h.from_account OR t.to_account <> h.to_account
   OR t.amount <> h.posted_amount OR t.hold_id IS DISTINCT FROM h.id
LIMIT 10";

fn invariant_faults(client: &mut Client) -> Vec<String> {
    texts(client, INVARIANTS)
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// A connection sampling `INVARIANTS` until stopped; returns the distinct faults seen.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(Vec<String>, usize)>,
}

impl Monitor {
    fn start(cluster: &Cluster) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = cluster.connect();
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let (mut seen, mut samples) = (Vec::<String>::new(), 0);
            while !s.load(Ordering::SeqCst) {
                for f in invariant_faults(&mut client) {
                    if !seen.contains(&f) && seen.len() < 20 {
                        seen.push(f);
                    }
                }
                samples += 1;
                thread::sleep(Duration::from_millis(2));
            }
            (seen, samples)
        });
        Monitor { stop, handle }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let (faults, samples) = self.handle.join().unwrap();
        eprintln!("monitor: {samples} samples");
        faults
    }
}

fn assert_clean(client: &mut Client, what: &str) {
    let faults = ledger_faults(client);
    assert!(
        faults.is_empty(),
        "{what}: ledger faults:\n{}",
        faults.join("\n")
    );
}

fn legs_json(legs: &[(String, String, i64)], random: &mut XorShift) -> String {
    let items: Vec<String> = legs
        .iter()
        .map(|(f, t, c)| {
            // the amount as a JSON number or as a string holding one
            let amount = if random.next() % 2 == 0 {
                money(*c)
            } else {
                format!("\"{}\"", money(*c))
            };
            format!("{{\"from\": \"{f}\", \"to\": \"{t}\", \"amount\": {amount}}}")
        })
        .collect();
    format!("[{}]", items.join(", "))
}

// ---------------------------------------------------------------------------------------
// 1. Random transfers between random pairs, in random order, with rollbacks
// ---------------------------------------------------------------------------------------

const PAIR_ACCOUNTS: u64 = 10;
const PAIR_CONNECTIONS: usize = 20;
const PAIR_TXNS: usize = 25;

#[derive(Default)]
struct PairLoad {
    /// (transfer id, from, to, cents) of every committed transfer
    committed: Vec<(i64, String, String, i64)>,
    retries: usize,
    deadlocks: usize,
    faults: Vec<String>,
}

fn pair_account(i: u64) -> String {
    format!("acct-{i}")
}

/// `PAIR_TXNS` transactions of 1 to 3 transfers between random pairs, named in random
/// order; for pg_exactly a third of the multi-transfer transactions use one
/// `exactly.transfers(legs)` call. One in five is rolled back. 40001 is retried like a
/// framework retries serialization failures; a 40P01 is counted and its transaction dropped.
fn pair_load(i: usize, client: &mut Client, naive: bool) -> PairLoad {
    let mut random = XorShift(0x7a11_5fe2 ^ ((i as u64 + 1) << 24));
    let mut out = PairLoad::default();
    // bounded in time: the naive twin can spend long in deadlock detection
    let deadline = Instant::now() + Duration::from_secs(if naive { 10 } else { 30 });
    for _ in 0..PAIR_TXNS {
        if Instant::now() > deadline {
            break;
        }
        let n = match random.next() % 10 {
            0..=4 => 1,
            5..=7 => 2,
            _ => 3,
        };
        let legs: Vec<(String, String, i64)> = (0..n)
            .map(|_| {
                let a = random.next() % PAIR_ACCOUNTS;
                let b = (a + 1 + random.next() % (PAIR_ACCOUNTS - 1)) % PAIR_ACCOUNTS;
                (
                    pair_account(a),
                    pair_account(b),
                    1 + (random.next() % 9_999) as i64,
                )
            })
            .collect();
        let as_legs = !naive && n > 1 && random.next() % 3 == 0;
        let json = legs_json(&legs, &mut random);
        let rollback = random.next() % 5 == 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = (|| -> Result<Option<Vec<i64>>, postgres::Error> {
                let mut tx = client.transaction()?;
                let mut ids = Vec::new();
                if as_legs {
                    let rows = tx.query(
                        "SELECT id, leg FROM exactly.transfers($1::text::jsonb)",
                        &[&json],
                    )?;
                    let order: Vec<i32> = rows.iter().map(|r| r.get::<_, i32>(1)).collect();
                    if order != (1..=n as i32).collect::<Vec<_>>() {
                        out.faults
                            .push(format!("legs returned in order {order:?} for {json}"));
                    }
                    ids.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
                } else {
                    for (f, t, c) in &legs {
                        let sql = if naive {
                            "SELECT naive_transfer($1, $2, $3::text::numeric)"
                        } else {
                            "SELECT id FROM exactly.transfer($1, $2, $3::text::numeric)"
                        };
                        ids.push(tx.query_one(sql, &[f, t, &money(*c)])?.get(0));
                    }
                }
                if rollback {
                    tx.rollback()?;
                    return Ok(None);
                }
                tx.commit()?;
                Ok(Some(ids))
            })();
            match result {
                Ok(Some(ids)) => {
                    for (id, (f, t, c)) in ids.into_iter().zip(&legs) {
                        out.committed.push((id, f.clone(), t.clone(), *c));
                    }
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    match code(&e).as_str() {
                        "40001" => out.retries += 1,
                        "40P01" => {
                            // counted; the naive twin's transaction is given up, not retried
                            out.deadlocks += 1;
                            break;
                        }
                        _ => {
                            out.faults.push(format!("{}: {json}", describe(&e)));
                            break;
                        }
                    }
                    if attempts > 300 {
                        out.faults
                            .push(format!("gave up after {attempts} attempts: {json}"));
                        break;
                    }
                    thread::sleep(Duration::from_micros(200 + random.next() % 2_000));
                }
            }
        }
    }
    out
}

/// Half the accounts exist beforehand, half are created by their first use, under the load.
fn create_pair_accounts(client: &mut Client) {
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account) SELECT 'acct-' || i FROM generate_series(0, 4) i",
        )
        .unwrap();
}

#[test]
fn twenty_connections_transferring_between_random_pairs_never_deadlock_and_balance_exactly() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    create_pair_accounts(&mut client);
    let started = Instant::now();
    let loads = at_once(&cluster, PAIR_CONNECTIONS, |i, c| pair_load(i, c, false));
    eprintln!("load took {:?}", started.elapsed());
    let (mut committed, mut retries, mut deadlocks, mut faults) = (Vec::new(), 0, 0, Vec::new());
    for l in loads {
        committed.extend(l.committed);
        retries += l.retries;
        deadlocks += l.deadlocks;
        faults.extend(l.faults);
    }
    eprintln!(
        "{} transfers committed, {retries} retries after 40001",
        committed.len()
    );
    assert!(
        faults.is_empty(),
        "errors during the load:\n{}",
        faults.join("\n")
    );
    assert_eq!(deadlocks, 0, "40P01 was raised {deadlocks} times");

    // exactly the committed transfers exist, as committed
    let stored: HashMap<i64, (String, String, i64)> = texts(
        &mut client,
        "SELECT id, from_account, to_account, amount::text FROM exactly.transfers",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].parse().unwrap(),
            (r[1].clone(), r[2].clone(), cents_of(&r[3])),
        )
    })
    .collect();
    let wanted: HashMap<i64, (String, String, i64)> = committed
        .iter()
        .map(|(id, f, t, c)| (*id, (f.clone(), t.clone(), *c)))
        .collect();
    assert_eq!(
        wanted.len(),
        committed.len(),
        "two commits were told the same transfer id"
    );
    for (id, w) in &wanted {
        assert_eq!(stored.get(id), Some(w), "committed transfer {id}");
    }
    assert_eq!(
        stored.len(),
        wanted.len(),
        "transfers that no client committed exist (rolled back or retried work left rows)"
    );

    // balances: the committed transfers' net per account; they sum to zero
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (_, f, t, c) in &committed {
        *expected.entry(f.clone()).or_default() -= c;
        *expected.entry(t.clone()).or_default() += c;
    }
    let balances: BTreeMap<String, i64> = texts(
        &mut client,
        "SELECT account, balance::text FROM exactly.accounts",
    )
    .into_iter()
    .map(|r| (r[0].clone(), cents_of(&r[1])))
    .collect();
    for i in 0..PAIR_ACCOUNTS {
        let a = pair_account(i);
        assert_eq!(
            balances.get(&a).copied().unwrap_or(0),
            expected.get(&a).copied().unwrap_or(0),
            "balance of {a}"
        );
    }
    assert_eq!(balances.values().sum::<i64>(), 0, "balances sum to zero");

    // the from entry comes first ("-amount on from_account, then +amount on to_account")
    let misordered = texts(
        &mut client,
        "SELECT t.id FROM exactly.transfers t
         WHERE (SELECT min(id) FROM exactly.payments p WHERE p.transfer_id = t.id AND p.account = t.from_account)
             > (SELECT min(id) FROM exactly.payments p WHERE p.transfer_id = t.id AND p.account = t.to_account)
         LIMIT 5",
    );
    assert!(
        misordered.is_empty(),
        "transfers whose +amount entry precedes the -amount entry: {misordered:?}"
    );
    assert_clean(&mut client, "after the load");
}

/// A careless user's transfer: UPDATE the two accounts in the order the caller names them.
const NAIVE_TRANSFER: &str = "
CREATE TABLE naive_accounts (account text PRIMARY KEY, balance numeric NOT NULL DEFAULT 0);
INSERT INTO naive_accounts SELECT 'acct-' || i FROM generate_series(0, 9) i;
CREATE TABLE naive_transfers (id bigserial PRIMARY KEY, from_account text, to_account text, amount numeric);
CREATE TABLE naive_entries (id bigserial PRIMARY KEY, account text, amount numeric, running_balance numeric,
                            transfer_id bigint);
CREATE FUNCTION naive_transfer(p_from text, p_to text, p_amount numeric) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    tid bigint;
    rb numeric;
BEGIN
    INSERT INTO naive_transfers (from_account, to_account, amount) VALUES (p_from, p_to, p_amount)
        RETURNING id INTO tid;
    UPDATE naive_accounts SET balance = balance - p_amount WHERE account = p_from RETURNING balance INTO rb;
    INSERT INTO naive_entries (account, amount, running_balance, transfer_id) VALUES (p_from, -p_amount, rb, tid);
    UPDATE naive_accounts SET balance = balance + p_amount WHERE account = p_to RETURNING balance INTO rb;
    INSERT INTO naive_entries (account, amount, running_balance, transfer_id) VALUES (p_to, p_amount, rb, tid);
    RETURN tid;
END $$;
";

/// The same load on the naive twin: it deadlocks, so the check above can fail.
#[test]
fn the_same_transfers_deadlock_on_a_naive_plpgsql_twin() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(NAIVE_TRANSFER).unwrap();
    let loads = at_once(&cluster, PAIR_CONNECTIONS, |i, c| pair_load(i, c, true));
    let deadlocks: usize = loads.iter().map(|l| l.deadlocks).sum();
    let faults: Vec<&String> = loads.iter().flat_map(|l| &l.faults).collect();
    eprintln!("naive twin: {deadlocks} deadlocks, faults {faults:?}");
    assert!(
        deadlocks > 0,
        "the naive twin never deadlocked: the test could not fail"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Holds racing a limit
// ---------------------------------------------------------------------------------------

fn race_holds(cluster: &Cluster, sql: &'static str) -> Vec<Result<i64, String>> {
    at_once(cluster, 40, move |_, c| match c.query_one(sql, &[]) {
        Ok(row) => Ok(row.get::<_, i64>(0)),
        Err(e) => Err(code(&e)),
    })
}

#[test]
fn forty_holds_of_7_on_a_balance_of_100_reserve_exactly_14() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('wallet', 0);
             SELECT exactly.append_payment('wallet', 100);",
        )
        .unwrap();
    let monitor = Monitor::start(&cluster);
    // 'shop' does not exist yet: 40 first uses race too
    let outcomes = race_holds(&cluster, "SELECT id FROM exactly.hold('wallet', 'shop', 7)");
    let seen = monitor.stop();
    assert!(
        seen.is_empty(),
        "the monitor saw, during the race:\n{}",
        seen.join("\n")
    );
    let ok: Vec<i64> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
    let refused: Vec<String> = outcomes.iter().filter_map(|o| o.clone().err()).collect();
    assert_eq!(ok.len(), 14, "floor(100 / 7) holds: {outcomes:?}");
    assert!(
        refused.iter().all(|c| c == "23514"),
        "refusals: {refused:?}"
    );
    assert_eq!(
        ok.iter().collect::<HashSet<_>>().len(),
        14,
        "distinct hold ids"
    );
    let row = &texts(
        &mut client,
        "SELECT a.balance::text, a.pending_debits::text, s.pending_credits::text,
                (SELECT count(*) FROM exactly.holds WHERE state::text = 'pending')::text,
                (SELECT sum(amount) FROM exactly.holds WHERE state::text = 'pending')::text,
                (SELECT count(*) FROM exactly.payments)::text
         FROM exactly.accounts a, exactly.accounts s WHERE a.account = 'wallet' AND s.account = 'shop'",
    )[0];
    assert_eq!(cents_of(&row[0]), 10_000, "holds move nothing");
    assert_eq!(cents_of(&row[1]), 9_800, "wallet pending_debits");
    assert_eq!(cents_of(&row[2]), 9_800, "shop pending_credits");
    assert_eq!(row[3], "14");
    assert_eq!(cents_of(&row[4]), 9_800);
    assert_eq!(row[5], "1", "no entry besides the opening balance");
    // the 2 left are available, not a cent more: to holds, transfers and appends alike
    for (sql, want) in [
        ("SELECT exactly.hold('wallet', 'shop', 2.01)", "23514"),
        ("SELECT exactly.transfer('wallet', 'shop', 2.01)", "23514"),
        ("SELECT exactly.append_payment('wallet', -2.01)", "23514"),
    ] {
        assert_eq!(sqlstate(client.batch_execute(sql)), want, "{sql}");
    }
    client
        .batch_execute("SELECT exactly.transfer('wallet', 'shop', 1); SELECT exactly.hold('wallet', 'shop', 1)")
        .unwrap();
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.append_payment('wallet', -0.01)")),
        "23514",
        "available is 0: a negative append must see the pending holds"
    );
    assert_clean(&mut client, "after the race");
}

/// A careless user's hold: check the available balance, then insert the hold, without a lock.
/// `pg_sleep` stands for the application's work between the check and the insert.
const NAIVE_HOLD: &str = "
CREATE TABLE naive_wallets (account text PRIMARY KEY, balance numeric NOT NULL, min_balance numeric);
INSERT INTO naive_wallets VALUES ('wallet', 100, 0);
CREATE TABLE naive_holds (id bigserial PRIMARY KEY, from_account text, to_account text, amount numeric,
                          state text NOT NULL DEFAULT 'pending');
CREATE FUNCTION naive_hold(p_from text, p_to text, p_amount numeric) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    available numeric;
    hid bigint;
BEGIN
    SELECT w.balance - coalesce((SELECT sum(h.amount) FROM naive_holds h
                                 WHERE h.from_account = w.account AND h.state = 'pending'), 0) - w.min_balance
      INTO available FROM naive_wallets w WHERE w.account = p_from;
    IF available < p_amount THEN
        RAISE EXCEPTION 'insufficient funds in %', p_from USING ERRCODE = 'check_violation';
    END IF;
    PERFORM pg_sleep(0.05);
    INSERT INTO naive_holds (from_account, to_account, amount) VALUES (p_from, p_to, p_amount) RETURNING id INTO hid;
    RETURN hid;
END $$;
";

#[test]
fn the_same_hold_race_over_reserves_on_a_naive_check_then_insert() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(NAIVE_HOLD).unwrap();
    let outcomes = race_holds(&cluster, "SELECT naive_hold('wallet', 'shop', 7)");
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    eprintln!("naive hold: {ok} of 40 holds of 7 granted on a balance of 100");
    assert!(
        ok > 14,
        "the naive twin never over-reserved: the test could not fail"
    );
}

/// Holds, posts (whole and partial), voids, transfers and negative appends racing against a
/// `min_balance` and a `max_balance`; a monitor samples pending totals and limits meanwhile.
#[test]
fn holds_posts_voids_transfers_and_appends_racing_keep_limits_and_pending_totals() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('wallet', 0);
             INSERT INTO exactly.accounts (account, max_balance) VALUES ('vault', 300);
             INSERT INTO exactly.accounts (account) VALUES ('bank');
             SELECT exactly.append_payment('wallet', 500);",
        )
        .unwrap();
    let monitor = Monitor::start(&cluster);
    let results = at_once(&cluster, 20, |i, c| {
        let mut random = XorShift(0x5eed ^ ((i as u64 + 1) << 20));
        let (mut faults, mut ok, mut refused) = (Vec::new(), 0, 0);
        let mut mine: Vec<(i64, i64)> = Vec::new(); // my pending holds (id, cents)
        let deadline = Instant::now() + Duration::from_secs(6);
        for _ in 0..60 {
            if Instant::now() > deadline {
                break;
            }
            let amount = money(100 + (random.next() % 4_000) as i64);
            let op = random.next() % 10;
            let (sql, expect_refusal): (String, bool) = match op {
                0 | 1 => (
                    format!(
                        "SELECT id, amount::text FROM exactly.hold('wallet', 'bank', {amount})"
                    ),
                    true,
                ),
                2 => (
                    format!("SELECT id, amount::text FROM exactly.hold('bank', 'vault', {amount})"),
                    true,
                ),
                3 => (
                    format!("SELECT id FROM exactly.transfer('wallet', 'bank', {amount})"),
                    true,
                ),
                4 => (
                    format!("SELECT id FROM exactly.transfer('bank', 'wallet', {amount})"),
                    false,
                ),
                5 => (
                    format!("SELECT id FROM exactly.transfer('bank', 'vault', {amount})"),
                    true,
                ),
                6 => (
                    format!("SELECT id FROM exactly.transfer('vault', 'bank', {amount})"),
                    false,
                ),
                7 => (
                    format!("SELECT id FROM exactly.append_payment('wallet', -{amount})"),
                    true,
                ),
                _ => {
                    let Some((hold, cents)) = (!mine.is_empty())
                        .then(|| mine.swap_remove((random.next() % mine.len() as u64) as usize))
                    else {
                        continue;
                    };
                    match random.next() % 3 {
                        0 => (format!("SELECT id FROM exactly.post_hold({hold})"), false),
                        1 => (
                            format!(
                                "SELECT id FROM exactly.post_hold({hold}, {})",
                                money(1 + cents / 3)
                            ),
                            false,
                        ),
                        _ => (format!("SELECT id FROM exactly.void_hold({hold})"), false),
                    }
                }
            };
            match c.query(sql.as_str(), &[]) {
                Ok(rows) => {
                    ok += 1;
                    if op <= 2 {
                        mine.push((rows[0].get(0), cents_of(&rows[0].get::<_, String>(1))));
                    }
                }
                Err(e) if expect_refusal && code(&e) == "23514" => refused += 1,
                Err(e) if code(&e) == "40001" => {}
                Err(e) => faults.push(format!("{sql}: {}", describe(&e))),
            }
        }
        (faults, ok, refused)
    });
    let seen = monitor.stop();
    let mut faults = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for (f, o, r) in results {
        faults.extend(f);
        ok += o;
        refused += r;
    }
    eprintln!("{ok} calls succeeded, {refused} refused by a limit");
    assert!(
        faults.is_empty(),
        "unexpected errors:\n{}",
        faults.join("\n")
    );
    assert!(
        seen.is_empty(),
        "the monitor saw, during the load:\n{}",
        seen.join("\n")
    );
    assert!(refused > 0 && ok > 0, "the load never reached a limit");
    assert_clean(&mut client, "after the load");
}

// ---------------------------------------------------------------------------------------
// 3. Multi-leg transfers whose later leg is refused
// ---------------------------------------------------------------------------------------

/// (what, legs, SQLSTATE, or several separated by |): the first leg is always fine; a later one is refused.
/// `poor` has balance 5 and a pending hold of 4 (available 1, min_balance 0); `capped` has
/// balance 10 and max_balance 50; `usd` is in USD, the others in EUR.
const FAILING_LEGS: &[(&str, &str, &str)] = &[
    (
        "min_balance",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "poor", "to": "c", "amount": 10}]"#,
        "23514",
    ),
    (
        "a pending hold counts",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "poor", "to": "c", "amount": "1.01"}]"#,
        "23514",
    ),
    (
        "min_balance after an earlier leg",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "poor", "to": "b", "amount": "0.50"}, {"from": "poor", "to": "c", "amount": "0.51"}]"#,
        "23514",
    ),
    (
        "limits after each leg, not at the end",
        r#"[{"from": "poor", "to": "b", "amount": 3}, {"from": "b", "to": "poor", "amount": 3}]"#,
        "23514",
    ),
    (
        "max_balance",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "capped", "amount": 41}]"#,
        "23514",
    ),
    (
        "max_balance after an earlier leg",
        r#"[{"from": "a", "to": "capped", "amount": 30}, {"from": "b", "to": "capped", "amount": "10.01"}]"#,
        "23514",
    ),
    (
        "same account",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "c", "to": "c", "amount": 1}]"#,
        "22023",
    ),
    (
        "currency mismatch",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "a", "to": "usd", "amount": 1}]"#,
        "22023",
    ),
    (
        "currency mismatch in the third leg",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": 1}, {"from": "usd", "to": "c", "amount": 1}]"#,
        "22023",
    ),
    (
        "zero amount",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": 0}]"#,
        "22023",
    ),
    (
        "negative amount",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": -1}]"#,
        "22023",
    ),
    (
        "NaN amount",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": "NaN"}]"#,
        "22023",
    ),
    (
        "infinite amount",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": "Infinity"}]"#,
        "22023",
    ),
    (
        "amount not a number",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": "ten"}]"#,
        "22023",
    ),
    (
        "amount a boolean",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": true}]"#,
        "22023",
    ),
    (
        "another key",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c", "amount": 1, "memo": "x"}]"#,
        "22023",
    ),
    // the docs do not say whether a missing field is a NULL leg field (22004) or bad legs (22023)
    (
        "a missing amount",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": "b", "to": "c"}]"#,
        "22004|22023",
    ),
    (
        "a NULL field",
        r#"[{"from": "a", "to": "b", "amount": 1}, {"from": null, "to": "c", "amount": 1}]"#,
        "22004",
    ),
    (
        "a new account in an earlier leg",
        r#"[{"from": "ghost", "to": "b", "amount": 1}, {"from": "poor", "to": "c", "amount": 10}]"#,
        "23514",
    ),
];

#[test]
fn a_multi_leg_transfer_whose_later_leg_is_refused_leaves_nothing_under_concurrency() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, currency, min_balance) VALUES
                 ('a', 'EUR', 0), ('b', 'EUR', 0), ('c', 'EUR', 0), ('poor', 'EUR', 0);
             INSERT INTO exactly.accounts (account, currency, max_balance) VALUES ('capped', 'EUR', 50);
             INSERT INTO exactly.accounts (account, currency) VALUES ('usd', 'USD');
             SELECT exactly.append_payment('a', 1000000);
             SELECT exactly.append_payment('b', 1000000);
             SELECT exactly.append_payment('c', 1000000);
             SELECT exactly.append_payment('poor', 5);
             SELECT exactly.append_payment('capped', 10);
             SELECT exactly.append_payment('usd', 100);
             SELECT exactly.hold('poor', 'c', 4);",
        )
        .unwrap();
    let before = texts(
        &mut client,
        "SELECT account, balance::text, entries::text, pending_debits::text, pending_credits::text
         FROM exactly.accounts WHERE account IN ('poor', 'capped', 'usd') ORDER BY account",
    );
    let results = at_once(&cluster, 12, |i, c| {
        let mut random = XorShift(0xfa11 ^ ((i as u64 + 1) << 16));
        let mut faults = Vec::new();
        let mut committed: Vec<(i64, String, String, i64)> = Vec::new();
        if i % 2 == 0 {
            // refused calls: in autocommit, or in a transaction after a good transfer, in a
            // savepoint, then committed
            for round in 0..3 {
                for (n, (what, legs, want)) in FAILING_LEGS.iter().enumerate() {
                    let key = format!("fail-{i}-{round}-{n}");
                    let call =
                        "SELECT id FROM exactly.transfers($1::text::jsonb, idempotency_key => $2,
                                                                metadata => '{\"tag\": \"fail\"}')";
                    if (round + n) % 2 == 0 {
                        match c.query(call, &[legs, &key]) {
                            Ok(rows) => {
                                faults.push(format!("{what}: accepted, {} rows", rows.len()))
                            }
                            Err(e) if want.split('|').any(|w| w == code(&e)) => {}
                            Err(e) => {
                                faults.push(format!("{what}: want {want}, got {}", describe(&e)))
                            }
                        }
                        continue;
                    }
                    loop {
                        let mut tx = c.transaction().unwrap();
                        let first = tx.query_one(
                            "SELECT id FROM exactly.transfer('a', 'b', 0.01, metadata => '{\"tag\": \"before\"}')",
                            &[],
                        );
                        let first: i64 = match first {
                            Ok(r) => r.get(0),
                            Err(e) if code(&e) == "40001" => continue,
                            Err(e) => {
                                faults.push(format!("first transfer: {}", describe(&e)));
                                break;
                            }
                        };
                        tx.batch_execute("SAVEPOINT s").unwrap();
                        match tx.query(call, &[legs, &key]) {
                            Ok(rows) => faults.push(format!(
                                "{what} (in a transaction): accepted, {} rows",
                                rows.len()
                            )),
                            Err(e) if code(&e) == "40001" => continue,
                            Err(e) if want.split('|').any(|w| w == code(&e)) => {}
                            Err(e) => faults.push(format!(
                                "{what} (in a transaction): want {want}, got {}",
                                describe(&e)
                            )),
                        }
                        tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
                        tx.commit().unwrap();
                        committed.push((first, "a".into(), "b".into(), 1));
                        break;
                    }
                }
            }
        } else {
            // good transfers on the same accounts, as separate calls or one multi-leg call
            let names = ["a", "b", "c"];
            for _ in 0..40 {
                let legs: Vec<(String, String, i64)> = (0..1 + random.next() % 3)
                    .map(|_| {
                        let f = random.next() % 3;
                        let t = (f + 1 + random.next() % 2) % 3;
                        (
                            names[f as usize].to_string(),
                            names[t as usize].to_string(),
                            1 + (random.next() % 5_000) as i64,
                        )
                    })
                    .collect();
                let json = legs_json(&legs, &mut random);
                let as_legs = random.next() % 2 == 0;
                loop {
                    let result = (|| -> Result<Vec<i64>, postgres::Error> {
                        let mut tx = c.transaction()?;
                        let mut ids = Vec::new();
                        if as_legs {
                            for r in tx.query(
                                "SELECT id FROM exactly.transfers($1::text::jsonb)",
                                &[&json],
                            )? {
                                ids.push(r.get(0));
                            }
                        } else {
                            for (f, t, cents) in &legs {
                                ids.push(
                                    tx.query_one(
                                        "SELECT id FROM exactly.transfer($1, $2, $3::text::numeric)",
                                        &[f, t, &money(*cents)],
                                    )?
                                    .get(0),
                                );
                            }
                        }
                        tx.commit()?;
                        Ok(ids)
                    })();
                    match result {
                        Ok(ids) => {
                            for (id, (f, t, cents)) in ids.into_iter().zip(&legs) {
                                committed.push((id, f.clone(), t.clone(), *cents));
                            }
                            break;
                        }
                        Err(e) if code(&e) == "40001" => thread::sleep(Duration::from_millis(1)),
                        Err(e) => {
                            faults.push(format!("good transfer {json}: {}", describe(&e)));
                            break;
                        }
                    }
                }
            }
        }
        (faults, committed)
    });
    let mut faults = Vec::new();
    let mut committed = Vec::new();
    for (f, c) in results {
        faults.extend(f);
        committed.extend(c);
    }
    common::assert_no_faults(&faults);

    // nothing of the refused calls remains
    let tagged = one(
        &mut client,
        "SELECT count(*) FROM exactly.transfers WHERE metadata->>'tag' = 'fail' OR idempotency_key LIKE 'fail-%'",
    );
    assert_eq!(tagged, "0", "transfers of refused calls");
    let after = texts(
        &mut client,
        "SELECT account, balance::text, entries::text, pending_debits::text, pending_credits::text
         FROM exactly.accounts WHERE account IN ('poor', 'capped', 'usd') ORDER BY account",
    );
    assert_eq!(after, before, "accounts only refused calls touched changed");
    assert_eq!(
        one(
            &mut client,
            "SELECT count(*) FROM exactly.accounts WHERE account = 'ghost'"
        ),
        "0",
        "a refused call left the account its first leg created"
    );
    let stored: HashSet<i64> = texts(
        &mut client,
        "SELECT id FROM exactly.transfers WHERE hold_id IS NULL",
    )
    .into_iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    let wanted: HashSet<i64> = committed.iter().map(|c| c.0).collect();
    assert_eq!(stored, wanted, "the transfers are exactly those committed");
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (_, f, t, cents) in &committed {
        *expected.entry(f.clone()).or_default() -= cents;
        *expected.entry(t.clone()).or_default() += cents;
    }
    for name in ["a", "b", "c"] {
        let balance = cents_of(&one(
            &mut client,
            &format!("SELECT balance::text FROM exactly.accounts WHERE account = '{name}'"),
        ));
        assert_eq!(
            balance,
            100_000_000 + expected.get(name).copied().unwrap_or(0),
            "balance of {name}"
        );
    }
    assert_clean(&mut client, "after the refused calls");

    // limits are checked after each leg, in array order: coming in first makes going out possible
    let rows = texts(
        &mut client,
        r#"SELECT leg::text FROM exactly.transfers('[{"from": "b", "to": "poor", "amount": 3}, {"from": "poor", "to": "b", "amount": "3.50"}]')"#,
    );
    assert_eq!(rows, vec![vec!["1".to_string()], vec!["2".to_string()]]);
    // a key of a refused call was not used up
    let rows = texts(
        &mut client,
        r#"SELECT count(*)::text FROM exactly.transfers('[{"from": "a", "to": "b", "amount": 1}]', idempotency_key => 'fail-0-0-0')"#,
    );
    assert_eq!(
        rows[0][0], "1",
        "a refused call's idempotency key is free for another request"
    );
    assert_clean(&mut client, "at the end");
}

// ---------------------------------------------------------------------------------------
// 4. Holds expiring while they are posted
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum HoldOutcome {
    /// post_hold acknowledged (the commit returned): transfer id, cents posted
    Posted(i64, i64),
    /// post_hold refused with this SQLSTATE
    PostRefused(String),
    /// void_hold acknowledged: the state it returned
    Voided(String),
    VoidRefused(String),
    /// a post sent after the server's clock had passed expires_at
    LatePost(Result<i64, String>),
}

#[test]
fn holds_expiring_while_posted_end_in_exactly_one_state() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, min_balance)
                 SELECT 'p' || i, 0 FROM generate_series(0, 3) i;
             INSERT INTO exactly.accounts (account) VALUES ('m0'), ('m1');
             SELECT exactly.append_payment('p' || i, 1000000) FROM generate_series(0, 3) i;",
        )
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let monitor = Monitor::start(&cluster);
    // two connections call expire_holds() in a loop; two touch the accounts with transfers
    let helpers: Vec<_> = (0..4)
        .map(|h| {
            let (mut c, done) = (cluster.connect(), done.clone());
            thread::spawn(move || {
                let (mut released, mut faults) = (0i64, Vec::new());
                let mut random = XorShift(0xe41 + h as u64);
                while !done.load(Ordering::SeqCst) {
                    let sql = if h < 2 {
                        "SELECT exactly.expire_holds()".to_string()
                    } else {
                        let p = random.next() % 4;
                        let m = random.next() % 2;
                        if random.next() % 2 == 0 {
                            format!("SELECT exactly.transfer('p{p}', 'm{m}', 0.01)::text")
                        } else {
                            format!("SELECT exactly.transfer('m{m}', 'p{p}', 0.01)::text")
                        }
                    };
                    match c.query_one(sql.as_str(), &[]) {
                        Ok(row) if h < 2 => released += row.get::<_, i64>(0),
                        Ok(_) => {}
                        Err(e) if code(&e) == "40001" => {}
                        Err(e) => faults.push(format!("{sql}: {}", describe(&e))),
                    }
                    thread::sleep(Duration::from_millis(3));
                }
                (released, faults)
            })
        })
        .collect();
    let outcomes = Arc::new(Mutex::new(Vec::<(i64, i64, HoldOutcome)>::new())); // (hold, cents, outcome)
    let worker_faults = at_once(&cluster, 12, {
        let outcomes = outcomes.clone();
        move |i, c| {
            let mut random = XorShift(0xe1ed ^ ((i as u64 + 1) << 12));
            let mut faults = Vec::new();
            for _ in 0..14 {
                let (p, m) = (random.next() % 4, random.next() % 2);
                let cents = 100 + (random.next() % 5_000) as i64;
                let timeout_ms = 200 + random.next() % 300;
                let row = match c.query_one(
                    &format!(
                        "SELECT id, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::float8
                         FROM exactly.hold('p{p}', 'm{m}', {}, timeout => '{timeout_ms} milliseconds')",
                        money(cents)
                    ),
                    &[],
                ) {
                    Ok(row) => row,
                    Err(e) => {
                        faults.push(format!("hold: {}", describe(&e)));
                        continue;
                    }
                };
                let (hold, left_ms): (i64, f64) = (row.get(0), row.get(1));
                let created = Instant::now();
                let expiry = created + Duration::from_micros((left_ms.max(0.0) * 1000.0) as u64);
                // act at about the time it expires: between 40 ms before and 40 ms after
                let jitter = random.next() % 80;
                let at = expiry + Duration::from_millis(jitter);
                let at = at.checked_sub(Duration::from_millis(40)).unwrap_or(at);
                let action = random.next() % 6;
                let at = if action == 2 {
                    at.checked_sub(Duration::from_millis(60)).unwrap_or(at)
                } else {
                    at
                };
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let post = |c: &mut Client, amount: Option<i64>| -> Result<(i64, i64), String> {
                    let sql = match amount {
                        None => format!("SELECT id, amount::text FROM exactly.post_hold({hold})"),
                        Some(a) => format!(
                            "SELECT id, amount::text FROM exactly.post_hold({hold}, {})",
                            money(a)
                        ),
                    };
                    c.query_one(sql.as_str(), &[])
                        .map(|r| (r.get::<_, i64>(0), cents_of(&r.get::<_, String>(1))))
                        .map_err(|e| code(&e))
                };
                let outcome = match action {
                    0 | 5 => match post(c, None) {
                        Ok((t, a)) => {
                            if action == 5 {
                                // a retried job: the same post again gets the first answer
                                match post(c, None) {
                                    Ok((t2, _)) if t2 == t => {}
                                    other => faults.push(format!(
                                        "hold {hold}: reposted whole: {other:?}, first {t}"
                                    )),
                                }
                            }
                            HoldOutcome::Posted(t, a)
                        }
                        Err(e) => HoldOutcome::PostRefused(e),
                    },
                    1 => match post(c, Some(1 + cents / 2)) {
                        Ok((t, a)) => HoldOutcome::Posted(t, a),
                        Err(e) => HoldOutcome::PostRefused(e),
                    },
                    2 => {
                        // post inside a transaction that commits 100 ms later, past the expiry
                        let mut tx = c.transaction().unwrap();
                        let r = tx
                            .query_one(
                                format!("SELECT id, amount::text FROM exactly.post_hold({hold})")
                                    .as_str(),
                                &[],
                            )
                            .map(|r| (r.get::<_, i64>(0), cents_of(&r.get::<_, String>(1))));
                        thread::sleep(Duration::from_millis(100));
                        match r {
                            Ok((t, a)) => match tx.commit() {
                                Ok(()) => HoldOutcome::Posted(t, a),
                                Err(e) => HoldOutcome::PostRefused(format!("commit: {}", code(&e))),
                            },
                            Err(e) => HoldOutcome::PostRefused(code(&e)),
                        }
                    }
                    3 => match c.query_one(
                        format!("SELECT state::text FROM exactly.void_hold({hold})").as_str(),
                        &[],
                    ) {
                        Ok(r) => HoldOutcome::Voided(r.get(0)),
                        Err(e) => HoldOutcome::VoidRefused(code(&e)),
                    },
                    _ => {
                        // wait until the server's clock has passed expires_at, then post
                        loop {
                            let past: bool = c
                                .query_one(
                                    "SELECT clock_timestamp() > expires_at FROM exactly.holds WHERE id = $1",
                                    &[&hold],
                                )
                                .unwrap()
                                .get(0);
                            if past {
                                break;
                            }
                            thread::sleep(Duration::from_millis(5));
                        }
                        HoldOutcome::LatePost(post(c, None).map(|(t, _)| t))
                    }
                };
                outcomes.lock().unwrap().push((hold, cents, outcome));
            }
            faults
        }
    });
    // every hold has timed out by now; release the rest
    thread::sleep(Duration::from_millis(600));
    client
        .batch_execute("SELECT exactly.expire_holds()")
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let mut faults: Vec<String> = worker_faults.into_iter().flatten().collect();
    let mut released = 0;
    for h in helpers {
        let (r, f) = h.join().unwrap();
        released += r;
        faults.extend(f);
    }
    faults.extend(monitor.stop().into_iter().map(|f| format!("monitor: {f}")));

    let holds: HashMap<i64, (String, Option<i64>, Option<i64>)> = texts(
        &mut client,
        "SELECT id, state::text, transfer_id::text, posted_amount::text FROM exactly.holds",
    )
    .into_iter()
    .map(|r| {
        let t = (r[2] != "NULL").then(|| r[2].parse().unwrap());
        let a = (r[3] != "NULL").then(|| cents_of(&r[3]));
        (r[0].parse().unwrap(), (r[1].clone(), t, a))
    })
    .collect();
    let outcomes = outcomes.lock().unwrap().clone();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (hold, cents, outcome) in &outcomes {
        let (state, transfer, posted) =
            holds
                .get(hold)
                .cloned()
                .unwrap_or(("missing".into(), None, None));
        let label = match outcome {
            HoldOutcome::Posted(..) => "posted",
            HoldOutcome::PostRefused(_) => "post refused",
            HoldOutcome::Voided(_) => "voided",
            HoldOutcome::VoidRefused(_) => "void refused",
            HoldOutcome::LatePost(_) => "late post",
        };
        *tally.entry(format!("{label} -> {state}")).or_default() += 1;
        match outcome {
            HoldOutcome::Posted(t, a) => {
                if state != "posted" || transfer != Some(*t) || posted != Some(*a) {
                    faults.push(format!(
                        "hold {hold}: the client was told post ok (transfer {t}, {a} cents), but it is {state}, transfer {transfer:?}, posted {posted:?}"
                    ));
                }
                if *a > *cents {
                    faults.push(format!(
                        "hold {hold}: posted {a} cents of a hold of {cents}"
                    ));
                }
            }
            HoldOutcome::PostRefused(e) => {
                if e != "55000" {
                    faults.push(format!("hold {hold}: post refused with {e}, not 55000"));
                }
                if state == "posted" || state == "pending" {
                    faults.push(format!(
                        "hold {hold}: a refused post near its expiry, yet it is {state}"
                    ));
                }
            }
            HoldOutcome::Voided(s) => {
                if s != "voided" && s != "expired" {
                    faults.push(format!("hold {hold}: void_hold returned state {s}"));
                }
                if *s != state {
                    faults.push(format!("hold {hold}: void_hold said {s}, it is {state}"));
                }
            }
            HoldOutcome::VoidRefused(e) => faults.push(format!(
                "hold {hold}: void of an unposted hold refused with {e}"
            )),
            HoldOutcome::LatePost(r) => {
                if r.as_ref().err().map(String::as_str) != Some("55000") {
                    faults.push(format!(
                        "hold {hold}: posted after its expires_at (server clock): {r:?}"
                    ));
                }
                if state != "expired" {
                    faults.push(format!(
                        "hold {hold}: past its timeout and never posted, but {state}"
                    ));
                }
            }
        }
    }
    let pending = one(
        &mut client,
        "SELECT count(*) FROM exactly.holds WHERE state::text = 'pending'",
    );
    if pending != "0" {
        faults.push(format!(
            "{pending} holds still pending after every timeout and expire_holds()"
        ));
    }
    let expired: i64 = one(
        &mut client,
        "SELECT count(*) FROM exactly.holds WHERE state::text = 'expired'",
    )
    .parse()
    .unwrap();
    if released > expired {
        faults.push(format!(
            "expire_holds() said it released {released}, but {expired} holds are expired"
        ));
    }
    eprintln!(
        "{} holds: {tally:?}; expire_holds() released {released}",
        outcomes.len()
    );
    faults.extend(ledger_faults(&mut client));
    let totals = one(
        &mut client,
        "SELECT coalesce(sum(pending_debits), 0)::text || '/' || coalesce(sum(pending_credits), 0)::text FROM exactly.accounts",
    );
    assert_eq!(
        cents_of(totals.split('/').next().unwrap()),
        0,
        "pending totals {totals}"
    );
    assert_eq!(
        cents_of(totals.split('/').nth(1).unwrap()),
        0,
        "pending totals {totals}"
    );
    assert!(
        tally.keys().any(|k| k.starts_with("posted")),
        "no post succeeded: {tally:?}"
    );
    common::assert_no_faults(&faults);
}

// ---------------------------------------------------------------------------------------
// 5. One idempotency key from 16 connections
// ---------------------------------------------------------------------------------------

#[test]
fn sixteen_connections_with_one_idempotency_key_make_one_transfer() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    // amounts compared as numbers: half send 25, half 25.000
    let ids = at_once(&cluster, 16, |i, c| {
        let amount = if i % 2 == 0 { "25" } else { "25.000" };
        c.query_one(
            format!(
                "SELECT id FROM exactly.transfer('alice', 'bob', {amount}, idempotency_key => 'order-17',
                                                 metadata => '{{\"order\": 17}}')"
            )
            .as_str(),
            &[],
        )
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| describe(&e))
    });
    let first = ids[0].clone().expect("the first caller got a transfer");
    assert!(
        ids.iter().all(|r| r.as_ref() == Ok(&first)),
        "every caller gets the same transfer: {ids:?}"
    );
    let row = &texts(
        &mut client,
        "SELECT (SELECT count(*) FROM exactly.transfers)::text, (SELECT count(*) FROM exactly.payments)::text,
                (SELECT balance::text FROM exactly.accounts WHERE account = 'alice'),
                (SELECT balance::text FROM exactly.accounts WHERE account = 'bob')",
    )[0];
    assert_eq!(
        (row[0].as_str(), row[1].as_str()),
        ("1", "2"),
        "one transfer, two entries"
    );
    assert_eq!((cents_of(&row[2]), cents_of(&row[3])), (-2_500, 2_500));
    // a repeat through `transfers` (one leg, the same request) returns it too: one key space
    let via_legs: i64 = client
        .query_one(
            r#"SELECT id FROM exactly.transfers('[{"from": "alice", "to": "bob", "amount": "25.0"}]',
                                               idempotency_key => 'order-17', metadata => '{"order": 17}')"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(via_legs, first);
    for sql in [
        "SELECT exactly.transfer('alice', 'bob', 26, idempotency_key => 'order-17', metadata => '{\"order\": 17}')",
        "SELECT exactly.transfer('alice', 'carol', 25, idempotency_key => 'order-17', metadata => '{\"order\": 17}')",
        "SELECT exactly.transfer('bob', 'alice', 25, idempotency_key => 'order-17', metadata => '{\"order\": 17}')",
        "SELECT exactly.transfer('alice', 'bob', 25, idempotency_key => 'order-17', metadata => '{\"order\": 18}')",
        r#"SELECT exactly.transfers('[{"from": "alice", "to": "bob", "amount": 25}, {"from": "alice", "to": "bob", "amount": 1}]', idempotency_key => 'order-17', metadata => '{"order": 17}')"#,
    ] {
        assert_eq!(sqlstate(client.batch_execute(sql)), "22023", "{sql}");
    }
    assert_eq!(
        one(&mut client, "SELECT count(*) FROM exactly.transfers"),
        "1"
    );
    assert_clean(&mut client, "after the replays");
}

/// 16 connections, one key, two different requests (8 each) at once: one request wins,
/// every caller of it gets its transfer, every caller of the other gets 22023.
#[test]
fn one_key_for_two_different_requests_at_once_lets_exactly_one_through() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let results = at_once(&cluster, 16, |i, c| {
        let amount = if i % 2 == 0 { 10 } else { 11 };
        (
            amount,
            c.query_one(
                format!(
                    "SELECT id FROM exactly.transfer('x', 'y', {amount}, idempotency_key => 'k')"
                )
                .as_str(),
                &[],
            )
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| code(&e)),
        )
    });
    let winners: HashSet<i32> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(a, _)| *a)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let ids: HashSet<i64> = results.iter().filter_map(|(_, r)| r.clone().ok()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    for (amount, r) in &results {
        if !winners.contains(amount) {
            assert_eq!(r, &Err("22023".to_string()), "{results:?}");
        } else {
            assert!(r.is_ok(), "{results:?}");
        }
    }
    assert_eq!(
        one(&mut client, "SELECT count(*) FROM exactly.transfers"),
        "1"
    );
    assert_clean(&mut client, "after the race");
}

#[test]
fn sixteen_connections_with_one_hold_key_reserve_once() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('w', 0);
             SELECT exactly.append_payment('w', 50);",
        )
        .unwrap();
    let ids = at_once(&cluster, 16, |_, c| {
        c.query_one(
            "SELECT id FROM exactly.hold('w', 'shop', 30, idempotency_key => 'cart-9')",
            &[],
        )
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| describe(&e))
    });
    let first = ids[0].clone().expect("a hold");
    assert!(
        ids.iter().all(|r| r.as_ref() == Ok(&first)),
        "every caller gets the same hold: {ids:?}"
    );
    assert_eq!(one(&mut client, "SELECT count(*) FROM exactly.holds"), "1");
    assert_eq!(
        cents_of(&one(
            &mut client,
            "SELECT pending_debits::text FROM exactly.accounts WHERE account = 'w'"
        )),
        3_000,
        "reserved once"
    );
    // holds have their own key space: the same key for a transfer is a new request
    client
        .batch_execute("SELECT exactly.transfer('w', 'shop', 1, idempotency_key => 'cart-9')")
        .unwrap();
    assert_clean(&mut client, "after the race");
}

// ---------------------------------------------------------------------------------------
// 6. A post racing a void (or a post, or a void) of the same hold
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Act {
    Post(Option<&'static str>),
    Void,
}

#[test]
fn a_post_and_a_void_of_one_hold_at_once_exactly_one_wins() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('src', 0);
             SELECT exactly.append_payment('src', 1000000);",
        )
        .unwrap();
    // scenario per hold (k % 5): the two connections' acts
    let scenario = |k: usize| -> [Act; 2] {
        match k % 5 {
            0 => [Act::Post(None), Act::Void],
            1 => [Act::Post(Some("4")), Act::Void],
            2 => [Act::Post(Some("4")), Act::Post(Some("6"))],
            3 => [Act::Post(None), Act::Post(None)],
            _ => [Act::Void, Act::Void],
        }
    };
    let mut faults = Vec::new();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..3 {
        let holds: Vec<i64> = (0..20)
            .map(|_| {
                client
                    .query_one("SELECT id FROM exactly.hold('src', 'dst', 10)", &[])
                    .unwrap()
                    .get(0)
            })
            .collect();
        let h2 = holds.clone();
        let results = at_once(&cluster, 40, move |i, c| {
            let (k, hold) = (i / 2, h2[i / 2]);
            let act = scenario(k)[i % 2].clone();
            let r = match &act {
                Act::Post(amount) => {
                    let amount = amount.map(|a| format!(", {a}")).unwrap_or_default();
                    c.query_one(
                        format!(
                            "SELECT id::text, amount::text FROM exactly.post_hold({hold}{amount})"
                        )
                        .as_str(),
                        &[],
                    )
                }
                Act::Void => c.query_one(
                    format!("SELECT state::text, NULL::text FROM exactly.void_hold({hold})")
                        .as_str(),
                    &[],
                ),
            };
            (
                act,
                r.map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
                    .map_err(|e| code(&e)),
            )
        });
        for (k, hold) in holds.iter().enumerate() {
            let pair = &results[2 * k..2 * k + 2];
            let row = &texts(
                &mut client,
                &format!("SELECT state::text, coalesce(transfer_id::text, ''), coalesce(posted_amount::text, '') FROM exactly.holds WHERE id = {hold}"),
            )[0];
            let oks: Vec<&(Act, Result<_, _>)> = pair.iter().filter(|(_, r)| r.is_ok()).collect();
            let errs: Vec<String> = pair.iter().filter_map(|(_, r)| r.clone().err()).collect();
            let show = format!("round {round} hold {hold}: {pair:?} -> {row:?}");
            match k % 5 {
                0..=2 => {
                    if oks.len() != 1 || errs != ["55000"] {
                        faults.push(format!("exactly one must win, the other 55000: {show}"));
                        continue;
                    }
                    let (act, r) = oks[0];
                    let (first, second) = r.clone().unwrap();
                    *tally.entry(format!("{:?} won", act)).or_default() += 1;
                    match act {
                        Act::Post(amount) => {
                            let want = cents_of(amount.unwrap_or("10"));
                            if row[0] != "posted"
                                || row[1] != first
                                || cents_of(&row[2]) != want
                                || cents_of(second.as_deref().unwrap_or("0")) != want
                            {
                                faults.push(format!("the post won: {show}"));
                            }
                        }
                        Act::Void => {
                            if row[0] != "voided" || first != "voided" || !row[1].is_empty() {
                                faults.push(format!("the void won: {show}"));
                            }
                        }
                    }
                }
                3 => {
                    let ids: Vec<String> = pair
                        .iter()
                        .filter_map(|(_, r)| r.clone().ok().map(|x| x.0))
                        .collect();
                    if ids.len() != 2 || ids[0] != ids[1] || row[0] != "posted" || row[1] != ids[0]
                    {
                        faults.push(format!(
                            "two whole posts must both get the one transfer: {show}"
                        ));
                    }
                }
                _ => {
                    let states: Vec<String> = pair
                        .iter()
                        .filter_map(|(_, r)| r.clone().ok().map(|x| x.0))
                        .collect();
                    if states != ["voided", "voided"] || row[0] != "voided" {
                        faults.push(format!("two voids must both get the voided hold: {show}"));
                    }
                }
            }
        }
    }
    eprintln!("{tally:?}");
    faults.extend(ledger_faults(&mut client));
    let row = &texts(
        &mut client,
        "SELECT a.pending_debits::text, a.balance::text,
                (SELECT coalesce(sum(posted_amount), 0) FROM exactly.holds WHERE state::text = 'posted')::text,
                (SELECT balance::text FROM exactly.accounts WHERE account = 'dst')
         FROM exactly.accounts a WHERE a.account = 'src'",
    )[0];
    if cents_of(&row[0]) != 0 {
        faults.push(format!(
            "src still has pending_debits {} (a partial post must release the rest)",
            row[0]
        ));
    }
    if cents_of(&row[1]) != 100_000_000 - cents_of(&row[2])
        || cents_of(&row[3]) != cents_of(&row[2])
    {
        faults.push(format!(
            "balances src {} dst {} after posting {}",
            row[1], row[3], row[2]
        ));
    }
    common::assert_no_faults(&faults);
}

/// The receiving side: 40 connections hold 7 each into an account with max_balance 100 and
/// balance 0; the reservations are checked as if posted, so exactly 14 go through.
#[test]
fn forty_holds_of_7_into_a_max_balance_of_100_reserve_exactly_14() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("INSERT INTO exactly.accounts (account, max_balance) VALUES ('vault', 100)")
        .unwrap();
    let monitor = Monitor::start(&cluster);
    let outcomes = race_holds(&cluster, "SELECT id FROM exactly.hold('bank', 'vault', 7)");
    let seen = monitor.stop();
    assert!(
        seen.is_empty(),
        "the monitor saw, during the race:\n{}",
        seen.join("\n")
    );
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<String> = outcomes.iter().filter_map(|o| o.clone().err()).collect();
    assert_eq!(ok, 14, "{outcomes:?}");
    assert!(
        refused.iter().all(|c| c == "23514"),
        "refusals: {refused:?}"
    );
    assert_eq!(
        cents_of(&one(
            &mut client,
            "SELECT pending_credits::text FROM exactly.accounts WHERE account = 'vault'"
        )),
        9_800
    );
    // 2 of room left, for transfers in as for holds
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.transfer('bank', 'vault', 2.01)")),
        "23514"
    );
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.append_payment('vault', 2.01)")),
        "23514"
    );
    client
        .batch_execute("SELECT exactly.transfer('bank', 'vault', 2)")
        .unwrap();
    assert_clean(&mut client, "after the race");
}

// ---------------------------------------------------------------------------------------
// 7. balance_at under concurrent transfers with event_at
// ---------------------------------------------------------------------------------------

/// 12 connections transfer between 4 accounts with explicit `event_at`s (whole minutes of a
/// past day, in any order, many equal); afterwards `balance_at` at every minute (and half
/// a minute before it) equals the sum of the committed transfers that happened at or
/// before it.
#[test]
fn balance_at_sums_the_committed_transfers_at_or_before_each_moment() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let committed: Vec<(String, String, i64, i64)> = at_once(&cluster, 12, |i, c| {
        let mut random = XorShift(0xba1a ^ ((i as u64 + 1) << 8));
        let mut done = Vec::new();
        for _ in 0..30 {
            let a = random.next() % 4;
            let b = (a + 1 + random.next() % 3) % 4;
            let (f, t) = (format!("e{a}"), format!("e{b}"));
            let cents = 1 + (random.next() % 10_000) as i64;
            let minute = (random.next() % 60) as i64;
            let rollback = random.next() % 5 == 0;
            let mut tx = c.transaction().unwrap();
            let row = tx
                .query_one(
                    "SELECT to_char(event_at AT TIME ZONE 'UTC', 'HH24:MI:SS')
                     FROM exactly.transfer($1, $2, $3::text::numeric,
                                           event_at => '2026-01-01 10:00:00+00'::timestamptz + $4::int * interval '1 minute')",
                    &[&f, &t, &money(cents), &(minute as i32)],
                )
                .unwrap();
            assert_eq!(row.get::<_, String>(0), format!("10:{minute:02}:00"), "the transfer keeps its event_at");
            if rollback {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
                done.push((f, t, cents, minute));
            }
        }
        done
    })
    .into_iter()
    .flatten()
    .collect();
    let mut faults = Vec::new();
    for account in ["e0", "e1", "e2", "e3"] {
        for minute in -1..=60i64 {
            for (offset, label) in [(0, "at"), (-30, "half a minute before")] {
                let expected: i64 = committed
                    .iter()
                    .filter(|(_, _, _, m)| *m * 60 <= minute * 60 + offset)
                    .map(|(f, t, c, _)| {
                        if f == account {
                            -c
                        } else if t == account {
                            *c
                        } else {
                            0
                        }
                    })
                    .sum();
                let got = one(
                    &mut client,
                    &format!(
                        "SELECT exactly.balance_at('{account}', '2026-01-01 10:00:00+00'::timestamptz
                                                    + interval '{} seconds')::text",
                        minute * 60 + offset
                    ),
                );
                if got == "NULL" || cents_of(&got) != expected {
                    faults.push(format!(
                        "balance_at({account}, {label} 10:00 + {minute} min) = {got}, want {}",
                        money(expected)
                    ));
                }
            }
        }
    }
    assert!(
        faults.is_empty(),
        "{} faults, e.g.:\n{}",
        faults.len(),
        faults[..faults.len().min(10)].join("\n")
    );
    // now: every entry; an unknown account: 02000
    for account in ["e0", "e1", "e2", "e3"] {
        let (now, balance) = (
            one(
                &mut client,
                &format!("SELECT exactly.balance_at('{account}', now())::text"),
            ),
            one(
                &mut client,
                &format!("SELECT balance::text FROM exactly.accounts WHERE account = '{account}'"),
            ),
        );
        assert_eq!(
            cents_of(&now),
            cents_of(&balance),
            "balance_at({account}, now())"
        );
    }
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.balance_at('nobody', now())")),
        "02000"
    );
    // without event_at, a transfer happened at the transaction's start
    let mut tx = client.transaction().unwrap();
    let start: String = tx.query_one("SELECT now()::text", &[]).unwrap().get(0);
    thread::sleep(Duration::from_millis(50));
    let event_at: String = tx
        .query_one(
            "SELECT event_at::text FROM exactly.transfer('e0', 'e1', 1)",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(event_at, start, "event_at defaults to now()");
    assert_clean(&mut client, "at the end");
}
