//! Pending holds (two-phase transfers): money reserved on two accounts, later posted (all
//! or part, as a transfer), voided, or expired.
//!
//! A hold's row is written only under both its accounts' locks, like the accounts'
//! `pending_debits`/`pending_credits` that count it, so a pending hold is counted there
//! exactly once. Posting and voiding read the hold, lock its accounts in the lock order,
//! and read it again under them: whatever they find then stays true until they commit.

use std::collections::BTreeSet;

use pgrx::datum::{AnyNumeric, Interval};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, JsonB, PgBuiltInOids};

use crate::errors::{finite, raise, required};
use crate::spi_plans;
use crate::transfers::{self, Change, Leg, Request, Transfer};
use crate::xact_lock::{lock_all_in_order, lock_exclusive_in_order, lock_if_free, LockSpace};

const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
const NUMERIC: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICOID);
const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
const INT8_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8ARRAYOID);
const INTERVAL: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALOID);
const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);

spi_plans::table_row!(Hold, "exactly.holds");

const INSERT_HOLD: &str = "INSERT INTO exactly.holds AS h
        (from_account, to_account, amount, currency, expires_at, metadata, idempotency_key)
    VALUES ($1, $2, $3, $4, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $5, $6, $7)
    RETURNING h";
const BY_IDEMPOTENCY_KEY: &str = "SELECT h, h.from_account, h.to_account, h.amount,
        COALESCE(h.metadata OPERATOR(pg_catalog.=) $2, h.metadata IS NULL AND $2 IS NULL)
    FROM exactly.holds h WHERE h.idempotency_key OPERATOR(pg_catalog.=) $1";
const HOLD_ACCOUNTS: &str =
    "SELECT h.from_account, h.to_account FROM exactly.holds h WHERE h.id OPERATOR(pg_catalog.=) $1";
/// The hold as its accounts' locks keep it; `expired`: past its timeout, by the clock.
const HOLD: &str = "SELECT h, h.state, h.amount, h.posted_amount, h.transfer_id,
        COALESCE(h.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp(), false),
        h.metadata
    FROM exactly.holds h WHERE h.id OPERATOR(pg_catalog.=) $1";
const FINISH: &str = "UPDATE exactly.holds h
    SET state = $2, posted_amount = $3, transfer_id = $4, finished_at = pg_catalog.clock_timestamp()
    WHERE h.id OPERATOR(pg_catalog.=) $1 RETURNING h";
const TRANSFER: &str = "SELECT t FROM exactly.transfers t WHERE t.id OPERATOR(pg_catalog.=) $1";
/// Pending holds past their timeout on any of accounts `$1` (but hold `$2`).
const EXPIRED_ON: &str = "SELECT h.id, h.from_account, h.to_account FROM exactly.holds h
    WHERE h.state OPERATOR(pg_catalog.=) 'pending'
      AND h.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
      AND (h.from_account OPERATOR(pg_catalog.=) ANY ($1) OR h.to_account OPERATOR(pg_catalog.=) ANY ($1))
      AND h.id OPERATOR(pg_catalog.<>) $2
    ORDER BY h.id";
const EXPIRED: &str = "SELECT h.id, h.from_account, h.to_account FROM exactly.holds h
    WHERE h.state OPERATOR(pg_catalog.=) 'pending'
      AND h.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
    ORDER BY h.id";
/// Mark holds `$1` expired and take them out of their accounts' pending totals; the
/// accounts as they are afterwards, and how many holds expired.
const EXPIRE: &str = "WITH expired AS (
        UPDATE exactly.holds h SET state = 'expired', finished_at = pg_catalog.clock_timestamp()
        WHERE h.id OPERATOR(pg_catalog.=) ANY ($1) AND h.state OPERATOR(pg_catalog.=) 'pending'
        RETURNING h.from_account, h.to_account, h.amount),
    moves AS (
        SELECT x.from_account AS account, x.amount AS debits, 0 AS credits FROM expired x
        UNION ALL
        SELECT y.to_account, 0, y.amount FROM expired y),
    per_account AS (
        SELECT m.account, pg_catalog.sum(m.debits) AS debits, pg_catalog.sum(m.credits) AS credits
        FROM moves m GROUP BY m.account)
    UPDATE exactly.accounts a
    SET pending_debits = a.pending_debits OPERATOR(pg_catalog.-) p.debits,
        pending_credits = a.pending_credits OPERATOR(pg_catalog.-) p.credits
    FROM per_account p WHERE a.account OPERATOR(pg_catalog.=) p.account
    RETURNING a.account, p.debits, p.credits, (SELECT pg_catalog.count(*) FROM expired)";

