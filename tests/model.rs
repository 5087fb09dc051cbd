//! Model-based property tests (proptest), written from the README, DESIGN.md and the 0.3
//! brief only: random sequences of calls with random and extreme arguments, run on one
//! connection to one cluster started once per test, compared after every step with a small
//! in-memory model.
//!
//! Ledger: append_payment with amounts 0, negative, huge (up to numeric's 131,072 integer
//! digits), tiny (scale up to 16,383), idempotency keys reused with the same and with other
//! arguments, accounts opened with min_balance limits, append_payments batches, the default
//! account; calls in autocommit, in transactions committed or rolled back, in savepoints
//! kept or rolled back, and in transactions a failure aborts. After every step each
//! account's balance, entry count and min_balance, every new entry (id order, amount,
//! running balance, idempotency key) and verify_ledger are compared with the model.
//! A balance that would pass numeric's range is refused with 22003.
//!
//! Invoice numbers: define_invoice_sequence with odd prefixes (empty, unicode, quotes,
//! format-like, 300 characters) and widths (valid 1..19 and invalid), next_invoice_number
//! and next_invoice_numbers with n from 1 to 1,000,000 and invalid n, counters moved next
//! to the bigint maximum, rollbacks and savepoints: every number is compared with the model.
//!
//! Invalid arguments must give the documented SQLSTATE and change nothing; XX000 never.
//! Proptest runs 64 cases from a fixed seed, without persisting failures, so a run is
//! reproducible; a failing case is shrunk and printed.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use common::decimal::Dec;
use common::{Client, Cluster};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, RngSeed, TestCaseError};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0051_7a7e_5eed),
        rng_algorithm: RngAlgorithm::ChaCha,
        max_shrink_iters: 300,
        max_shrink_time: 40_000,
        ..ProptestConfig::default()
    }
}

/// numeric's limits: 131,072 digits before the point.
const NUMERIC_MAX_INT_DIGITS: usize = 131_072;

// ---------------------------------------------------------------------------------------
// amounts, compactly described (so a failing case prints readably)

#[derive(Clone, Debug)]
enum Amt {
    Int(i64),
    /// value / 10^scale
    Scaled(i64, u32),
    /// 0 written with this many fractional zeros
    Zero(u32),
    /// ±10^exp
    Pow10(u32, bool),
    /// ±(10^digits - 1): `digits` nines
    Nines(u32, bool),
    /// ±10^-scale
    Tiny(u32, bool),
    /// ±(the largest numeric: 131,072 nines, a point, 16,383 nines)
    Max(bool),
}

impl Amt {
    fn text(&self) -> String {
        let sign = |neg: bool| if neg { "-" } else { "" };
        match self {
            Amt::Int(v) => v.to_string(),
            Amt::Scaled(v, s) => {
                let digits = v.unsigned_abs().to_string();
                let s = *s as usize;
                let padded = format!("{:0>width$}", digits, width = s + 1);
                let (int, frac) = padded.split_at(padded.len() - s);
                format!("{}{}.{}", sign(*v < 0), int, frac)
            }
            Amt::Zero(s) => format!("0.{}", "0".repeat(*s as usize)),
            Amt::Pow10(e, neg) => format!("{}1{}", sign(*neg), "0".repeat(*e as usize)),
            Amt::Nines(d, neg) => format!("{}{}", sign(*neg), "9".repeat(*d as usize)),
            Amt::Tiny(s, neg) => format!("{}0.{}1", sign(*neg), "0".repeat(*s as usize - 1)),
            Amt::Max(neg) => format!("{}{}.{}", sign(*neg), "9".repeat(131_072), "9".repeat(16_383)),
        }
    }
}

fn amount() -> impl Strategy<Value = Amt> {
    prop_oneof![
        10 => (-1000i64..1000).prop_map(Amt::Int),
        5 => (-100_000_000i64..100_000_000, 1u32..8).prop_map(|(v, s)| Amt::Scaled(v, s)),
        1 => (0u32..5).prop_map(Amt::Zero),
        1 => prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(i64::MIN + 1)].prop_map(Amt::Int),
        2 => (prop::sample::select(vec![18u32, 19, 20, 38, 100, 1000, 131_071]), any::<bool>())
            .prop_map(|(e, n)| Amt::Pow10(e, n)),
        1 => (prop::sample::select(vec![19u32, 39, 131_071, 131_072]), any::<bool>()).prop_map(|(d, n)| Amt::Nines(d, n)),
        1 => (prop::sample::select(vec![20u32, 1000, 16_383]), any::<bool>()).prop_map(|(s, n)| Amt::Tiny(s, n)),
        1 => any::<bool>().prop_map(Amt::Max),
    ]
}

fn small_amount() -> impl Strategy<Value = Amt> {
    (-1000i64..1000).prop_map(Amt::Int)
}

fn min_balance() -> impl Strategy<Value = Option<Amt>> {
    prop_oneof![
        2 => Just(None),
        3 => (-500i64..100).prop_map(|v| Some(Amt::Int(v))),
        1 => Just(Some(Amt::Int(0))),
        1 => (-100_000i64..100_000, 1u32..4).prop_map(|(v, s)| Some(Amt::Scaled(v, s))),
        1 => Just(Some(Amt::Pow10(1000, true))),
        1 => any::<bool>().prop_map(|n| Some(Amt::Tiny(16_383, n))),
    ]
}

// ---------------------------------------------------------------------------------------
// ledger operations

/// Invalid calls: each has exactly one thing wrong.
#[derive(Clone, Debug)]
enum BadLedger {
    NullAccount,
    EmptyAccount,
    NullAmount(usize),
    NanAmount(usize),
    InfiniteAmount(usize, bool),
    NanMinBalance(usize),
    EmptyAmounts(usize),
    NullAmounts(usize),
    NullInAmounts(usize),
    NanInAmounts(usize),
    TwoDimensionalAmounts(usize),
    NullDefaultAmount,
}

