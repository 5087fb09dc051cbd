//! Double-entry transfers: money moved between two accounts, as two entries of the running
//! ledger (src/ledger.rs) that sum to zero.
//!
//! A call locks every account it names once, in the lock order (`lock_all_in_order`, by
//! name), whatever order the legs name them in, so transfers, holds and appends never
//! deadlock one another. Under those locks one statement adds every account's total change
//! and returns the accounts; the legs are then walked in order in memory, from the opening
//! balances, checking currencies and limits after each leg (a refusal is an ERROR, which
//! undoes the statement); then the transfers and their entries are inserted with the
//! running balances the walk computed (one statement for many legs, two plain ones for one
//! leg). Holds (src/holds.rs) change the same accounts' pending totals through the same path.

use std::collections::{BTreeMap, BTreeSet};

use pgrx::datum::{AnyNumeric, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, JsonB, PgBuiltInOids};

use crate::errors::{finite, raise, required};
use crate::spi_plans;
use crate::xact_lock::{lock_all_in_order, lock_exclusive_in_order, LockSpace};

/// Most legs one `transfers` call takes.
const MAX_LEGS: usize = 10_000;

const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const NUMERIC: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
const NUMERIC_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICARRAYOID);
const INT4_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4ARRAYOID);
const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
const INT8_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8ARRAYOID);
const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);
const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);

spi_plans::table_row!(Transfer, "exactly.transfers");

/// Add each account's total change (the `n`th element of `$2`..`$5` belongs to the `n`th
/// account of `$1`); the accounts as they are afterwards. An index scan on the accounts'
/// key and array subscripts: measured, a join against the unnested arrays cost a quarter of
/// a transfer's CPU to start its plan.
const CHANGE_ACCOUNTS: &str = "UPDATE exactly.accounts a
    SET balance = a.balance OPERATOR(pg_catalog.+) $2[pg_catalog.array_position($1, a.account)],
        entries = a.entries OPERATOR(pg_catalog.+) $3[pg_catalog.array_position($1, a.account)],
        pending_debits = a.pending_debits OPERATOR(pg_catalog.+) $4[pg_catalog.array_position($1, a.account)],
        pending_credits = a.pending_credits OPERATOR(pg_catalog.+) $5[pg_catalog.array_position($1, a.account)]
    WHERE a.account OPERATOR(pg_catalog.=) ANY ($1)
    RETURNING a.account, a.balance, a.pending_debits, a.pending_credits,
              a.min_balance, a.max_balance, a.currency";
const CREATE_ACCOUNTS: &str = "INSERT INTO exactly.accounts (account)
    SELECT pg_catalog.unnest($1) ON CONFLICT (account) DO NOTHING";
/// The transfers, in leg order, and their entries (debit, then credit, per leg): ids drawn
/// in that order under the accounts' locks, so id order is ledger order.
const RECORD: &str = "WITH moved AS (
        INSERT INTO exactly.transfers AS t (from_account, to_account, amount, currency, metadata,
                                            event_at, idempotency_key, hold_id, leg)
        SELECT l.from_account, l.to_account, l.amount, l.currency, $5,
               COALESCE($6, pg_catalog.now()), $7, $8, l.leg
        FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4)) WITH ORDINALITY AS l(from_account, to_account, amount, currency, leg)
        ORDER BY l.leg
        RETURNING t AS moved_row, t.id, t.leg),
    entries AS (
        INSERT INTO exactly.payments (account, amount, running_balance, transfer_id)
        SELECT e.account, e.amount, e.running_balance, m.id
        FROM ROWS FROM (pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12)) WITH ORDINALITY AS e(account, amount, running_balance, leg, position)
        JOIN moved m ON m.leg OPERATOR(pg_catalog.=) e.leg
        ORDER BY e.position)
    SELECT m.moved_row, m.id FROM moved m ORDER BY m.leg";
