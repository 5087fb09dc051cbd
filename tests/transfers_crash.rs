//! The crash suite (tests/crash.rs) extended to double-entry transfers and holds, written
//! from the documentation alone (docs/ledger.md, DESIGN.md's guarantees: "every commit a
//! client was told succeeded survives a crash of the server") before the implementation
//! could be read.
//!
//! The load: 24 connections, 4 per kind of work (`KINDS`): transactions of 1 to 3
//! `exactly.transfer` calls naming accounts in random order (40001 retried); multi-leg
//! `exactly.transfers(legs)` calls, some into an account with a `max_balance`; calls with
//! idempotency keys, new and replayed; holds posted whole, posted in part, voided or left
//! pending; holds with short timeouts posted late and released by `exactly.expire_holds()`;
//! transfers, holds and negative appends against a `min_balance`. Each client logs what the
//! server acknowledged (a result counts once its COMMIT, or its autocommit statement,
//! returned OK). Then the postmaster is killed (`kill -9`) or stopped immediately, the
//! server restarted, and `check` compares the database with everything acknowledged:
//! - every acknowledged transfer is there with its accounts, amount, key and hold, and each
//!   acknowledged keyed call has exactly the rows it was told (a replay got the same ids);
//! - every acknowledged hold is there; an acknowledged post left it `posted` with that
//!   transfer and amount, an acknowledged void in the state it was told; a hold without
//!   timeout that no client tried to post or void is still `pending`;
//! - nothing is torn: every transfer has exactly its two entries, no entry points at a
//!   missing transfer; running balances chain; balances equal their last entries and sum to
//!   the single-entry appends; pending totals equal the pending holds; limits hold;
//!   `exactly.verify_ledger()` is all ok.
//!
//! The check can fail: `the_check_catches_tampering` removes or changes acknowledged results
//! behind the clients' backs, and `the_check_catches_commits_lost_with_synchronous_commit_off`
//! requires it to report a lost acknowledged commit when the server acknowledges commits
//! before writing them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{at_once_through, ledger_checks, Client, Cluster, XorShift};
use common::text::raw as q;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Calls,
    Legs,
    Keyed,
    Holds,
    Expiring,
    Limited,
}

const KINDS: [Kind; 6] = [
    Kind::Calls,
    Kind::Legs,
    Kind::Keyed,
    Kind::Holds,
    Kind::Expiring,
    Kind::Limited,
];
const CLIENTS: usize = 4 * KINDS.len();

#[derive(Clone, Debug)]
enum Ack {
    Transfer {
        id: i64,
        from: String,
        to: String,
        amount: String,
        key: Option<String>,
        hold: Option<i64>,
    },
    /// a call with an idempotency key and the transfer ids it returned
    Keyed {
        key: String,
        ids: Vec<i64>,
    },
    Hold {
        id: i64,
        from: String,
        to: String,
        amount: String,
        timeout: bool,
    },
    Posted {
        hold: i64,
        transfer: i64,
        amount: String,
    },
    Voided {
        hold: i64,
        state: String,
    },
    Entry {
        id: i64,
        account: String,
        amount: String,
    },
}

#[derive(Default)]
struct ClientLog {
    acks: Vec<Ack>,
    /// holds a post or void was sent for (acknowledged or not)
    touched: HashSet<i64>,
    faults: Vec<String>,
}

#[derive(Default)]
struct Acked {
    acks: Vec<Ack>,
    touched: HashSet<i64>,
}

const SCHEMA: &str = "
INSERT INTO exactly.accounts (account) SELECT 'x' || i FROM generate_series(0, 5) i;
INSERT INTO exactly.accounts (account, min_balance) SELECT 'h' || i, 0 FROM generate_series(0, 2) i;
INSERT INTO exactly.accounts (account, min_balance) VALUES ('lim', 0);
INSERT INTO exactly.accounts (account, max_balance) VALUES ('cap', 1000);
SELECT exactly.append_payment('h' || i, 10000000) FROM generate_series(0, 2) i;
SELECT exactly.append_payment('lim', 50);
";