#[derive(Clone, Debug)]
enum LOp {
    Append { acct: usize, amount: Amt, key: Option<usize> },
    /// the most recent idempotency key of the case, again with its own account and amount
    Replay,
    /// the most recent key with another amount (an error unless the amounts are equal)
    ReplayOtherAmount(Amt),
    /// the most recent key on another account
    ReplayOtherAccount,
    AppendDefault(Amt),
    AppendMany { acct: usize, amounts: Vec<Amt> },
    /// `n` small amounts `(i * step) % 1000 - 500`
    AppendSeries { acct: usize, n: usize, step: i64 },
    Open { acct: usize, min: Option<Amt> },
    Bad(BadLedger),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sp {
    Keep,
    Undo,
}

#[derive(Clone, Debug)]
enum Block<O> {
    Auto(O),
    /// in savepoints (each kept or rolled back), then committed (true) or rolled back
    Tx(Vec<(O, Sp)>, bool),
    /// without savepoints: a failure aborts the transaction (25P02), which is rolled back
    Plain(Vec<O>, bool),
}

const ACCOUNTS: usize = 3;
const KEYS: usize = 3;

fn ledger_op(bad: bool) -> BoxedStrategy<LOp> {
    let acct = 0..ACCOUNTS;
    let valid = prop_oneof![
        10 => (acct.clone(), amount(), prop::option::weighted(0.35, 0..KEYS))
            .prop_map(|(acct, amount, key)| LOp::Append { acct, amount, key }),
        2 => Just(LOp::Replay),
        1 => amount().prop_map(LOp::ReplayOtherAmount),
        1 => Just(LOp::ReplayOtherAccount),
        1 => small_amount().prop_map(LOp::AppendDefault),
        3 => (acct.clone(), prop::collection::vec(amount(), 1..6)).prop_map(|(acct, amounts)| LOp::AppendMany { acct, amounts }),
        1 => (acct.clone(), 1usize..2000, 1i64..997).prop_map(|(acct, n, step)| LOp::AppendSeries { acct, n, step }),
        2 => (acct.clone(), min_balance()).prop_map(|(acct, min)| LOp::Open { acct, min }),
    ];
    if !bad {
        return valid.boxed();
    }
    let bad_op = prop_oneof![
        Just(BadLedger::NullAccount),
        Just(BadLedger::EmptyAccount),
        acct.clone().prop_map(BadLedger::NullAmount),
        acct.clone().prop_map(BadLedger::NanAmount),
        (acct.clone(), any::<bool>()).prop_map(|(a, n)| BadLedger::InfiniteAmount(a, n)),
        acct.clone().prop_map(BadLedger::NanMinBalance),
        acct.clone().prop_map(BadLedger::EmptyAmounts),
        acct.clone().prop_map(BadLedger::NullAmounts),
        acct.clone().prop_map(BadLedger::NullInAmounts),
        acct.clone().prop_map(BadLedger::NanInAmounts),
        acct.clone().prop_map(BadLedger::TwoDimensionalAmounts),
        Just(BadLedger::NullDefaultAmount),
    ];
    prop_oneof![3 => valid, 2 => bad_op.prop_map(LOp::Bad)].boxed()
}

fn blocks<O: Clone + fmt::Debug + 'static>(op: BoxedStrategy<O>) -> impl Strategy<Value = Vec<Block<O>>> {
    let sp = prop_oneof![3 => Just(Sp::Keep), 1 => Just(Sp::Undo)];
    let block = prop_oneof![
        4 => op.clone().prop_map(Block::Auto),
        2 => (prop::collection::vec((op.clone(), sp), 1..5), prop::bool::weighted(0.6)).prop_map(|(s, c)| Block::Tx(s, c)),
        1 => (prop::collection::vec(op, 1..4), prop::bool::weighted(0.6)).prop_map(|(s, c)| Block::Plain(s, c)),
    ];
    prop::collection::vec(block, 1..14)
}

// ---------------------------------------------------------------------------------------
// the ledger model

#[derive(Clone, Debug)]
struct Entry {
    id: i64,
    amount: Dec,
    running: Dec,
    key: Option<String>,
}

#[derive(Clone, Debug)]
struct Account {
    balance: Dec,
    min: Option<Dec>,
    /// entries of this case (the default account's earlier ones are counted in `base`)
    entries: Vec<Entry>,
    base_count: i64,
    base_max_id: i64,
    /// entries up to this id have been compared with the database
    checked_to: i64,
}

#[derive(Clone, Debug, Default)]
struct LedgerModel {
    accounts: BTreeMap<String, Account>,
    /// idempotency key → (account, amount, entry id)
    keys: BTreeMap<String, (String, Dec, i64)>,
    /// keys in the order they were first used
    key_order: Vec<String>,
}

/// What the model expects of a call.
#[derive(Debug)]
enum Expect {
    /// new entries (amount, running balance) on an account, keyed or not
    Appended(String, Vec<(Dec, Dec)>, Option<String>),
    /// an idempotent replay: the first entry again, nothing appended
    Replayed(String, i64),
    /// an account opened
    Opened(String, Option<Dec>),
    /// one of these SQLSTATEs
    Error(Vec<&'static str>),
}

impl LedgerModel {
    fn last_id(&self, account: &str) -> i64 {
        self.accounts
            .get(account)
            .map(|a| a.entries.last().map(|e| e.id).unwrap_or(a.base_max_id))
            .unwrap_or(0)
    }

    /// Appending `amounts` in order to `account`: the running balances, or the errors.
    fn plan(&self, account: &str, amounts: &[Dec]) -> Result<Vec<(Dec, Dec)>, Vec<&'static str>> {
        let (mut balance, min) = match self.accounts.get(account) {
            Some(a) => (a.balance.clone(), a.min.clone()),
            None => (Dec::zero(), None),
        };
        let mut out = Vec::new();
        let (mut overflow, mut below) = (false, false);
        for amount in amounts {
            let next = balance.add(amount);
            if next.int_digits() > NUMERIC_MAX_INT_DIGITS {
                overflow = true;
                break;
            }
            if amount.is_negative() {
                if let Some(min) = &min {
                    if next.lt(min) {
                        below = true;
                    }
                }
            }
            out.push((amount.clone(), next.clone()));
            balance = next;
        }
        match (overflow, below) {
            (false, false) => Ok(out),
            (true, false) => Err(vec!["22003"]),
            (false, true) => Err(vec!["23514"]),
            // which one a batch reports first is the implementation's choice
            (true, true) => Err(vec!["22003", "23514"]),
        }
    }

    fn expect_append(&self, account: &str, amount: &Dec, key: Option<&str>) -> Expect {
        if let Some(key) = key {
            if let Some((first_account, first_amount, id)) = self.keys.get(key) {
                if first_account == account && first_amount == amount {
                    return Expect::Replayed(account.to_string(), *id);
                }
                return Expect::Error(vec!["22023"]);
            }
        }
        match self.plan(account, std::slice::from_ref(amount)) {
            Ok(entries) => Expect::Appended(account.to_string(), entries, key.map(String::from)),
            Err(codes) => Expect::Error(codes),
        }
    }