/// The same for a call of one leg, in two plain statements (cheaper to start than the
/// joins above): the transfer, then its two entries in order.
const RECORD_ONE: &str = "INSERT INTO exactly.transfers AS t (from_account, to_account, amount, currency,
        metadata, event_at, idempotency_key, hold_id)
    VALUES ($1, $2, $3, $4, $5, COALESCE($6, pg_catalog.now()), $7, $8)
    RETURNING t, t.id";
const RECORD_ONE_ENTRIES: &str = "INSERT INTO exactly.payments (account, amount, running_balance, transfer_id)
    VALUES ($1, OPERATOR(pg_catalog.-) $3, $4, $6), ($2, $3, $5, $6)";
const BY_IDEMPOTENCY_KEY: &str = "SELECT t, t.from_account, t.to_account, t.amount,
        COALESCE(t.metadata OPERATOR(pg_catalog.=) $2, t.metadata IS NULL AND $2 IS NULL)
        AND ($3 IS NULL OR t.event_at OPERATOR(pg_catalog.=) $3)
    FROM exactly.transfers t WHERE t.idempotency_key OPERATOR(pg_catalog.=) $1 ORDER BY t.leg";

/// Money to move from one account to another.
pub struct Leg {
    pub from: String,
    pub to: String,
    pub amount: AnyNumeric,
}

impl Leg {
    /// A leg as the caller named it, refused unless it can be a transfer: both accounts
    /// named, different, and an amount > 0.
    pub fn new(from: Option<&str>, to: Option<&str>, amount: Option<AnyNumeric>, what: &str) -> Leg {
        let from = required(from, &format!("{what}from_account"));
        let to = required(to, &format!("{what}to_account"));
        let amount = required(amount, &format!("{what}amount"));
        for (name, value) in [("from_account", from), ("to_account", to)] {
            if value.is_empty() {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}{name} must not be an empty string"),
                    "name the account, e.g. 'alice'",
                );
            }
        }
        finite(&amount, &format!("{what}amount"));
        if amount <= AnyNumeric::from(0) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what}amount must be greater than 0, not {amount}"),
                "a transfer moves a positive amount from from_account to to_account; swap the accounts to move money back",
            );
        }
        if from == to {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{what}from_account and to_account are both \"{from}\""),
                "a transfer moves money between two different accounts",
            );
        }
        Leg { from: from.to_string(), to: to.to_string(), amount }
    }
}

/// What a call does to its (locked) accounts, in this order: drop a hold's reservation,
/// move the legs' money, add a hold's reservation.
#[derive(Default)]
pub struct Change<'a> {
    pub release: Option<&'a Leg>,
    pub legs: &'a [Leg],
    pub reserve: Option<&'a Leg>,
    /// the hold this call posts or voids: not one to expire on the way
    pub hold: Option<i64>,
}

/// An account as the walk over a call's legs sees it.
struct Account {
    balance: AnyNumeric,
    pending_debits: AnyNumeric,
    pending_credits: AnyNumeric,
    min_balance: Option<AnyNumeric>,
    max_balance: Option<AnyNumeric>,
    currency: Option<String>,
}

/// What the walk found for each leg: its currency and the running balances of its two
/// entries (debit, credit).
pub struct Walked {
    pub currencies: Vec<Option<String>>,
    pub from_balances: Vec<AnyNumeric>,
    pub to_balances: Vec<AnyNumeric>,
    /// the currency of the reservation, when the change reserves
    pub reserve_currency: Option<String>,
}

/// Lock every account of `legs` once, in the lock order; the accounts, sorted.
pub fn lock_accounts<'l>(legs: impl IntoIterator<Item = &'l Leg>) -> BTreeSet<String> {
    let accounts: BTreeSet<String> =
        legs.into_iter().flat_map(|l| [l.from.clone(), l.to.clone()]).collect();
    let names: Vec<&[u8]> = accounts.iter().map(|a| a.as_bytes()).collect();
    lock_all_in_order(LockSpace::Account, &names);
    accounts
}