fn s(row: &[Option<String>], i: usize) -> String {
    row[i].clone().unwrap_or_else(|| "NULL".into())
}

fn n(row: &[Option<String>], i: usize) -> i64 {
    row[i].as_deref().unwrap_or("-1").parse().unwrap()
}

fn opt(row: &[Option<String>], i: usize) -> Option<String> {
    row[i].clone()
}

/// A numeric's text without trailing fractional zeros ("4.50" and "4.5" compare equal).
fn norm(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text.to_string()
    }
}

fn money(random: &mut XorShift, max_cents: u64) -> String {
    let c = 1 + random.next() % max_cents;
    format!("{}.{:02}", c / 100, c % 100)
}

/// The columns of a transfer row as every kind reads them.
const T_COLS: &str = "id, from_account, to_account, amount::text, idempotency_key, hold_id";

fn transfer_ack(row: &[Option<String>]) -> Ack {
    Ack::Transfer {
        id: n(row, 0),
        from: s(row, 1),
        to: s(row, 2),
        amount: s(row, 3),
        key: opt(row, 4),
        hold: opt(row, 5).map(|h| h.parse().unwrap()),
    }
}

enum Next {
    Stop,
    Retry,
    Fault(String),
    FaultStop(String),
}

fn classify(e: &postgres::Error, killing: &AtomicBool, also_expected: &[&str]) -> Next {
    if killing.load(Ordering::SeqCst) {
        return Next::Stop;
    }
    match e.code().map(|c| c.code()) {
        None => Next::FaultStop(format!("connection lost before the stop: {e}")),
        Some("40001") => Next::Retry,
        Some(code) if also_expected.contains(&code) => Next::Retry,
        Some(code) if code.starts_with("57P") => Next::FaultStop(format!("{code} before the stop")),
        Some(code) => Next::Fault(format!(
            "{code}: {}",
            e.as_db_error().map(|d| d.message()).unwrap_or("")
        )),
    }
}

type Work = Result<Vec<Ack>, (postgres::Error, &'static [&'static str])>;

fn plain(e: postgres::Error) -> (postgres::Error, &'static [&'static str]) {
    (e, &[])
}