    /// Record what the database appended (ids from its rows).
    fn apply_appended(&mut self, account: &str, entries: &[(Dec, Dec)], ids: &[i64], key: Option<&str>) {
        let acc = self.accounts.entry(account.to_string()).or_insert_with(|| Account {
            balance: Dec::zero(),
            min: None,
            entries: Vec::new(),
            base_count: 0,
            base_max_id: 0,
            checked_to: 0,
        });
        for ((amount, running), id) in entries.iter().zip(ids) {
            acc.entries.push(Entry { id: *id, amount: amount.clone(), running: running.clone(), key: key.map(String::from) });
            acc.balance = running.clone();
        }
        if let Some(key) = key {
            self.keys.insert(key.to_string(), (account.to_string(), entries[0].0.clone(), ids[0]));
            self.key_order.push(key.to_string());
        }
    }
}

/// A row of exactly.payments: (id, account, amount, running_balance, idempotency_key).
type PaymentRow = (i64, String, String, String, Option<String>);

const PAYMENT_COLUMNS: &str = "id, account, amount::text, running_balance::text, idempotency_key";

fn payment_rows(rows: Vec<postgres::Row>) -> Vec<PaymentRow> {
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
}

fn code(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
        None => format!("{e}"),
    }
}

struct LedgerCase<'a> {
    c: &'a mut Client,
    case: usize,
    model: LedgerModel,
    seen: &'a Seen,
}

/// How often each kind of outcome occurred over a whole property run: the property is only
/// worth something if the interesting outcomes actually happen.
type Seen = RefCell<BTreeMap<String, usize>>;

fn note(seen: &Seen, what: impl Into<String>) {
    *seen.borrow_mut().entry(what.into()).or_default() += 1;
}

fn assert_seen(seen: &Seen, label: &str, required: &[&str]) {
    let seen = seen.borrow();
    println!("{label}: outcomes over the run: {seen:?}");
    for kind in required {
        assert!(seen.get(*kind).copied().unwrap_or(0) > 0, "{label}: no case produced {kind:?}: {seen:?}");
    }
}

enum Call {
    Payments(Vec<PaymentRow>),
    Done,
}