/// Apply `change` to `accounts` (all locked by this transaction): update them, release
/// the expired holds they can, and check every leg in order. Refusals raise an ERROR.
pub fn apply(client: &mut SpiClient<'_>, accounts: &BTreeSet<String>, change: &Change<'_>) -> Walked {
    let zero = || AnyNumeric::from(0);
    // each account's total change: balance, entries, pending debits, pending credits
    let mut deltas: BTreeMap<&str, (AnyNumeric, i64, AnyNumeric, AnyNumeric)> =
        accounts.iter().map(|a| (a.as_str(), (zero(), 0, zero(), zero()))).collect();
    if let Some(hold) = change.release {
        let d = deltas.get_mut(hold.from.as_str()).unwrap();
        d.2 = d.2.clone() - hold.amount.clone();
        let c = deltas.get_mut(hold.to.as_str()).unwrap();
        c.3 = c.3.clone() - hold.amount.clone();
    }
    for leg in change.legs {
        let d = deltas.get_mut(leg.from.as_str()).unwrap();
        d.0 = d.0.clone() - leg.amount.clone();
        d.1 += 1;
        let c = deltas.get_mut(leg.to.as_str()).unwrap();
        c.0 = c.0.clone() + leg.amount.clone();
        c.1 += 1;
    }
    if let Some(hold) = change.reserve {
        let d = deltas.get_mut(hold.from.as_str()).unwrap();
        d.2 = d.2.clone() + hold.amount.clone();
        let c = deltas.get_mut(hold.to.as_str()).unwrap();
        c.3 = c.3.clone() + hold.amount.clone();
    }

    let mut found = change_accounts(client, &deltas, accounts.iter().map(String::as_str));
    if found.len() < accounts.len() {
        let missing: Vec<&str> =
            accounts.iter().map(String::as_str).filter(|a| !found.contains_key(*a)).collect();
        let names: Vec<String> = missing.iter().map(|a| a.to_string()).collect();
        spi_plans::run_as_owner(client, CREATE_ACCOUNTS, &[TEXT_ARRAY], &[names.into()]);
        found.extend(change_accounts(client, &deltas, missing.into_iter()));
    }
    // from the accounts as they are now back to how the call found them
    for (name, (balance, _, debits, credits)) in &deltas {
        let account = found.get_mut(*name).unwrap();
        account.balance = account.balance.clone() - balance.clone();
        account.pending_debits = account.pending_debits.clone() - debits.clone();
        account.pending_credits = account.pending_credits.clone() - credits.clone();
    }
    if found.values().any(|a| a.pending_debits > zero() || a.pending_credits > zero()) {
        // expired holds on these accounts stop counting before the limits are checked
        for (name, debits, credits) in crate::holds::release_expired(client, accounts, change.hold) {
            if let Some(account) = found.get_mut(name.as_str()) {
                account.pending_debits = account.pending_debits.clone() - debits;
                account.pending_credits = account.pending_credits.clone() - credits;
            }
        }
    }
    walk(&mut found, change)
}

/// Add `deltas` to the accounts named; those that exist, as they are afterwards.
fn change_accounts<'a>(
    client: &mut SpiClient<'_>,
    deltas: &BTreeMap<&str, (AnyNumeric, i64, AnyNumeric, AnyNumeric)>,
    names: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, Account> {
    let (mut accounts, mut balances, mut entries, mut debits, mut credits) =
        (vec![], vec![], vec![], vec![], vec![]);
    for name in names {
        let (b, e, d, c) = &deltas[name];
        accounts.push(name.to_string());
        balances.push(b.clone());
        entries.push(*e);
        debits.push(d.clone());
        credits.push(c.clone());
    }
    let args = [accounts.into(), balances.into(), entries.into(), debits.into(), credits.into()];
    let types = [TEXT_ARRAY, NUMERIC_ARRAY, INT8_ARRAY, NUMERIC_ARRAY, NUMERIC_ARRAY];
    let rows = spi_plans::run_as_owner_generic(client, CHANGE_ACCOUNTS, &types, &args);
    rows.map(|row| {
        (
            row.get::<String>(1).unwrap().unwrap(),
            Account {
                balance: row.get(2).unwrap().unwrap(),
                pending_debits: row.get(3).unwrap().unwrap(),
                pending_credits: row.get(4).unwrap().unwrap(),
                min_balance: row.get(5).unwrap(),
                max_balance: row.get(6).unwrap(),
                currency: row.get(7).unwrap(),
            },
        )
    })
    .collect()
}