/// Reserve `amount` from `from_account` to `to_account` until posted, voided or expired.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn hold(
    from_account: Option<&str>,
    to_account: Option<&str>,
    amount: Option<AnyNumeric>,
    timeout: default!(Option<Interval>, "NULL"),
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> Hold {
    let leg = Leg::new(from_account, to_account, amount, "");
    if let Some(timeout) = timeout {
        if timeout.as_micros() <= 0 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("timeout must be greater than 0, not {timeout}"),
                "e.g. timeout => '15 minutes'; leave it out for a hold that never expires",
            );
        }
    }
    if let Some(key) = idempotency_key {
        lock_exclusive_in_order(LockSpace::PaymentKey, format!("hold\0{key}"));
    }
    let accounts = transfers::lock_accounts([&leg]);
    // SAFETY: the caller's context; the hold is copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    Spi::connect_mut(|client| {
        if let Some(key) = idempotency_key {
            let args = [key.into(), metadata.as_ref().map(|m| JsonB(m.0.clone())).into()];
            let rows = spi_plans::run_as_owner(client, BY_IDEMPOTENCY_KEY, &[TEXT, JSONB], &args);
            if !rows.is_empty() {
                let row = rows.first();
                let same = row.get::<String>(2).unwrap().as_deref() == Some(leg.from.as_str())
                    && row.get::<String>(3).unwrap().as_deref() == Some(leg.to.as_str())
                    && row.get::<AnyNumeric>(4).unwrap().as_ref() == Some(&leg.amount)
                    && row.get::<bool>(5).unwrap() == Some(true);
                if !same {
                    raise(
                        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                        format!("idempotency key \"{key}\" was first used for another hold"),
                        "an idempotency key names one hold (the same accounts, amount and metadata): give a different hold its own key",
                    );
                }
                return Hold::copy(outer, &row, 1);
            }
        }
        let walked = transfers::apply(client, &accounts, &Change { reserve: Some(&leg), ..Change::default() });
        let args = [
            leg.from.as_str().into(),
            leg.to.as_str().into(),
            leg.amount.clone().into(),
            walked.reserve_currency.into(),
            timeout.into(),
            metadata.into(),
            idempotency_key.into(),
        ];
        let types = [TEXT, TEXT, NUMERIC, TEXT, INTERVAL, JSONB, TEXT];
        let rows = spi_plans::run_as_owner(client, INSERT_HOLD, &types, &args);
        Hold::copy(outer, &rows.first(), 1)
    })
}

/// A hold as its accounts' locks keep it.
struct Held {
    state: String,
    leg: Leg,
    posted_amount: Option<AnyNumeric>,
    transfer_id: Option<i64>,
    expired: bool,
    metadata: Option<serde_json::Value>,
}

/// Lock hold `id`'s accounts and read it under them.
fn lock_hold(client: &mut SpiClient<'_>, id: i64) -> Held {
    let rows = spi_plans::run_as_owner(client, HOLD_ACCOUNTS, &[INT8], &[id.into()]);
    if rows.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA,
            format!("hold {id} does not exist"),
            "pass the id exactly.hold returned",
        );
    }
    let (from, to) = rows.first().get_two::<String, String>().unwrap();
    let (from, to) = (from.unwrap(), to.unwrap());
    let accounts = BTreeSet::from([from.as_bytes(), to.as_bytes()]);
    lock_all_in_order(LockSpace::Account, &accounts.into_iter().collect::<Vec<_>>());
    let rows = spi_plans::run_as_owner(client, HOLD, &[INT8], &[id.into()]);
    let row = rows.first();
    Held {
        state: row.get(2).unwrap().unwrap(),
        leg: Leg { from, to, amount: row.get(3).unwrap().unwrap() },
        posted_amount: row.get(4).unwrap(),
        transfer_id: row.get(5).unwrap(),
        expired: row.get(6).unwrap().unwrap(),
        metadata: row.get::<JsonB>(7).unwrap().map(|m| m.0),
    }
}