impl LedgerCase<'_> {
    fn account(&self, i: usize) -> String {
        match i {
            0 => format!("c{}-plain", self.case),
            1 => format!("c{} ünï 'q\" %s $1", self.case),
            _ => format!("c{}-{}", self.case, "long".repeat(60)),
        }
    }

    fn key(&self, i: usize) -> String {
        format!("c{}-key-{i}", self.case)
    }

    fn accounts(&self) -> Vec<String> {
        let mut v: Vec<String> = (0..ACCOUNTS).map(|i| self.account(i)).collect();
        v.push("default".into());
        v
    }

    /// The model's default account starts as the database has it.
    fn load_default(&mut self) {
        let row = self
            .c
            .query_opt(
                "SELECT balance::text, min_balance::text,
                        (SELECT count(*) FROM exactly.payments WHERE account = 'default'),
                        (SELECT coalesce(max(id), 0) FROM exactly.payments WHERE account = 'default')
                 FROM exactly.accounts WHERE account = 'default'",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            let max_id: i64 = row.get(3);
            self.model.accounts.insert(
                "default".into(),
                Account {
                    balance: Dec::parse(&row.get::<_, String>(0)),
                    min: row.get::<_, Option<String>>(1).map(|m| Dec::parse(&m)),
                    entries: Vec::new(),
                    base_count: row.get(2),
                    base_max_id: max_id,
                    checked_to: max_id,
                },
            );
        }
    }

    /// What the model expects of `op`, and how to call it.
    fn expect(&self, op: &LOp) -> Option<(Expect, String, Vec<Option<String>>)> {
        let append = "SELECT id, account, amount::text, running_balance::text, idempotency_key
                      FROM exactly.append_payment($1::text, $2::text::numeric, $3::text)";
        let many = "SELECT id, account, amount::text, running_balance::text, idempotency_key
                    FROM exactly.append_payments($1::text, $2::text::numeric[]) ORDER BY id";
        let open = "INSERT INTO exactly.accounts (account, min_balance) VALUES ($1::text, $2::text::numeric)";
        let last_key = self.model.key_order.iter().rev().find(|k| self.model.keys.contains_key(*k)).cloned();
        Some(match op {
            LOp::Append { acct, amount, key } => {
                let account = self.account(*acct);
                let key = key.map(|k| self.key(k));
                let text = amount.text();
                (
                    self.model.expect_append(&account, &Dec::parse(&text), key.as_deref()),
                    append.into(),
                    vec![Some(account), Some(text), key],
                )
            }
            LOp::Replay => {
                let key = last_key?;
                let (account, amount, _) = self.model.keys[&key].clone();
                // the same value (not necessarily the same spelling as first given)
                let text = amount.text();
                (self.model.expect_append(&account, &amount, Some(&key)), append.into(), vec![Some(account), Some(text), Some(key)])
            }
            LOp::ReplayOtherAmount(amount) => {
                let key = last_key?;
                let account = self.model.keys[&key].0.clone();
                let text = amount.text();
                (self.model.expect_append(&account, &Dec::parse(&text), Some(&key)), append.into(), vec![Some(account), Some(text), Some(key)])
            }
            LOp::ReplayOtherAccount => {
                let key = last_key?;
                let (account, amount, _) = self.model.keys[&key].clone();
                let other = (0..ACCOUNTS).map(|i| self.account(i)).find(|a| *a != account).unwrap();
                let text = amount.text();
                (self.model.expect_append(&other, &amount, Some(&key)), append.into(), vec![Some(other), Some(text), Some(key)])
            }
            LOp::AppendDefault(amount) => {
                let text = amount.text();
                let expect = self.model.expect_append("default", &Dec::parse(&text), None);
                (
                    expect,
                    "SELECT id, account, amount::text, running_balance::text, idempotency_key
                     FROM exactly.append_payment($1::text::numeric)"
                        .into(),
                    vec![Some(text)],
                )
            }
            LOp::AppendMany { acct, amounts } => {
                let account = self.account(*acct);
                let texts: Vec<String> = amounts.iter().map(Amt::text).collect();
                let decs: Vec<Dec> = texts.iter().map(|t| Dec::parse(t)).collect();
                let expect = match self.model.plan(&account, &decs) {
                    Ok(entries) => Expect::Appended(account.clone(), entries, None),
                    Err(codes) => Expect::Error(codes),
                };
                (expect, many.into(), vec![Some(account), Some(format!("{{{}}}", texts.join(",")))])
            }
            LOp::AppendSeries { acct, n, step } => {
                let account = self.account(*acct);
                let values: Vec<i64> = (0..*n as i64).map(|i| (i * step) % 1000 - 500).collect();
                let decs: Vec<Dec> = values.iter().map(|v| Dec::parse(&v.to_string())).collect();
                let expect = match self.model.plan(&account, &decs) {
                    Ok(entries) => Expect::Appended(account.clone(), entries, None),
                    Err(codes) => Expect::Error(codes),
                };
                let list: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                (expect, many.into(), vec![Some(account), Some(format!("{{{}}}", list.join(",")))])
            }
            LOp::Open { acct, min } => {
                let account = self.account(*acct);
                let min_text = min.as_ref().map(Amt::text);
                let expect = if self.model.accounts.contains_key(&account) {
                    Expect::Error(vec!["23505"])
                } else {
                    Expect::Opened(account.clone(), min_text.as_deref().map(Dec::parse))
                };
                (expect, open.into(), vec![Some(account), min_text])
            }
            LOp::Bad(bad) => {
                let acct = |i: &usize| Some(self.account(*i));
                let e = |code: &'static str| Expect::Error(vec![code]);
                match bad {
                    BadLedger::NullAccount => (e("22004"), append.into(), vec![None, Some("1".into()), None]),
                    BadLedger::EmptyAccount => (e("22023"), append.into(), vec![Some(String::new()), Some("1".into()), None]),
                    BadLedger::NullAmount(i) => (e("22004"), append.into(), vec![acct(i), None, None]),
                    BadLedger::NanAmount(i) => (e("22023"), append.into(), vec![acct(i), Some("NaN".into()), None]),
                    BadLedger::InfiniteAmount(i, neg) => (
                        e("22023"),
                        append.into(),
                        vec![acct(i), Some(if *neg { "-Infinity" } else { "Infinity" }.into()), None],
                    ),
                    BadLedger::NanMinBalance(i) => {
                        if self.model.accounts.contains_key(&self.account(*i)) {
                            // the account exists: either refusal is right
                            (Expect::Error(vec!["22023", "23505"]), open.into(), vec![acct(i), Some("NaN".into())])
                        } else {
                            (e("22023"), open.into(), vec![acct(i), Some("NaN".into())])
                        }
                    }
                    BadLedger::EmptyAmounts(i) => (e("22023"), many.into(), vec![acct(i), Some("{}".into())]),
                    BadLedger::NullAmounts(i) => (e("22004"), many.into(), vec![acct(i), None]),
                    BadLedger::NullInAmounts(i) => (e("22004"), many.into(), vec![acct(i), Some("{1,NULL,2}".into())]),
                    BadLedger::NanInAmounts(i) => (e("22023"), many.into(), vec![acct(i), Some("{1,NaN,2}".into())]),
                    BadLedger::TwoDimensionalAmounts(i) => (e("22023"), many.into(), vec![acct(i), Some("{{1,2},{3,4}}".into())]),
                    BadLedger::NullDefaultAmount => (
                        e("22004"),
                        "SELECT id, account, amount::text, running_balance::text, idempotency_key
                         FROM exactly.append_payment($1::text::numeric)"
                            .into(),
                        vec![None],
                    ),
                }
            }
        })
    }

    fn call(&mut self, sql: &str, params: &[Option<String>]) -> Result<Call, postgres::Error> {
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
        if sql.starts_with("INSERT") {
            self.c.execute(sql, &refs)?;
            Ok(Call::Done)
        } else {
            Ok(Call::Payments(payment_rows(self.c.query(sql, &refs)?)))
        }
    }

    /// Run `op`: check its result against the model and update the model. Returns whether
    /// the call failed (as expected).
    fn step(&mut self, op: &LOp) -> Result<bool, TestCaseError> {
        let Some((expect, sql, params)) = self.expect(op) else { return Ok(false) };
        let got = self.call(&sql, &params);
        note(
            self.seen,
            match &expect {
                Expect::Appended(_, entries, key) if entries.len() == 1 => if key.is_some() { "keyed append" } else { "append" }.to_string(),
                Expect::Appended(_, entries, _) if entries.len() > 100 => "batch > 100".into(),
                Expect::Appended(..) => "batch".into(),
                Expect::Replayed(..) => "replay".into(),
                Expect::Opened(..) => "open".into(),
                Expect::Error(codes) => format!("refused {}", codes.join("/")),
            },
        );
        if let LOp::Append { amount: Amt::Max(_) | Amt::Nines(131_072, _) | Amt::Tiny(16_383, _), .. } = op {
            note(self.seen, "extreme amount");
        }
        let fail = |msg: String| Err(TestCaseError::fail(format!("{op:?}: {msg}")));
        match (expect, got) {
            (_, Err(e)) if code(&e) == "XX000" => fail(format!("internal error XX000: {}", describe(&e))),
            (Expect::Error(codes), Err(e)) => {
                if codes.contains(&code(&e).as_str()) {
                    Ok(true)
                } else {
                    fail(format!("expected SQLSTATE {codes:?}, got {}", describe(&e)))
                }
            }
            (Expect::Error(codes), Ok(_)) => fail(format!("expected SQLSTATE {codes:?}, but the call succeeded")),
            (expect, Err(e)) => fail(format!("expected {expect:?}, got {}", describe(&e))),
            (Expect::Opened(account, min), Ok(_)) => {
                self.model.accounts.insert(
                    account,
                    Account { balance: Dec::zero(), min, entries: Vec::new(), base_count: 0, base_max_id: 0, checked_to: 0 },
                );
                Ok(false)
            }
            (Expect::Replayed(account, id), Ok(Call::Payments(rows))) => {
                let first = self.model.accounts[&account].entries.iter().find(|e| e.id == id).cloned();
                let Some(first) = first else { return fail(format!("model: no entry {id}")) };
                if rows.len() != 1 || rows[0].0 != id || Dec::parse(&rows[0].3) != first.running {
                    return fail(format!("a replay returns the first entry {id} ({:?}), got {rows:?}", first.running));
                }
                Ok(false)
            }
            (Expect::Appended(account, entries, key), Ok(Call::Payments(rows))) => {
                if rows.len() != entries.len() {
                    return fail(format!("expected {} entries, got {}", entries.len(), rows.len()));
                }
                let mut last = self.model.last_id(&account);
                for ((amount, running), row) in entries.iter().zip(&rows) {
                    if row.0 <= last {
                        return fail(format!("entry id {} does not follow {last}", row.0));
                    }
                    last = row.0;
                    if row.1 != account || Dec::parse(&row.2) != *amount || Dec::parse(&row.3) != *running || row.4 != key {
                        return fail(format!(
                            "entry {}: got account {:?} amount {:?} running {:?} key {:?}, expected {account:?} {amount:?} {running:?} {key:?}",
                            row.0,
                            row.1,
                            Dec::parse(&row.2),
                            Dec::parse(&row.3),
                            row.4
                        ));
                    }
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                self.model.apply_appended(&account, &entries, &ids, key.as_deref());
                Ok(false)
            }
            (expect, Ok(_)) => fail(format!("unexpected result shape for {expect:?}")),
        }
    }

    /// Compare every account of the case with the model, the new entries one by one, and
    /// run verify_ledger on each.
    fn check(&mut self, inside: &str) -> Result<(), TestCaseError> {
        for account in self.accounts() {
            let fail = |msg: String| Err(TestCaseError::fail(format!("{inside}: account {account:?}: {msg}")));
            let row = self
                .c
                .query_opt(
                    "SELECT balance::text, entries, min_balance::text,
                            (SELECT count(*) FROM exactly.payments WHERE account = $1),
                            (SELECT coalesce(max(id), 0) FROM exactly.payments WHERE account = $1)
                     FROM exactly.accounts WHERE account = $1",
                    &[&account],
                )
                .map_err(|e| TestCaseError::fail(describe(&e)))?;
            let model = self.model.accounts.get(&account).cloned();
            match (row, model) {
                (None, None) => continue,
                (None, Some(_)) => return fail("missing in exactly.accounts".into()),
                (Some(_), None) => return fail("in exactly.accounts, not in the model".into()),
                (Some(row), Some(model)) => {
                    let balance = Dec::parse(&row.get::<_, String>(0));
                    let entries: i64 = row.get(1);
                    let min = row.get::<_, Option<String>>(2).map(|m| Dec::parse(&m));
                    let (count, max_id): (i64, i64) = (row.get(3), row.get(4));
                    let want_count = model.base_count + model.entries.len() as i64;
                    let want_max = model.entries.last().map(|e| e.id).unwrap_or(model.base_max_id);
                    if balance != model.balance || min != model.min {
                        return fail(format!("balance {balance:?} min {min:?}, model {:?} {:?}", model.balance, model.min));
                    }
                    if entries != want_count || count != want_count || max_id != want_max {
                        return fail(format!(
                            "entries column {entries}, rows {count}, last id {max_id}; model {want_count} rows, last id {want_max}"
                        ));
                    }
                    let rows = payment_rows(
                        self.c
                            .query(
                                &format!("SELECT {PAYMENT_COLUMNS} FROM exactly.payments WHERE account = $1 AND id > $2 ORDER BY id"),
                                &[&account, &model.checked_to],
                            )
                            .map_err(|e| TestCaseError::fail(describe(&e)))?,
                    );
                    let want: Vec<&Entry> = model.entries.iter().filter(|e| e.id > model.checked_to).collect();
                    if rows.len() != want.len() {
                        return fail(format!("{} entries after id {}, model {}", rows.len(), model.checked_to, want.len()));
                    }
                    for (row, e) in rows.iter().zip(&want) {
                        if row.0 != e.id || Dec::parse(&row.2) != e.amount || Dec::parse(&row.3) != e.running || row.4 != e.key {
                            return fail(format!("entry {row:?} differs from the model's {e:?}"));
                        }
                    }
                    self.model.accounts.get_mut(&account).unwrap().checked_to = want_max;
                    for row in self
                        .c
                        .query("SELECT ok, detail FROM exactly.verify_ledger($1)", &[&account])
                        .map_err(|e| TestCaseError::fail(format!("verify_ledger: {}", describe(&e))))?
                    {
                        if row.get::<_, Option<bool>>(0) != Some(true) {
                            return fail(format!("verify_ledger: {:?}", row.get::<_, Option<String>>(1)));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, blocks: &[Block<LOp>]) -> Result<(), TestCaseError> {
        run_blocks(self, blocks)
    }
}

/// What both models share: one step, a state check, and the model to snapshot.
trait Case {
    type Op: fmt::Debug;
    type Model: Clone;
    fn client(&mut self) -> &mut Client;
    fn model(&mut self) -> &mut Self::Model;
    fn step_op(&mut self, op: &Self::Op) -> Result<bool, TestCaseError>;
    fn check_state(&mut self, inside: &str) -> Result<(), TestCaseError>;
}

impl Case for LedgerCase<'_> {
    type Op = LOp;
    type Model = LedgerModel;
    fn client(&mut self) -> &mut Client {
        self.c
    }
    fn model(&mut self) -> &mut LedgerModel {
        &mut self.model
    }
    fn step_op(&mut self, op: &LOp) -> Result<bool, TestCaseError> {
        self.step(op)
    }
    fn check_state(&mut self, inside: &str) -> Result<(), TestCaseError> {
        self.check(inside)
    }
}

fn sql<C: Case>(case: &mut C, statement: &str) -> Result<(), TestCaseError> {
    case.client()
        .batch_execute(statement)
        .map_err(|e| TestCaseError::fail(format!("{statement}: {}", describe(&e))))
}

/// Run the blocks: autocommit steps, transactions with savepoints kept or rolled back,
/// transactions without savepoints that a failure aborts; check the state after each step.
fn run_blocks<C: Case>(case: &mut C, blocks: &[Block<C::Op>]) -> Result<(), TestCaseError> {
    for (b, block) in blocks.iter().enumerate() {
        match block {
            Block::Auto(op) => {
                case.step_op(op)?;
                case.check_state(&format!("block {b} (autocommit), after {op:?}"))?;
            }
            Block::Tx(steps, commit) => {
                let before = case.model().clone();
                sql(case, "BEGIN")?;
                for (s, (op, sp)) in steps.iter().enumerate() {
                    sql(case, "SAVEPOINT s")?;
                    let snapshot = case.model().clone();
                    let failed = case.step_op(op)?;
                    if failed || *sp == Sp::Undo {
                        sql(case, "ROLLBACK TO SAVEPOINT s")?;
                        *case.model() = snapshot;
                    } else {
                        sql(case, "RELEASE SAVEPOINT s")?;
                    }
                    case.check_state(&format!("block {b} step {s} (in a transaction, savepoint {sp:?}), after {op:?}"))?;
                }
                if *commit {
                    sql(case, "COMMIT")?;
                } else {
                    sql(case, "ROLLBACK")?;
                    *case.model() = before;
                }
                case.check_state(&format!("block {b} after {}", if *commit { "COMMIT" } else { "ROLLBACK" }))?;
            }
            Block::Plain(steps, commit) => {
                let before = case.model().clone();
                sql(case, "BEGIN")?;
                let mut aborted = false;
                for (s, op) in steps.iter().enumerate() {
                    if case.step_op(op)? {
                        aborted = true;
                        break;
                    }
                    case.check_state(&format!("block {b} step {s} (in a transaction), after {op:?}"))?;
                }
                if aborted {
                    let state = case.client().batch_execute("SELECT 1").map(|_| ()).map_err(|e| code(&e));
                    if state != Err("25P02".into()) {
                        return Err(TestCaseError::fail(format!(
                            "block {b}: after a failed call the transaction is aborted (25P02), got {state:?}"
                        )));
                    }
                }
                if *commit && !aborted {
                    sql(case, "COMMIT")?;
                } else {
                    sql(case, "ROLLBACK")?;
                    *case.model() = before;
                }
                case.check_state(&format!("block {b} after the transaction"))?;
            }
        }
    }
    Ok(())
}

fn ledger_property(bad: bool) {
    let cluster = Cluster::start();
    let client = RefCell::new(cluster.connect());
    let cases = AtomicUsize::new(0);
    let seen = Seen::default();
    proptest!(config(), |(blocks in blocks(ledger_op(bad)))| {
        let mut c = client.borrow_mut();
        let _ = c.batch_execute("ROLLBACK");
        let mut case = LedgerCase { c: &mut c, case: cases.fetch_add(1, AtomicOrdering::SeqCst), model: LedgerModel::default(), seen: &seen };
        case.load_default();
        case.check("before the case")?;
        case.run(&blocks)?;
        // the whole ledger, every account of every case so far
        for row in case.c.query("SELECT account, ok, detail FROM exactly.verify_ledger()", &[]).unwrap() {
            prop_assert!(row.get::<_, Option<bool>>(1) == Some(true), "verify_ledger(): {:?} {:?}",
                row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(2));
        }
    });
    let mut required = vec!["append", "keyed append", "batch", "batch > 100", "replay", "open", "extreme amount",
                            "refused 22023", "refused 22003", "refused 23514", "refused 23505"];
    if bad {
        required.push("refused 22004");
    }
    assert_seen(&seen, if bad { "ledger with bad input" } else { "ledger" }, &required);
}

/// Valid calls with random and extreme amounts, keys, limits, batches, transactions and
/// savepoints: every balance, entry and running balance as the model has it.
#[test]
fn ledger_matches_the_model() {
    ledger_property(false);
}

/// The same with invalid calls mixed in (NULLs, an empty account, NaN and infinite amounts,
/// a NaN min_balance, empty, NULL, NULL-holding, NaN-holding and two-dimensional amount
/// arrays): each gets its documented SQLSTATE and changes nothing.
#[test]
fn ledger_refuses_bad_input_and_changes_nothing() {
    ledger_property(true);
}

// ---------------------------------------------------------------------------------------
// invoice numbers

#[derive(Clone, Debug)]
enum Tenant {
    Of(usize),
    Empty,
    Null,
}

#[derive(Clone, Debug)]
enum IOp {
    Define { tenant: Tenant, prefix: Option<String>, width: Option<i32> },
    Next(Tenant),
    NextN(Tenant, Option<i32>),
    /// move an existing tenant's counter to bigint max - `below` (as a superuser, directly)
    NearMax(usize, i64),
}

const TENANTS: usize = 3;
const LAST_NUMBER: i64 = 9_223_372_036_854_775_806;

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("-".to_string()),
        Just("a-b".to_string()),
        Just("ünï €".to_string()),
        Just(" ".to_string()),
        Just("it's \"q\"".to_string()),
        Just("%s %I $1 {number}".to_string()),
        Just("x".repeat(300)),
        Just("INV\t2026".to_string()),
        "[A-Z]{1,4}",
    ]
}

fn invoice_op() -> BoxedStrategy<IOp> {
    let t = (0..TENANTS).prop_map(Tenant::Of);
    let valid_width = prop_oneof![Just(1), Just(8), Just(19), 1i32..20];
    let bad_width = prop_oneof![Just(0), Just(20), Just(-1), Just(i32::MAX), Just(i32::MIN)];
    let valid_n = prop_oneof![40 => 1i32..4, 12 => 4i32..200, 4 => Just(1000), 4 => Just(65_536), 1 => Just(1_000_000)];
    let bad_n = prop_oneof![Just(0), Just(-1), Just(1_000_001), Just(i32::MAX), Just(i32::MIN)];
    prop_oneof![
        3 => (t.clone(), prefix(), valid_width).prop_map(|(tenant, p, w)| IOp::Define { tenant, prefix: Some(p), width: Some(w) }),
        1 => (t.clone(), prefix(), bad_width).prop_map(|(tenant, p, w)| IOp::Define { tenant, prefix: Some(p), width: Some(w) }),
        1 => t.clone().prop_map(|tenant| IOp::Define { tenant, prefix: None, width: Some(8) }),
        1 => (t.clone(), prefix()).prop_map(|(tenant, p)| IOp::Define { tenant, prefix: Some(p), width: None }),
        1 => prop_oneof![Just(Tenant::Empty), Just(Tenant::Null)].prop_map(|tenant| IOp::Define { tenant, prefix: Some("p".into()), width: Some(8) }),
        8 => t.clone().prop_map(IOp::Next),
        1 => prop_oneof![Just(Tenant::Empty), Just(Tenant::Null)].prop_map(IOp::Next),
        6 => (t.clone(), valid_n).prop_map(|(tenant, n)| IOp::NextN(tenant, Some(n))),
        1 => (t.clone(), bad_n).prop_map(|(tenant, n)| IOp::NextN(tenant, Some(n))),
        1 => t.clone().prop_map(|tenant| IOp::NextN(tenant, None)),
        1 => prop_oneof![Just(Tenant::Empty), Just(Tenant::Null)].prop_map(|tenant| IOp::NextN(tenant, Some(2))),
        1 => (0..TENANTS, 0i64..4).prop_map(|(t, below)| IOp::NearMax(t, below)),
    ]
    .boxed()
}

#[derive(Clone, Debug, PartialEq)]
struct Seq {
    prefix: String,
    width: i32,
    next: i64,
}

fn format_number(prefix: &str, width: i32, n: i64) -> String {
    let digits = format!("{:0width$}", n, width = width as usize);
    if prefix.is_empty() {
        digits
    } else {
        format!("{prefix}-{digits}")
    }
}

struct InvoiceCase<'a> {
    c: &'a mut Client,
    case: usize,
    model: BTreeMap<String, Seq>,
    seen: &'a Seen,
}

impl InvoiceCase<'_> {
    fn tenant(&self, t: &Tenant) -> Option<String> {
        match t {
            Tenant::Of(0) => Some(format!("c{}-t", self.case)),
            Tenant::Of(1) => Some(format!("c{} ünï 'q\" %s", self.case)),
            Tenant::Of(_) => Some(format!("c{}-{}", self.case, "t".repeat(300))),
            Tenant::Empty => Some(String::new()),
            Tenant::Null => None,
        }
    }

    fn step(&mut self, op: &IOp) -> Result<bool, TestCaseError> {
        let fail = |msg: String| Err(TestCaseError::fail(format!("{op:?}: {msg}")));
        // what the model expects: Ok(numbers) or the SQLSTATE
        let (tenant, expected): (Option<String>, Result<Vec<i64>, &str>) = match op {
            IOp::Define { tenant, prefix, width } => {
                let name = self.tenant(tenant);
                let expect = match (&name, prefix, width) {
                    (None, _, _) | (_, None, _) | (_, _, None) => Err("22004"),
                    (Some(n), _, _) if n.is_empty() => Err("22023"),
                    (_, _, Some(w)) if !(1..=19).contains(w) => Err("22023"),
                    _ => Ok(vec![]),
                };
                (name, expect)
            }
            IOp::Next(tenant) | IOp::NextN(tenant, _) => {
                let name = self.tenant(tenant);
                let n = match op {
                    IOp::NextN(_, n) => *n,
                    _ => Some(1),
                };
                let expect = match (&name, n) {
                    (None, _) | (_, None) => Err("22004"),
                    (Some(t), _) if t.is_empty() => Err("22023"),
                    (_, Some(n)) if !(1..=1_000_000).contains(&n) => Err("22023"),
                    (Some(t), Some(n)) => {
                        let next = self.model.get(t).map(|s| s.next).unwrap_or(1);
                        if next as i128 + n as i128 - 1 > LAST_NUMBER as i128 {
                            Err("22003")
                        } else {
                            Ok((next..next + n as i64).collect())
                        }
                    }
                };
                (name, expect)
            }
            IOp::NearMax(t, below) => {
                let name = self.tenant(&Tenant::Of(*t)).unwrap();
                if let Some(seq) = self.model.get_mut(&name) {
                    seq.next = i64::MAX - below;
                    self.c
                        .execute(
                            "UPDATE exactly.invoice_sequences SET next_value = $2 WHERE tenant = $1",
                            &[&name, &seq.next],
                        )
                        .map_err(|e| TestCaseError::fail(describe(&e)))?;
                }
                return Ok(false);
            }
        };
        note(
            self.seen,
            match (&expected, op) {
                (Err(code), _) => format!("refused {code}"),
                (Ok(_), IOp::Define { .. }) => "define".into(),
                (Ok(n), _) if n.len() == 1_000_000 => "1,000,000 numbers".into(),
                (Ok(n), _) if n.len() > 2000 => "over 2,000 numbers".into(),
                (Ok(n), _) if n.len() > 1 => "several numbers".into(),
                (Ok(_), _) => "one number".into(),
            },
        );
        if let (Ok(n), IOp::Next(_) | IOp::NextN(..)) = (&expected, op) {
            if n.last().copied() == Some(LAST_NUMBER) {
                note(self.seen, "the last number");
            }
        }
        let got: Result<Vec<String>, postgres::Error> = match op {
            IOp::Define { prefix, width, .. } => self
                .c
                .execute("SELECT exactly.define_invoice_sequence($1::text, $2::text, $3::int)", &[&tenant, prefix, width])
                .map(|_| vec![]),
            IOp::Next(_) => self
                .c
                .query_one("SELECT exactly.next_invoice_number($1::text)", &[&tenant])
                .map(|r| vec![r.get(0)]),
            IOp::NextN(_, n) if n.unwrap_or(0) > 2000 => {
                // many numbers: check the count, that they are distinct, and a sample in order
                let n = n.unwrap();
                self.c
                    .query(
                        "WITH s AS MATERIALIZED (SELECT r, i FROM exactly.next_invoice_numbers($1::text, $2::int)
                                                   WITH ORDINALITY AS s(r, i))
                         SELECT (SELECT count(*) FROM s), (SELECT count(DISTINCT r) FROM s), i, r
                         FROM s WHERE i % 4093 = 1 OR i = $2 ORDER BY i",
                        &[&tenant, &n],
                    )
                    .map(|rows| {
                        let total: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
                        let distinct: i64 = rows.first().map(|r| r.get(1)).unwrap_or(0);
                        let sample: Vec<String> = rows.iter().map(|r| format!("{}:{}", r.get::<_, i64>(2), r.get::<_, String>(3))).collect();
                        let mut out = vec![format!("count {total} distinct {distinct}")];
                        out.extend(sample);
                        out
                    })
            }
            IOp::NextN(_, n) => self
                .c
                .query("SELECT r FROM exactly.next_invoice_numbers($1::text, $2::int) AS r", &[&tenant, n])
                .map(|rows| rows.iter().map(|r| r.get(0)).collect()),
            IOp::NearMax(..) => unreachable!(),
        };
        match (expected, got) {
            (_, Err(e)) if code(&e) == "XX000" => fail(format!("internal error XX000: {}", describe(&e))),
            (Err(want), Err(e)) if code(&e) == want => Ok(true),
            (Err(want), Err(e)) => fail(format!("expected SQLSTATE {want}, got {}", describe(&e))),
            (Err(want), Ok(got)) => fail(format!("expected SQLSTATE {want}, got {got:?}")),
            (Ok(_), Err(e)) => fail(format!("unexpected {}", describe(&e))),
            (Ok(numbers), Ok(got)) => {
                let tenant = tenant.unwrap();
                if let IOp::Define { prefix, width, .. } = op {
                    let seq = self.model.entry(tenant).or_insert(Seq { prefix: String::new(), width: 8, next: 1 });
                    seq.prefix = prefix.clone().unwrap();
                    seq.width = width.unwrap();
                    return Ok(false);
                }
                let seq = self.model.entry(tenant.clone()).or_insert(Seq { prefix: tenant.clone(), width: 8, next: 1 });
                let want: Vec<String> = if numbers.len() > 2000 {
                    let mut out = vec![format!("count {} distinct {}", numbers.len(), numbers.len())];
                    for (i, n) in numbers.iter().enumerate() {
                        let i = i as i64 + 1;
                        if i % 4093 == 1 || i == numbers.len() as i64 {
                            out.push(format!("{i}:{}", format_number(&seq.prefix, seq.width, *n)));
                        }
                    }
                    out
                } else {
                    numbers.iter().map(|n| format_number(&seq.prefix, seq.width, *n)).collect()
                };
                if got != want {
                    let show = |v: &[String]| v.iter().take(4).cloned().collect::<Vec<_>>();
                    return fail(format!("numbers {:?} (of {}), the model expects {:?} (of {})", show(&got), got.len(), show(&want), want.len()));
                }
                seq.next = numbers.last().unwrap() + 1;
                Ok(false)
            }
        }
    }

    fn check(&mut self, inside: &str) -> Result<(), TestCaseError> {
        for t in 0..TENANTS {
            let tenant = self.tenant(&Tenant::Of(t)).unwrap();
            let row = self
                .c
                .query_opt("SELECT prefix, width, next_value FROM exactly.invoice_sequences WHERE tenant = $1", &[&tenant])
                .map_err(|e| TestCaseError::fail(describe(&e)))?
                .map(|r| Seq { prefix: r.get(0), width: r.get(1), next: r.get(2) });
            if row.as_ref() != self.model.get(&tenant) {
                return Err(TestCaseError::fail(format!(
                    "{inside}: tenant {tenant:.40?}: stored {row:?}, model {:?}",
                    self.model.get(&tenant)
                )));
            }
        }
        let empty: i64 = self
            .c
            .query_one("SELECT count(*) FROM exactly.invoice_sequences WHERE tenant = ''", &[])
            .unwrap()
            .get(0);
        if empty != 0 {
            return Err(TestCaseError::fail(format!("{inside}: a tenant '' was created")));
        }
        Ok(())
    }
}