/// Walk the change in order from the accounts' opening state, checking each step.
fn walk(accounts: &mut BTreeMap<String, Account>, change: &Change<'_>) -> Walked {
    if let Some(hold) = change.release {
        let from = accounts.get_mut(&hold.from).unwrap();
        from.pending_debits = from.pending_debits.clone() - hold.amount.clone();
        let to = accounts.get_mut(&hold.to).unwrap();
        to.pending_credits = to.pending_credits.clone() - hold.amount.clone();
    }
    let mut walked = Walked {
        currencies: Vec::with_capacity(change.legs.len()),
        from_balances: Vec::with_capacity(change.legs.len()),
        to_balances: Vec::with_capacity(change.legs.len()),
        reserve_currency: None,
    };
    for leg in change.legs {
        walked.currencies.push(currency(accounts, leg));
        let from = accounts.get_mut(&leg.from).unwrap();
        from.balance = from.balance.clone() - leg.amount.clone();
        check_min(&leg.from, from, &leg.amount, "a transfer");
        walked.from_balances.push(from.balance.clone());
        let to = accounts.get_mut(&leg.to).unwrap();
        to.balance = to.balance.clone() + leg.amount.clone();
        check_max(&leg.to, to, &leg.amount, "a transfer");
        walked.to_balances.push(to.balance.clone());
    }
    if let Some(hold) = change.reserve {
        walked.reserve_currency = currency(accounts, hold);
        let from = accounts.get_mut(&hold.from).unwrap();
        from.pending_debits = from.pending_debits.clone() + hold.amount.clone();
        check_min(&hold.from, from, &hold.amount, "a hold");
        let to = accounts.get_mut(&hold.to).unwrap();
        to.pending_credits = to.pending_credits.clone() + hold.amount.clone();
        check_max(&hold.to, to, &hold.amount, "a hold");
    }
    walked
}

/// The leg's currency: its accounts', which must not be two different ones.
fn currency(accounts: &BTreeMap<String, Account>, leg: &Leg) -> Option<String> {
    match (&accounts[&leg.from].currency, &accounts[&leg.to].currency) {
        (Some(from), Some(to)) if from != to => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "account \"{}\" holds {from} and account \"{}\" holds {to}: money cannot move between different currencies",
                leg.from, leg.to
            ),
            "convert through an exchange account of each currency: one transfer in each currency",
        ),
        (from, to) => from.clone().or_else(|| to.clone()),
    }
}

/// Refuse what leaves the available balance (balance - pending_debits) below min_balance.
fn check_min(name: &str, account: &Account, amount: &AnyNumeric, what: &str) {
    let Some(min) = &account.min_balance else { return };
    let available = account.balance.clone() - account.pending_debits.clone();
    if &available < min {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!(
                "{what} of {amount} would take account \"{name}\" below its min_balance {min}: \
                 its available balance would be {available} (balance {} after it, pending debits {})",
                account.balance, account.pending_debits
            ),
            "nothing was changed; the transaction can go on (catch the error in a savepoint)",
        );
    }
}

/// Refuse what takes balance + pending_credits above max_balance.
fn check_max(name: &str, account: &Account, amount: &AnyNumeric, what: &str) {
    let Some(max) = &account.max_balance else { return };
    let reach = account.balance.clone() + account.pending_credits.clone();
    if &reach > max {
        raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!(
                "{what} of {amount} would take account \"{name}\" above its max_balance {max}: \
                 balance {} and pending credits {}",
                account.balance, account.pending_credits
            ),
            "nothing was changed; the transaction can go on (catch the error in a savepoint)",
        );
    }
}