fn not_pending(id: i64, held: &Held, what: &str) -> ! {
    let state = if held.state == "pending" { "expired" } else { held.state.as_str() };
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("hold {id} is {state}: it cannot be {what}"),
        "only a pending hold within its timeout can be posted; a posted hold cannot be voided",
    )
}

/// Post `amount` of hold `hold` (default: all of it) as a transfer; the rest is released.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn post_hold(hold: Option<i64>, amount: default!(Option<AnyNumeric>, "NULL")) -> Transfer {
    let id = required(hold, "hold");
    if let Some(amount) = &amount {
        finite(amount, "amount");
        if amount <= &AnyNumeric::from(0) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("amount must be greater than 0, not {amount}"),
                "void the hold to release it without moving money",
            );
        }
    }
    // SAFETY: the caller's context; the transfer is copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    Spi::connect_mut(|client| {
        let held = lock_hold(client, id);
        if held.state == "posted" {
            // a retried post gets its first answer
            let posted = held.posted_amount.as_ref().unwrap();
            if amount.as_ref().unwrap_or(&held.leg.amount) == posted {
                let rows = spi_plans::run_as_owner(client, TRANSFER, &[INT8], &[held.transfer_id.into()]);
                return Transfer::copy(outer, &rows.first(), 1);
            }
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("hold {id} was already posted, for {posted}"),
                "a hold is posted once",
            );
        }
        if held.state != "pending" || held.expired {
            not_pending(id, &held, "posted");
        }
        let amount = amount.unwrap_or_else(|| held.leg.amount.clone());
        if amount > held.leg.amount {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("hold {id} holds {}, less than the {amount} to post", held.leg.amount),
                "post at most the held amount",
            );
        }
        let legs = [Leg { from: held.leg.from.clone(), to: held.leg.to.clone(), amount: amount.clone() }];
        let accounts = BTreeSet::from([held.leg.from.clone(), held.leg.to.clone()]);
        let change = Change { release: Some(&held.leg), legs: &legs, hold: Some(id), ..Change::default() };
        let walked = transfers::apply(client, &accounts, &change);
        let request = Request { idempotency_key: None, metadata: held.metadata, event_at: None };
        let (transfer, transfer_id) = transfers::record(client, outer, &legs, walked, &request, Some(id))
            .pop()
            .expect("one transfer");
        let args = [id.into(), "posted".into(), amount.into(), transfer_id.into()];
        spi_plans::run_as_owner(client, FINISH, &[INT8, TEXT, NUMERIC, INT8], &args);
        transfer
    })
}

/// Release hold `hold` without moving money.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn void_hold(hold: Option<i64>) -> Hold {
    let id = required(hold, "hold");
    // SAFETY: the caller's context; the hold is copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    Spi::connect_mut(|client| {
        let held = lock_hold(client, id);
        match held.state.as_str() {
            "voided" | "expired" => {
                let rows = spi_plans::run_as_owner(client, HOLD, &[INT8], &[id.into()]);
                return Hold::copy(outer, &rows.first(), 1);
            }
            "pending" => {}
            _ => not_pending(id, &held, "voided"),
        }
        let accounts = BTreeSet::from([held.leg.from.clone(), held.leg.to.clone()]);
        let change = Change { release: Some(&held.leg), hold: Some(id), ..Change::default() };
        transfers::apply(client, &accounts, &change);
        let state = if held.expired { "expired" } else { "voided" };
        let args = [id.into(), state.into(), None::<AnyNumeric>.into(), None::<i64>.into()];
        let rows = spi_plans::run_as_owner(client, FINISH, &[INT8, TEXT, NUMERIC, INT8], &args);
        Hold::copy(outer, &rows.first(), 1)
    })
}

/// Release every pending hold past its timeout; how many.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn expire_holds() -> i64 {
    Spi::connect_mut(|client| {
        let rows = spi_plans::run_as_owner(client, EXPIRED, &[], &[]);
        let holds: Vec<(i64, String, String)> = rows
            .map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap(), r.get(3).unwrap().unwrap()))
            .collect();
        if holds.is_empty() {
            return 0;
        }
        let accounts: BTreeSet<&[u8]> = holds.iter().flat_map(|(_, f, t)| [f.as_bytes(), t.as_bytes()]).collect();
        lock_all_in_order(LockSpace::Account, &accounts.into_iter().collect::<Vec<_>>());
        let ids: Vec<i64> = holds.iter().map(|h| h.0).collect();
        let rows = spi_plans::run_as_owner(client, EXPIRE, &[INT8_ARRAY], &[ids.into()]);
        if rows.is_empty() { 0 } else { rows.first().get::<i64>(4).unwrap().unwrap_or(0) }
    })
}