impl Case for InvoiceCase<'_> {
    type Op = IOp;
    type Model = BTreeMap<String, Seq>;
    fn client(&mut self) -> &mut Client {
        self.c
    }
    fn model(&mut self) -> &mut BTreeMap<String, Seq> {
        &mut self.model
    }
    fn step_op(&mut self, op: &IOp) -> Result<bool, TestCaseError> {
        self.step(op)
    }
    fn check_state(&mut self, inside: &str) -> Result<(), TestCaseError> {
        self.check(inside)
    }
}

/// define_invoice_sequence, next_invoice_number(s) with odd prefixes, valid and invalid
/// widths and counts, counters next to the bigint maximum, in autocommit, transactions and
/// savepoints: every number and every counter as the model has them; bad input gets its
/// SQLSTATE (22004, 22023, 22003) and changes nothing.
#[test]
fn invoice_numbers_match_the_model() {
    let cluster = Cluster::start();
    let client = RefCell::new(cluster.connect());
    let cases = AtomicUsize::new(0);
    let seen = Seen::default();
    proptest!(config(), |(blocks in blocks(invoice_op()))| {
        let mut c = client.borrow_mut();
        let _ = c.batch_execute("ROLLBACK");
        let mut case = InvoiceCase { c: &mut c, case: cases.fetch_add(1, AtomicOrdering::SeqCst), model: BTreeMap::new(), seen: &seen };
        run_blocks(&mut case, &blocks)?;
    });
    assert_seen(&seen, "invoice numbers", &["define", "one number", "several numbers", "over 2,000 numbers",
        "1,000,000 numbers", "refused 22003", "refused 22023", "refused 22004"]);
}