/// Insert the transfers of `legs` and their entries; the transfers and their ids, in leg
/// order.
pub fn record(
    client: &mut SpiClient<'_>,
    outer: pg_sys::MemoryContext,
    legs: &[Leg],
    walked: Walked,
    request: &Request,
    hold: Option<i64>,
) -> Vec<(Transfer, i64)> {
    if let [leg] = legs {
        return vec![record_one(client, outer, leg, walked, request, hold)];
    }
    let (mut entry_accounts, mut entry_amounts, mut entry_legs) = (vec![], vec![], vec![]);
    let mut running = Vec::with_capacity(legs.len() * 2);
    for (i, (leg, (from_balance, to_balance))) in
        legs.iter().zip(walked.from_balances.into_iter().zip(walked.to_balances)).enumerate()
    {
        entry_accounts.extend([leg.from.clone(), leg.to.clone()]);
        entry_amounts.extend([-leg.amount.clone(), leg.amount.clone()]);
        running.extend([from_balance, to_balance]);
        entry_legs.extend([i as i32 + 1, i as i32 + 1]);
    }
    let args = [
        legs.iter().map(|l| l.from.clone()).collect::<Vec<_>>().into(),
        legs.iter().map(|l| l.to.clone()).collect::<Vec<_>>().into(),
        legs.iter().map(|l| l.amount.clone()).collect::<Vec<_>>().into(),
        walked.currencies.into(),
        request.metadata.clone().map(JsonB).into(),
        request.event_at.into(),
        request.idempotency_key.as_deref().into(),
        hold.into(),
        entry_accounts.into(),
        entry_amounts.into(),
        running.into(),
        entry_legs.into(),
    ];
    let types = [
        TEXT_ARRAY, TEXT_ARRAY, NUMERIC_ARRAY, TEXT_ARRAY, JSONB, TIMESTAMPTZ, TEXT, INT8,
        TEXT_ARRAY, NUMERIC_ARRAY, NUMERIC_ARRAY, INT4_ARRAY,
    ];
    let mut rows = spi_plans::run_as_owner(client, RECORD, &types, &args);
    let mut transfers = Vec::with_capacity(legs.len());
    while rows.next().is_some() {
        transfers.push((Transfer::copy(outer, &rows, 1), rows.get::<i64>(2).unwrap().unwrap()));
    }
    transfers
}

/// `record` for a single leg.
fn record_one(
    client: &mut SpiClient<'_>,
    outer: pg_sys::MemoryContext,
    leg: &Leg,
    mut walked: Walked,
    request: &Request,
    hold: Option<i64>,
) -> (Transfer, i64) {
    let args = [
        leg.from.as_str().into(),
        leg.to.as_str().into(),
        leg.amount.clone().into(),
        walked.currencies.pop().flatten().into(),
        request.metadata.clone().map(JsonB).into(),
        request.event_at.into(),
        request.idempotency_key.as_deref().into(),
        hold.into(),
    ];
    let types = [TEXT, TEXT, NUMERIC, TEXT, JSONB, TIMESTAMPTZ, TEXT, INT8];
    let rows = spi_plans::run_as_owner(client, RECORD_ONE, &types, &args);
    let row = rows.first();
    let transfer = (Transfer::copy(outer, &row, 1), row.get::<i64>(2).unwrap().unwrap());
    let args = [
        leg.from.as_str().into(),
        leg.to.as_str().into(),
        leg.amount.clone().into(),
        walked.from_balances.pop().unwrap().into(),
        walked.to_balances.pop().unwrap().into(),
        transfer.1.into(),
    ];
    let types = [TEXT, TEXT, NUMERIC, NUMERIC, NUMERIC, INT8];
    spi_plans::run_as_owner(client, RECORD_ONE_ENTRIES, &types, &args);
    transfer
}

/// What a call asks for beyond its legs: compared when its idempotency key comes back.
pub struct Request {
    pub idempotency_key: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub event_at: Option<TimestampWithTimeZone>,
}

/// Move `amount` from `from_account` to `to_account`: a transfer and its two entries.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn transfer(
    from_account: Option<&str>,
    to_account: Option<&str>,
    amount: Option<AnyNumeric>,
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    event_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> Transfer {
    let legs = [Leg::new(from_account, to_account, amount, "")];
    let request = Request {
        idempotency_key: idempotency_key.map(str::to_string),
        metadata: metadata.map(|m| m.0),
        event_at,
    };
    move_money(&legs, &request).pop().expect("one transfer per leg")
}