/// Release the expired holds on `accounts` (locked by this transaction) whose other account
/// is locked too or free to lock now (a hold whose other account is busy waits for the next
/// touch or `expire_holds`); each changed account with what it no longer has pending.
pub fn release_expired(
    client: &mut SpiClient<'_>,
    accounts: &BTreeSet<String>,
    skip: Option<i64>,
) -> Vec<(String, AnyNumeric, AnyNumeric)> {
    let names: Vec<String> = accounts.iter().cloned().collect();
    let rows = spi_plans::run_as_owner(
        client,
        EXPIRED_ON,
        &[TEXT_ARRAY, INT8],
        &[names.into(), skip.unwrap_or(0).into()],
    );
    let candidates: Vec<(i64, String, String)> = rows
        .map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap(), r.get(3).unwrap().unwrap()))
        .collect();
    let ids: Vec<i64> = candidates
        .into_iter()
        .filter(|(_, from, to)| {
            [from, to].into_iter().all(|a| accounts.contains(a) || lock_if_free(LockSpace::Account, a))
        })
        .map(|(id, _, _)| id)
        .collect();
    if ids.is_empty() {
        return vec![];
    }
    let rows = spi_plans::run_as_owner(client, EXPIRE, &[INT8_ARRAY], &[ids.into()]);
    rows.map(|r| (r.get(1).unwrap().unwrap(), r.get(2).unwrap().unwrap(), r.get(3).unwrap().unwrap()))
        .collect()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn a_partial_post_moves_part_and_releases_the_rest() {
        // ids start at 1 in this test's transaction (sequences do not roll back otherwise)
        Spi::run("ALTER SEQUENCE exactly.holds_id_seq RESTART").unwrap();
        Spi::run("SELECT exactly.append_payment('a', 100)").unwrap();
        Spi::run("SELECT exactly.hold('a', 'b', 50)").unwrap();
        assert_eq!(
            text("SELECT pending_debits::text FROM exactly.accounts WHERE account = 'a'"),
            "50"
        );
        assert_eq!(text("SELECT amount::text FROM exactly.post_hold(1, 20)"), "20");
        assert_eq!(
            text("SELECT string_agg(account || ' ' || balance || ' ' || pending_debits || ' ' || pending_credits, ', ' ORDER BY account) FROM exactly.accounts"),
            "a 80 0 0, b 20 0 0"
        );
        assert_eq!(text("SELECT state || ' ' || posted_amount FROM exactly.holds"), "posted 20");
    }

    #[pg_test]
    fn an_expired_hold_never_refuses_an_append() {
        Spi::run("INSERT INTO exactly.accounts (account, min_balance) VALUES ('a', 0)").unwrap();
        Spi::run("SELECT exactly.append_payment('a', 10)").unwrap();
        Spi::run("SELECT exactly.hold('a', 'b', 10, timeout => '1 ms')").unwrap();
        Spi::run("SELECT pg_sleep(0.01)").unwrap();
        assert_eq!(text("SELECT running_balance::text FROM exactly.append_payment('a', -10)"), "0");
        assert_eq!(text("SELECT state FROM exactly.holds"), "expired");
        assert!(Spi::get_one::<bool>("SELECT bool_and(ok) FROM exactly.verify_ledger()").unwrap().unwrap());
    }

    #[pg_test(error = "hold 1 is voided: it cannot be posted")]
    fn a_voided_hold_cannot_be_posted() {
        Spi::run("ALTER SEQUENCE exactly.holds_id_seq RESTART").unwrap();
        Spi::run("SELECT exactly.hold('a', 'b', 5)").unwrap();
        Spi::run("SELECT exactly.void_hold(1)").unwrap();
        Spi::run("SELECT exactly.post_hold(1)").unwrap();
    }

    #[pg_test(error = "timeout must be greater than 0, not 00:00:00")]
    fn a_zero_timeout_is_refused() {
        Spi::run("SELECT exactly.hold('a', 'b', 5, timeout => '0 s')").unwrap();
    }
}