fn client_work(
    i: usize,
    round: usize,
    c: &mut Client,
    killing: &AtomicBool,
    stop: &AtomicBool,
    per_kind: &[AtomicUsize],
) -> ClientLog {
    let kind = KINDS[i % KINDS.len()];
    let mut rng = XorShift(0x51ed_270b ^ ((round as u64 + 1) << 32) ^ (i as u64 + 1));
    let mut log = ClientLog::default();
    let mut seq = 0u64;
    let mut my_keys: Vec<(String, String, Vec<i64>)> = Vec::new(); // (key, call, ids)
    let x = |r: &mut XorShift| format!("x{}", r.next() % 6);
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let result: Work = (|| match kind {
            Kind::Calls => {
                let count = 1 + rng.next() % 3;
                c.batch_execute("BEGIN").map_err(plain)?;
                let mut acks = Vec::new();
                for _ in 0..count {
                    let from = x(&mut rng);
                    let mut to = x(&mut rng);
                    while to == from {
                        to = x(&mut rng);
                    }
                    let amount = money(&mut rng, 10_000);
                    let rows = q(
                        c,
                        &format!(
                            "SELECT {T_COLS} FROM exactly.transfer('{from}', '{to}', {amount})"
                        ),
                    )
                    .map_err(plain)?;
                    acks.push(transfer_ack(&rows[0]));
                }
                if rng.next() % 5 == 0 {
                    c.batch_execute("ROLLBACK").map_err(plain)?;
                    return Ok(Vec::new());
                }
                c.batch_execute("COMMIT").map_err(plain)?;
                Ok(acks)
            }
            Kind::Legs => {
                let count = 1 + rng.next() % 4;
                let legs: Vec<String> = (0..count)
                    .map(|_| {
                        let (from, to) = match rng.next() % 4 {
                            0 => (x(&mut rng), "cap".to_string()),
                            1 => ("cap".to_string(), x(&mut rng)),
                            _ => {
                                let from = x(&mut rng);
                                let mut to = x(&mut rng);
                                while to == from {
                                    to = x(&mut rng);
                                }
                                (from, to)
                            }
                        };
                        format!(
                            "{{\"from\": \"{from}\", \"to\": \"{to}\", \"amount\": \"{}\"}}",
                            money(&mut rng, 30_000)
                        )
                    })
                    .collect();
                let rows = q(
                    c,
                    &format!(
                        "SELECT {T_COLS}, leg FROM exactly.transfers('[{}]')",
                        legs.join(", ")
                    ),
                )
                .map_err(|e| (e, &["23514"][..]))?;
                Ok(rows.iter().map(|r| transfer_ack(r)).collect())
            }
            Kind::Keyed => {
                if !my_keys.is_empty() && rng.next() % 4 == 0 {
                    let (key, call, ids) =
                        my_keys[(rng.next() % my_keys.len() as u64) as usize].clone();
                    let rows = q(c, &call).map_err(plain)?;
                    let got: Vec<i64> = rows.iter().map(|r| n(r, 0)).collect();
                    if got != ids {
                        log.faults.push(format!(
                            "Keyed: the replay of {key} returned {got:?}, first {ids:?}"
                        ));
                    }
                    return Ok(Vec::new());
                }
                let key = format!("k-{i}-{round}-{seq}");
                let call = if rng.next() % 2 == 0 {
                    let from = x(&mut rng);
                    let mut to = x(&mut rng);
                    while to == from {
                        to = x(&mut rng);
                    }
                    format!(
                        "SELECT {T_COLS} FROM exactly.transfer('{from}', '{to}', {}, idempotency_key => '{key}')",
                        money(&mut rng, 10_000)
                    )
                } else {
                    format!(
                        "SELECT {T_COLS} FROM exactly.transfers('[{{\"from\": \"x0\", \"to\": \"x1\", \"amount\": {}}}, {{\"from\": \"x2\", \"to\": \"x0\", \"amount\": {}}}]', idempotency_key => '{key}')",
                        money(&mut rng, 10_000),
                        money(&mut rng, 10_000)
                    )
                };
                let rows = q(c, &call).map_err(plain)?;
                let ids: Vec<i64> = rows.iter().map(|r| n(r, 0)).collect();
                my_keys.push((key.clone(), call, ids.clone()));
                let mut acks: Vec<Ack> = rows.iter().map(|r| transfer_ack(r)).collect();
                acks.push(Ack::Keyed { key, ids });
                Ok(acks)
            }
            Kind::Holds | Kind::Expiring | Kind::Limited
                if kind != Kind::Limited || rng.next() % 3 == 0 =>
            {
                let (from, timeout) = match kind {
                    Kind::Holds => (format!("h{}", rng.next() % 3), String::new()),
                    Kind::Expiring => (
                        format!("h{}", rng.next() % 3),
                        format!(", timeout => '{} milliseconds'", 50 + rng.next() % 250),
                    ),
                    _ => ("lim".to_string(), String::new()),
                };
                let to = x(&mut rng);
                let amount = money(&mut rng, 3_000);
                let rows = q(
                    c,
                    &format!("SELECT id, from_account, to_account, amount::text FROM exactly.hold('{from}', '{to}', {amount}{timeout})"),
                )
                .map_err(|e| (e, &["23514"][..]))?;
                let hold = n(&rows[0], 0);
                let mut acks = vec![Ack::Hold {
                    id: hold,
                    from: s(&rows[0], 1),
                    to: s(&rows[0], 2),
                    amount: s(&rows[0], 3),
                    timeout: !timeout.is_empty(),
                }];
                // what the acknowledged hold becomes: a failure below loses only the rest
                per_kind[i % KINDS.len()].fetch_add(1, Ordering::SeqCst);
                log.acks.append(&mut acks);
                if kind == Kind::Expiring {
                    thread::sleep(Duration::from_millis(rng.next() % 250));
                }
                let action = rng.next() % 4;
                if action == 3 {
                    if kind == Kind::Expiring {
                        q(c, "SELECT exactly.expire_holds()").map_err(plain)?;
                    }
                    return Ok(Vec::new());
                }
                log.touched.insert(hold);
                let expected: &'static [&'static str] = if kind == Kind::Expiring {
                    &["55000"]
                } else {
                    &[]
                };
                if action == 2 {
                    let rows = q(
                        c,
                        &format!("SELECT state::text FROM exactly.void_hold({hold})"),
                    )
                    .map_err(plain)?;
                    return Ok(vec![Ack::Voided {
                        hold,
                        state: s(&rows[0], 0),
                    }]);
                }
                let amount = if action == 1 {
                    // a part of the hold: 0.01 up to all of it
                    let held = s(&rows[0], 3).replace('.', "").parse::<u64>().unwrap();
                    format!(", {}", money(&mut rng, held))
                } else {
                    String::new()
                };
                let rows = q(
                    c,
                    &format!("SELECT {T_COLS} FROM exactly.post_hold({hold}{amount})"),
                )
                .map_err(|e| (e, expected))?;
                let t = transfer_ack(&rows[0]);
                let Ack::Transfer { id, amount, .. } = &t else {
                    unreachable!()
                };
                let posted = Ack::Posted {
                    hold,
                    transfer: *id,
                    amount: amount.clone(),
                };
                Ok(vec![t, posted])
            }
            _ => {
                // Limited: transfers and negative appends against lim's min_balance 0
                let amount = money(&mut rng, 2_000);
                match rng.next() % 3 {
                    0 => {
                        let rows = q(
                            c,
                            &format!(
                                "SELECT {T_COLS} FROM exactly.transfer('lim', 'x0', {amount})"
                            ),
                        )
                        .map_err(|e| (e, &["23514"][..]))?;
                        Ok(vec![transfer_ack(&rows[0])])
                    }
                    1 => {
                        let rows = q(
                            c,
                            &format!(
                                "SELECT {T_COLS} FROM exactly.transfer('x0', 'lim', {amount})"
                            ),
                        )
                        .map_err(plain)?;
                        Ok(vec![transfer_ack(&rows[0])])
                    }
                    _ => {
                        let rows = q(
                            c,
                            &format!("SELECT id, account, amount::text FROM exactly.append_payment('lim', -{amount})"),
                        )
                        .map_err(|e| (e, &["23514"][..]))?;
                        Ok(vec![Ack::Entry {
                            id: n(&rows[0], 0),
                            account: s(&rows[0], 1),
                            amount: s(&rows[0], 2),
                        }])
                    }
                }
            }
        })();
        match result {
            Ok(acks) => {
                per_kind[i % KINDS.len()].fetch_add(acks.len(), Ordering::SeqCst);
                log.acks.extend(acks);
            }
            Err((e, expected)) => {
                match classify(&e, killing, expected) {
                    Next::Stop => break,
                    Next::Retry => {}
                    Next::Fault(f) => log.faults.push(format!("{kind:?}: {f}")),
                    Next::FaultStop(f) => {
                        log.faults.push(format!("{kind:?}: {f}"));
                        break;
                    }
                }
                if c.batch_execute("ROLLBACK").is_err() && killing.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    log
}

fn round(
    cluster: &Cluster,
    round_no: usize,
    acked: &mut Acked,
    min_load: Duration,
    stop_server: Option<&dyn Fn(&Cluster)>,
) -> Vec<String> {
    let killing = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let per_kind: Arc<Vec<AtomicUsize>> =
        Arc::new(KINDS.iter().map(|_| AtomicUsize::new(0)).collect());
    let (k2, s2, p2) = (killing.clone(), stop.clone(), per_kind.clone());
    let config = cluster.config();
    let load = thread::spawn(move || {
        at_once_through(config, CLIENTS, move |i, c| {
            client_work(i, round_no, c, &k2, &s2, &p2)
        })
    });
    let started = Instant::now();
    let mut faults = Vec::new();
    loop {
        let enough = per_kind.iter().all(|a| a.load(Ordering::SeqCst) >= 10);
        if enough && started.elapsed() >= min_load {
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            for (kind, a) in KINDS.iter().zip(per_kind.iter()) {
                if a.load(Ordering::SeqCst) < 10 {
                    faults.push(format!(
                        "round {round_no}: {kind:?} acknowledged only {} results in 15 s",
                        a.load(Ordering::SeqCst)
                    ));
                }
            }
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    match stop_server {
        Some(stop_server) => {
            killing.store(true, Ordering::SeqCst);
            stop_server(cluster);
        }
        None => stop.store(true, Ordering::SeqCst),
    }
    for log in load.join().unwrap() {
        faults.extend(
            log.faults
                .iter()
                .map(|f| format!("round {round_no}, during the load: {f}")),
        );
        acked.acks.extend(log.acks);
        acked.touched.extend(log.touched);
    }
    faults
}

/// Ledger-wide invariants, then every acknowledged result. Faults start with a tag:
/// `ledger:`, `transfers:`, `keys:`, `holds:`, `entries:`; lost acknowledged results say
/// "acknowledged".
fn check(cluster: &Cluster, acked: &Acked) -> Vec<String> {
    let mut c = cluster.connect();
    // ledger invariants
    let mut faults: Vec<String> = ledger_checks::entry_faults(&mut c)
        .into_iter()
        .chain(ledger_checks::verify_ledger_faults(&mut c))
        .map(|f| format!("ledger: {f}"))
        .collect();
    let mut all = |sql: &str| q(&mut c, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let sums = all(
        "SELECT (SELECT coalesce(sum(balance), 0) FROM exactly.accounts)
                = (SELECT coalesce(sum(amount), 0) FROM exactly.payments WHERE transfer_id IS NULL)",
    );
    if s(&sums[0], 0) != "t" {
        faults.push("ledger: balances do not sum to the single-entry appends".into());
    }
    for r in all(
        "WITH d AS (SELECT from_account AS account, sum(amount) AS s FROM exactly.holds
                    WHERE state::text = 'pending' GROUP BY 1),
              c AS (SELECT to_account AS account, sum(amount) AS s FROM exactly.holds
                    WHERE state::text = 'pending' GROUP BY 1)
         SELECT a.account, coalesce(a.pending_debits, 0)::text, coalesce(d.s, 0)::text,
                coalesce(a.pending_credits, 0)::text, coalesce(c.s, 0)::text
         FROM exactly.accounts a LEFT JOIN d USING (account) LEFT JOIN c USING (account)
         WHERE coalesce(a.pending_debits, 0) <> coalesce(d.s, 0) OR coalesce(a.pending_credits, 0) <> coalesce(c.s, 0)",
    ) {
        faults.push(format!(
            "ledger: pending totals of {}: debits {} (holds {}), credits {} (holds {})",
            s(&r, 0), s(&r, 1), s(&r, 2), s(&r, 3), s(&r, 4)
        ));
    }
    for r in all(
        "SELECT account FROM exactly.accounts
         WHERE balance - coalesce(pending_debits, 0) < min_balance OR balance + coalesce(pending_credits, 0) > max_balance",
    ) {
        faults.push(format!("ledger: account {} outside its limits", s(&r, 0)));
    }
    for r in all(
        "SELECT h.id, h.state::text, count(t.id) FROM exactly.holds h LEFT JOIN exactly.transfers t ON t.hold_id = h.id
         GROUP BY h.id, h.state HAVING count(t.id) <> CASE WHEN h.state::text = 'posted' THEN 1 ELSE 0 END
         LIMIT 5",
    ) {
        faults.push(format!("ledger: hold {} is {} with {} transfers", s(&r, 0), s(&r, 1), s(&r, 2)));
    }

    // acknowledged transfers
    let transfers: HashMap<i64, (String, String, String, Option<String>, Option<i64>)> =
        all(&format!("SELECT {T_COLS} FROM exactly.transfers"))
            .iter()
            .map(|r| {
                (
                    n(r, 0),
                    (
                        s(r, 1),
                        s(r, 2),
                        s(r, 3),
                        opt(r, 4),
                        opt(r, 5).map(|h| h.parse().unwrap()),
                    ),
                )
            })
            .collect();
    let mut lost = Vec::new();
    for ack in &acked.acks {
        if let Ack::Transfer {
            id,
            from,
            to,
            amount,
            key,
            hold,
        } = ack
        {
            let want = (from.clone(), to.clone(), amount.clone(), key.clone(), *hold);
            if transfers.get(id) != Some(&want) {
                lost.push(format!(
                    "transfer {id} {want:?}: found {:?}",
                    transfers.get(id)
                ));
            }
        }
    }
    if !lost.is_empty() {
        faults.push(format!(
            "transfers: {} acknowledged transfers lost or changed, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ));
    }

    // idempotency keys: one call's rows per key, legs 1..n
    let by_key: HashMap<String, Vec<i64>> = all(
        "SELECT idempotency_key, string_agg(id::text, ',' ORDER BY leg, id) FROM exactly.transfers
         WHERE idempotency_key IS NOT NULL GROUP BY 1",
    )
    .iter()
    .map(|r| {
        (
            s(r, 0),
            s(r, 1).split(',').map(|x| x.parse().unwrap()).collect(),
        )
    })
    .collect();
    let bad_legs = all(
        "SELECT idempotency_key FROM exactly.transfers WHERE idempotency_key IS NOT NULL
         GROUP BY 1 HAVING count(*) <> count(DISTINCT leg) OR max(leg) <> count(*) LIMIT 5",
    );
    if !bad_legs.is_empty() {
        faults.push(format!(
            "keys: keys with a repeated or missing leg: {bad_legs:?}"
        ));
    }
    let mut lost_keys = Vec::new();
    for ack in &acked.acks {
        if let Ack::Keyed { key, ids } = ack {
            if by_key.get(key) != Some(ids) {
                lost_keys.push(format!(
                    "{key}: acknowledged {ids:?}, found {:?}",
                    by_key.get(key)
                ));
            }
        }
    }
    if !lost_keys.is_empty() {
        faults.push(format!(
            "keys: {} acknowledged keyed calls lost or changed, e.g. {:?}",
            lost_keys.len(),
            &lost_keys[..lost_keys.len().min(5)]
        ));
    }

    // acknowledged holds, posts and voids
    let holds: HashMap<i64, (String, String, String, String, Option<i64>, Option<String>)> = all(
        "SELECT id, from_account, to_account, amount::text, state::text, transfer_id, posted_amount::text FROM exactly.holds",
    )
    .iter()
    .map(|r| (n(r, 0), (s(r, 1), s(r, 2), s(r, 3), s(r, 4), opt(r, 5).map(|t| t.parse().unwrap()), opt(r, 6))))
    .collect();
    let mut lost_holds = Vec::new();
    for ack in &acked.acks {
        match ack {
            Ack::Hold {
                id,
                from,
                to,
                amount,
                timeout,
            } => match holds.get(id) {
                Some((f, t, a, state, _, _)) if (f, t, a) == (from, to, amount) => {
                    if !timeout && !acked.touched.contains(id) && state != "pending" {
                        lost_holds.push(format!(
                            "hold {id}: no timeout, never posted or voided, but {state}"
                        ));
                    }
                }
                got => lost_holds.push(format!(
                    "hold {id} ({from} -> {to} {amount}): found {got:?}"
                )),
            },
            Ack::Posted {
                hold,
                transfer,
                amount,
            } => match holds.get(hold) {
                Some((_, _, _, state, t, posted))
                    if state == "posted"
                        && *t == Some(*transfer)
                        && posted.as_deref().map(norm) == Some(norm(amount)) => {}
                got => lost_holds.push(format!(
                    "hold {hold} posted as transfer {transfer} ({amount}): found {got:?}"
                )),
            },
            Ack::Voided { hold, state } => match holds.get(hold) {
                Some((_, _, _, s, None, None)) if s == state => {}
                got => lost_holds.push(format!("hold {hold} {state}: found {got:?}")),
            },
            _ => {}
        }
    }
    if !lost_holds.is_empty() {
        faults.push(format!(
            "holds: {} acknowledged holds, posts or voids lost or changed, e.g. {:?}",
            lost_holds.len(),
            &lost_holds[..lost_holds.len().min(5)]
        ));
    }

    // acknowledged single-entry appends
    let entries: HashMap<i64, (String, String)> =
        all("SELECT id, account, amount::text FROM exactly.payments WHERE transfer_id IS NULL")
            .iter()
            .map(|r| (n(r, 0), (s(r, 1), s(r, 2))))
            .collect();
    let mut lost_entries = Vec::new();
    for ack in &acked.acks {
        if let Ack::Entry {
            id,
            account,
            amount,
        } = ack
        {
            if entries.get(id) != Some(&(account.clone(), amount.clone())) {
                lost_entries.push(*id);
            }
        }
    }
    if !lost_entries.is_empty() {
        faults.push(format!(
            "entries: {} acknowledged appends lost, e.g. {:?}",
            lost_entries.len(),
            &lost_entries[..lost_entries.len().min(5)]
        ));
    }
    faults
}

fn summary(acked: &Acked) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &acked.acks {
        let k = match a {
            Ack::Transfer { hold: Some(_), .. } => "transfer (posted hold)",
            Ack::Transfer { key: Some(_), .. } => "transfer (keyed)",
            Ack::Transfer { .. } => "transfer",
            Ack::Keyed { .. } => "keyed call",
            Ack::Hold { timeout: true, .. } => "hold with timeout",
            Ack::Hold { .. } => "hold",
            Ack::Posted { .. } => "post",
            Ack::Voided { .. } => "void",
            Ack::Entry { .. } => "append",
        };
        *counts.entry(k).or_default() += 1;
    }
    format!("{counts:?}")
}

fn crash_cycles(options: &str, stop_server: &dyn Fn(&Cluster), cycles: usize) {
    let cluster = Cluster::start_with(options);
    cluster.connect().batch_execute(SCHEMA).unwrap();
    common::crash::cycles(&cluster, stop_server, cycles, round, check, summary);
}

/// `kill -9` of the postmaster (and its children) mid-load, three times.
#[test]
fn kill9_mid_transfer_load_loses_no_acknowledged_transfer_or_hold() {
    crash_cycles("", &|c: &Cluster| c.kill9(), 3);
}

/// `pg_ctl stop -m immediate` mid-load, three times, with fsync on.
#[test]
fn immediate_stop_mid_transfer_load_loses_no_acknowledged_transfer_or_hold() {
    crash_cycles("-c fsync=on", &|c: &Cluster| c.stop_immediate(), 3);
}

/// The same with `exactly.early_lock_release = on` (hot accounts' locks released before
/// the commit's flush).
#[test]
fn kill9_mid_transfer_load_with_early_lock_release_loses_nothing_acknowledged() {
    crash_cycles(
        "-c exactly.early_lock_release=on",
        &|c: &Cluster| c.kill9(),
        3,
    );
}

/// Negative control: a clean round passes; then acknowledged results are removed or changed
/// behind the clients' backs (triggers and foreign keys off), and the check reports each.
#[test]
fn the_check_catches_tampering() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(SCHEMA).unwrap();
    let mut acked = Acked::default();
    let mut faults = round(&cluster, 0, &mut acked, Duration::from_millis(1500), None);
    faults.extend(check(&cluster, &acked));
    assert!(
        faults.is_empty(),
        "a clean run must pass the check: {faults:#?}"
    );
    eprintln!("acknowledged: {}", summary(&acked));

    let pick = |f: &dyn Fn(&Ack) -> Option<String>| -> String {
        acked
            .acks
            .iter()
            .rev()
            .find_map(f)
            .expect("an acknowledged result of this kind")
    };
    // one entry of a plain transfer: torn
    let torn = pick(&|a| match a {
        Ack::Transfer {
            id,
            hold: None,
            key: None,
            ..
        } => Some(format!(
            "DELETE FROM exactly.payments WHERE transfer_id = {id} AND amount > 0"
        )),
        _ => None,
    });
    // a keyed transfer and its entries: lost
    let keyed = pick(&|a| {
        match a {
        Ack::Keyed { ids, .. } => Some(format!(
            "DELETE FROM exactly.payments WHERE transfer_id = {id}; DELETE FROM exactly.transfers WHERE id = {id}",
            id = ids[0]
        )),
        _ => None,
    }
    });
    // a voided hold: lost
    let hold = pick(&|a| match a {
        Ack::Voided { hold, .. } => Some(format!("DELETE FROM exactly.holds WHERE id = {hold}")),
        _ => None,
    });
    let pending = "UPDATE exactly.accounts SET pending_debits = coalesce(pending_debits, 0) + 1 WHERE account = 'h0'".to_string();
    let mut admin = cluster.connect();
    admin
        .batch_execute("SET session_replication_role = replica")
        .unwrap();
    for sql in [&torn, &keyed, &hold, &pending] {
        admin
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let faults = check(&cluster, &acked);
    eprintln!("{faults:#?}");
    for (tag, what) in [
        ("ledger: ", "torn transfer"),
        ("ledger: ", "pending totals of h0"),
        ("transfers: ", "acknowledged transfers lost"),
        ("keys: ", "acknowledged keyed calls lost"),
        ("holds: ", "acknowledged holds"),
    ] {
        assert!(
            faults
                .iter()
                .any(|f| f.starts_with(tag) && f.contains(what)),
            "the check missed the tampering ({tag}{what}): {faults:#?}"
        );
    }
}

/// Negative control: with `synchronous_commit = off` the server acknowledges commits before
/// writing their WAL, so a `kill -9` loses acknowledged commits: the check must say so.
#[test]
fn the_check_catches_commits_lost_with_synchronous_commit_off() {
    let cluster = Cluster::start_with("-c synchronous_commit=off -c wal_writer_delay=10000ms");
    cluster.connect().batch_execute(SCHEMA).unwrap();
    let mut acked = Acked::default();
    for r in 0..6 {
        round(
            &cluster,
            r,
            &mut acked,
            Duration::from_millis(1000),
            Some(&|c: &Cluster| c.kill9()),
        );
        cluster.start_server();
        let faults = check(&cluster, &acked);
        eprintln!("crash {} with synchronous_commit = off: {faults:#?}", r + 1);
        if faults.iter().any(|f| f.contains("acknowledged")) {
            return;
        }
    }
    panic!("6 crashes with synchronous_commit = off and the check never reported a lost acknowledged commit");
}