/// Move money along every leg of `legs`, all or none.
#[pg_extern(name = "transfers", volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn transfers_of_legs(
    legs: Option<JsonB>,
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
    event_at: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> SetOfIterator<'static, Transfer> {
    let legs = parse_legs(required(legs, "legs").0);
    let request = Request {
        idempotency_key: idempotency_key.map(str::to_string),
        metadata: metadata.map(|m| m.0),
        event_at,
    };
    SetOfIterator::new(move_money(&legs, &request))
}

/// The legs of a `transfers` call: a JSON array of {"from", "to", "amount"}.
fn parse_legs(legs: serde_json::Value) -> Vec<Leg> {
    let hint = r#"legs is a JSON array like '[{"from": "alice", "to": "bob", "amount": 10}]'"#;
    let serde_json::Value::Array(items) = legs else {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "legs must be a JSON array", hint)
    };
    if items.is_empty() || items.len() > MAX_LEGS {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("legs must hold 1 to {MAX_LEGS} legs, not {}", items.len()),
            hint,
        );
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("leg {}: ", i + 1);
            let serde_json::Value::Object(fields) = item else {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}a leg must be a JSON object, not {item}"),
                    hint,
                )
            };
            if let Some(other) = fields.keys().find(|k| !["from", "to", "amount"].contains(&k.as_str())) {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}unknown key \"{other}\""),
                    "a leg has exactly the keys \"from\", \"to\" and \"amount\"",
                );
            }
            let text = |key: &str| match fields.get(key) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(other) => raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}\"{key}\" must be a JSON string naming an account, not {other}"),
                    hint,
                ),
            };
            let amount = match fields.get("amount") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(serde_json::Value::String(s)) if looks_numeric(s) => Some(s.clone()),
                Some(other) => raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{what}\"amount\" must be a JSON number or a string holding one, not {other}"),
                    hint,
                ),
            };
            let amount = amount.map(|a| {
                a.parse::<AnyNumeric>().unwrap_or_else(|_| {
                    raise(
                        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("{what}\"amount\" {a} is out of numeric's range"),
                        "numeric holds up to 131072 digits before the point and 16383 after",
                    )
                })
            });
            Leg::new(text("from"), text("to"), amount, &what)
        })
        .collect()
}

/// Whether `s` is a number as numeric's input reads one (digits, a point, an exponent; or
/// NaN/Infinity, which the amount check then refuses), so bad text is refused as bad input.
fn looks_numeric(s: &str) -> bool {
    let t = s.trim();
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    if ["nan", "infinity", "inf"].contains(&t.to_ascii_lowercase().as_str()) {
        return true;
    }
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let digits = mantissa.replace('_', "");
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next().unwrap_or("");
    let mantissa_ok = (!whole.is_empty() || !fraction.is_empty())
        && whole.chars().all(|c| c.is_ascii_digit())
        && fraction.chars().all(|c| c.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.len() <= 9 && e.chars().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exponent_ok && !mantissa.starts_with('_') && !mantissa.ends_with('_')
}

/// The transfers of one call: replayed if its key was used before, else made.
fn move_money(legs: &[Leg], request: &Request) -> Vec<Transfer> {
    if let Some(key) = &request.idempotency_key {
        lock_exclusive_in_order(LockSpace::PaymentKey, format!("transfer\0{key}"));
    }
    let accounts = lock_accounts(legs);
    // SAFETY: the caller's context; the transfers are copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    Spi::connect_mut(|client| {
        if let Some(key) = &request.idempotency_key {
            if let Some(first) = replay(client, outer, key, legs, request) {
                return first;
            }
        }
        let walked = apply(client, &accounts, &Change { legs, ..Change::default() });
        record(client, outer, legs, walked, request, None).into_iter().map(|(t, _)| t).collect()
    })
}