/// The model's decimal arithmetic against known answers, so a model bug is not mistaken
/// for an extension bug.
#[test]
fn the_models_decimals_add_and_compare_like_numeric() {
    let d = Dec::parse;
    assert_eq!(d("1.50"), d("1.5"));
    assert_eq!(d("-0.000"), Dec::zero());
    assert_eq!(d("10").add(&d("-10.00")), Dec::zero());
    assert_eq!(d("0.1").add(&d("0.2")), d("0.3"));
    assert_eq!(d("-5").add(&d("3.25")), d("-1.75"));
    assert_eq!(d("999").add(&d("1")), d("1000"));
    assert_eq!(d("1000").add(&d("-0.001")), d("999.999"));
    assert_eq!(d("-1000").add(&d("0.001")), d("-999.999"));
    assert!(d("-1").lt(&d("0")));
    assert!(!d("0").lt(&d("0.000")));
    assert!(d("0.0001").lt(&d("0.001")));
    assert!(d("-100").lt(&d("-99.9999")));
    let nines = Amt::Nines(131_072, false).text();
    assert_eq!(d(&nines).int_digits(), 131_072);
    assert_eq!(d(&nines).add(&d("1")).int_digits(), 131_073);
    assert_eq!(Amt::Scaled(-5, 3).text(), "-0.005");
    assert_eq!(Amt::Scaled(12345, 2).text(), "123.45");
    assert_eq!(Amt::Tiny(3, true).text(), "-0.001");
    assert_eq!(d("-0.005").text(), "-0.005");
    assert_eq!(d("0").text(), "0");
    assert_eq!(d("12.340").text(), "12.34");
    assert_eq!(d("1200").text(), "1200");
    assert_eq!(d(&Amt::Max(true).text()).text(), Amt::Max(true).text());
    assert_eq!(format_number("", 8, 1), "00000001");
    assert_eq!(format_number("S", 2, 100), "S-100");
}