/// The transfers an earlier call made with `key`, if any; an error if that call asked for
/// something else. We hold the key's lock, so no other call with it is in flight.
fn replay(
    client: &mut SpiClient<'_>,
    outer: pg_sys::MemoryContext,
    key: &str,
    legs: &[Leg],
    request: &Request,
) -> Option<Vec<Transfer>> {
    let args = [key.into(), request.metadata.clone().map(JsonB).into(), request.event_at.into()];
    let mut rows = spi_plans::run_as_owner(client, BY_IDEMPOTENCY_KEY, &[TEXT, JSONB, TIMESTAMPTZ], &args);
    if rows.is_empty() {
        return None;
    }
    let mut first = Vec::with_capacity(rows.len());
    let mut same = rows.len() == legs.len();
    let mut i = 0;
    while rows.next().is_some() {
        if same {
            let leg = &legs[i];
            same = rows.get::<String>(2).unwrap().as_deref() == Some(leg.from.as_str())
                && rows.get::<String>(3).unwrap().as_deref() == Some(leg.to.as_str())
                && rows.get::<AnyNumeric>(4).unwrap().as_ref() == Some(&leg.amount)
                && rows.get::<bool>(5).unwrap() == Some(true);
        }
        first.push(Transfer::copy(outer, &rows, 1));
        i += 1;
    }
    if !same {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("idempotency key \"{key}\" was first used for other transfers"),
            "an idempotency key names one request (the same legs, metadata and event_at): give a different request its own key",
        );
    }
    Some(first)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn a_transfer_appends_two_entries_with_running_balances() {
        // ids start at 1 in this test's transaction (sequences do not roll back otherwise)
        Spi::run("ALTER SEQUENCE exactly.transfers_id_seq RESTART").unwrap();
        Spi::run("SELECT exactly.append_payment('a', 100)").unwrap();
        Spi::run("SELECT exactly.transfer('a', 'b', 30)").unwrap();
        assert_eq!(
            text("SELECT string_agg(account || ' ' || amount || ' ' || running_balance || ' ' || coalesce(transfer_id::text, '-'), ', ' ORDER BY id) FROM exactly.payments"),
            "a 100 100 -, a -30 70 1, b 30 30 1"
        );
        assert!(Spi::get_one::<bool>("SELECT bool_and(ok) FROM exactly.verify_ledger()").unwrap().unwrap());
    }

    #[pg_test]
    fn legs_are_applied_in_order_and_limits_checked_after_each() {
        Spi::run("INSERT INTO exactly.accounts (account, min_balance) VALUES ('a', 0)").unwrap();
        // b first pays a, then a pays c: fine in this order
        Spi::run(r#"SELECT exactly.transfers('[{"from": "b", "to": "a", "amount": 5}, {"from": "a", "to": "c", "amount": 5}]')"#).unwrap();
        assert_eq!(text("SELECT balance::text FROM exactly.accounts WHERE account = 'a'"), "0");
    }

    #[pg_test(error = "a transfer of 5 would take account \"a\" below its min_balance 0: its available balance would be -5 (balance -5 after it, pending debits 0)")]
    fn a_later_leg_cannot_pay_for_an_earlier_one() {
        Spi::run("INSERT INTO exactly.accounts (account, min_balance) VALUES ('a', 0)").unwrap();
        Spi::run(r#"SELECT exactly.transfers('[{"from": "a", "to": "c", "amount": 5}, {"from": "b", "to": "a", "amount": 5}]')"#).unwrap();
    }

    #[pg_test(error = "account \"e\" holds EUR and account \"u\" holds USD: money cannot move between different currencies")]
    fn currencies_do_not_mix() {
        Spi::run("INSERT INTO exactly.accounts (account, currency) VALUES ('e', 'EUR'), ('u', 'USD')").unwrap();
        Spi::run("SELECT exactly.transfer('e', 'u', 1)").unwrap();
    }

    #[pg_test(error = "leg 1: unknown key \"ammount\"")]
    fn a_misspelt_leg_key_is_refused() {
        Spi::run(r#"SELECT exactly.transfers('[{"from": "a", "to": "b", "ammount": 5}]')"#).unwrap();
    }
}
