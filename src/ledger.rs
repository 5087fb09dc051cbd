//! Running-balance ledgers (seed 004).
//!
//! An append locks its account (a fair queue lock in front of the account row, held to the
//! end of the transaction), adds the amount to the account's balance and inserts the entry
//! with that new balance as its running balance. Appends to one
//! account therefore run one after another, each from the balance the previous one
//! committed, and the entry id (drawn under the lock) orders them. Accounts are locked with
//! `lock_exclusive_in_order`, so our functions never deadlock, whatever order a transaction
//! appends to its accounts in.

use pgrx::datum::AnyNumeric;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, AllocatedByRust, PgBuiltInOids};

use crate::errors::{self, finite, non_empty, raise, required};
use crate::spi_plans;
use crate::trigger_rows::{self, attributes, column, column_as_text};
use crate::user_tables;
use crate::xact_lock::{lock_exclusive_in_order, LockSpace};

/// The account of the one-argument `append_payment(amount)`, the seed's single ledger.
const DEFAULT_ACCOUNT: &str = "default";
/// Most amounts one `append_payments` call appends (they are built into one statement).
const MAX_AMOUNTS_PER_CALL: usize = 1_000_000;

const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const NUMERIC: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICOID);
const NUMERIC_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICARRAYOID);
const OID: PgOid = PgOid::BuiltIn(PgBuiltInOids::OIDOID);

spi_plans::table_row!(Payment, "exactly.payments");

/// Add `$2` to account `$1`, unless it is a withdrawal that would take the available
/// balance (balance - pending_debits) below `min_balance`, or a deposit that would take
/// balance + pending_credits above `max_balance` (then nothing happens and no row comes
/// back). Two plain statements, like the reference: measured, one statement with a
/// data-modifying CTE cost more CPU per call.
const ADD_TO_ACCOUNT: &str = "UPDATE exactly.accounts
    SET balance = balance OPERATOR(pg_catalog.+) $2, entries = entries OPERATOR(pg_catalog.+) 1
    WHERE account OPERATOR(pg_catalog.=) $1
      AND ($2 OPERATOR(pg_catalog.>=) 0 OR min_balance IS NULL
           OR (balance OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.-) pending_debits)
              OPERATOR(pg_catalog.>=) min_balance)
      AND ($2 OPERATOR(pg_catalog.<=) 0 OR max_balance IS NULL
           OR (balance OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.+) pending_credits)
              OPERATOR(pg_catalog.<=) max_balance)
    RETURNING balance";
const INSERT_ENTRY: &str =
    "INSERT INTO exactly.payments AS p (account, amount, running_balance, idempotency_key)
    VALUES ($1, $2, $3, $4) RETURNING p";
/// The same for many amounts: running balances are the opening balance plus the running sum,
/// in array order; refused whole if any withdrawal would go below `min_balance` or any
/// deposit above `max_balance`.
const APPEND_MANY: &str = "WITH input AS (
        SELECT a.amount, a.position,
               pg_catalog.sum(a.amount) OVER (ORDER BY a.position) AS running
        FROM pg_catalog.unnest($2) WITH ORDINALITY AS a(amount, position)),
    totals AS (
        SELECT pg_catalog.sum(i.amount) AS total, pg_catalog.count(*) AS entries,
               pg_catalog.min(i.running) FILTER (WHERE i.amount OPERATOR(pg_catalog.<) 0)
                   AS lowest_after_withdrawal,
               pg_catalog.max(i.running) FILTER (WHERE i.amount OPERATOR(pg_catalog.>) 0)
                   AS highest_after_deposit
        FROM input i),
    opened AS (
        UPDATE exactly.accounts a
        SET balance = a.balance OPERATOR(pg_catalog.+) t.total,
            entries = a.entries OPERATOR(pg_catalog.+) t.entries
        FROM totals t
        WHERE a.account OPERATOR(pg_catalog.=) $1
          AND (t.lowest_after_withdrawal IS NULL OR a.min_balance IS NULL
               OR (a.balance OPERATOR(pg_catalog.+) t.lowest_after_withdrawal
                   OPERATOR(pg_catalog.-) a.pending_debits) OPERATOR(pg_catalog.>=) a.min_balance)
          AND (t.highest_after_deposit IS NULL OR a.max_balance IS NULL
               OR (a.balance OPERATOR(pg_catalog.+) t.highest_after_deposit
                   OPERATOR(pg_catalog.+) a.pending_credits) OPERATOR(pg_catalog.<=) a.max_balance)
        RETURNING a.balance OPERATOR(pg_catalog.-) t.total AS opening)
    INSERT INTO exactly.payments AS p (account, amount, running_balance)
    SELECT $1, i.amount, o.opening OPERATOR(pg_catalog.+) i.running
    FROM input i, opened o ORDER BY i.position
    RETURNING p";
const ACCOUNT_LIMIT: &str = "SELECT balance, min_balance, max_balance, pending_debits, pending_credits \
     FROM exactly.accounts WHERE account OPERATOR(pg_catalog.=) $1";
const CREATE_ACCOUNT: &str =
    "INSERT INTO exactly.accounts (account) VALUES ($1) ON CONFLICT (account) DO NOTHING";
const BY_IDEMPOTENCY_KEY: &str = "SELECT p, p.account, p.amount FROM exactly.payments p \
     WHERE p.idempotency_key OPERATOR(pg_catalog.=) $1";

/// Append `amount` to the default account (the seed's single ledger).
#[pg_extern(name = "append_payment", volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn append_payment_default(amount: Option<AnyNumeric>) -> Payment {
    append(DEFAULT_ACCOUNT, required(amount, "amount"), None)
}

/// Append `amount` to `account`; returns the new entry with its running balance. With an
/// idempotency key, a repeat returns the first entry and appends nothing.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn append_payment(
    account: Option<&str>,
    amount: Option<AnyNumeric>,
    idempotency_key: default!(Option<&str>, "NULL"),
) -> Payment {
    let account = required(account, "account");
    non_empty(account, "account", "'alice'");
    append(account, required(amount, "amount"), idempotency_key)
}

/// Append many amounts to `account` under one lock, in array order; returns the entries.
#[pg_extern(volatile, parallel_unsafe, requires = ["ledger_schema"])]
fn append_payments(
    account: Option<&str>,
    amounts: Option<Array<'_, AnyNumeric>>,
) -> SetOfIterator<'static, Payment> {
    let account = required(account, "account");
    let amounts = required(amounts, "amounts");
    non_empty(account, "account", "'alice'");
    if amounts.is_empty() || amounts.len() > MAX_AMOUNTS_PER_CALL {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "amounts must hold 1 to {MAX_AMOUNTS_PER_CALL} amounts, not {}",
                amounts.len()
            ),
            "split larger batches into several calls",
        );
    }
    let amounts = amounts.into_datum().expect("a non-NULL array");
    // SAFETY: pgrx detoasted the argument; ndim is in the array's header.
    let dimensions = unsafe { (*amounts.cast_mut_ptr::<pg_sys::ArrayType>()).ndim };
    if dimensions > 1 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("amounts must be a one-dimensional array, not one of {dimensions} dimensions"),
            "pass the amounts in order as one list, e.g. '{5,-3,1.25}'",
        );
    }
    // Each amount is looked at once, in place (an element-by-element iterator over a
    // varlena array costs O(n) per element), and a cancel is heard along the way.
    for (i, amount) in numerics(amounts).into_iter().enumerate() {
        if i % 65_536 == 0 {
            pgrx::check_for_interrupts!();
        }
        // SAFETY: an element of the numeric[] argument.
        if !amount.is_some_and(|a| unsafe { errors::is_finite(a) }) {
            check_amount(amount.map(|a| unsafe { AnyNumeric::from_datum(a, false) }.unwrap()).as_ref());
        }
    }
    lock_exclusive_in_order(LockSpace::Account, account);
    // SAFETY: the caller's context (the set's rows live there); entries are copied into it.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    let payments = Spi::connect_mut(|client| {
        let run = |client: &mut SpiClient<'_>| {
            // SAFETY: the caller's numeric[] argument, alive for the whole call.
            let args = [account.into(), unsafe {
                spi_plans::arg(amounts, pg_sys::NUMERICARRAYOID)
            }];
            let mut rows = spi_plans::run_as_owner(client, APPEND_MANY, &[TEXT, NUMERIC_ARRAY], &args);
            let mut payments = Vec::with_capacity(rows.len());
            while rows.next().is_some() {
                if payments.len() % 65_536 == 0 {
                    pgrx::check_for_interrupts!();
                }
                payments.push(Payment::copy(outer, &rows, 1));
            }
            payments
        };
        let mut payments = run(client);
        while payments.is_empty() {
            make_room_or_refuse(client, account, "this batch");
            payments = run(client);
        }
        payments
    });
    SetOfIterator::new(payments)
}

/// The elements of a one-dimensional numeric[] (None for a NULL), in order, in place.
fn numerics(array: pg_sys::Datum) -> Vec<Option<pg_sys::Datum>> {
    let (mut values, mut nulls, mut count) = (std::ptr::null_mut(), std::ptr::null_mut(), 0);
    // SAFETY: a detoasted numeric[] argument; deconstruct_array palloc's the two lists.
    unsafe {
        pg_sys::deconstruct_array(
            array.cast_mut_ptr(),
            pg_sys::NUMERICOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
            &mut values,
            &mut nulls,
            &mut count,
        );
        let values = std::slice::from_raw_parts(values, count as usize);
        let nulls = std::slice::from_raw_parts(nulls, count as usize);
        values.iter().zip(nulls).map(|(&v, &null)| (!null).then_some(v)).collect()
    }
}

/// Refuse NULL, NaN and infinite amounts: none of them can be added to a balance.
fn check_amount(amount: Option<&AnyNumeric>) {
    let Some(amount) = amount else {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "amount must not be NULL",
            "pass a number; use 0 for an entry that changes nothing",
        )
    };
    finite(amount, "amount");
}

fn append(account: &str, amount: AnyNumeric, idempotency_key: Option<&str>) -> Payment {
    check_amount(Some(&amount));
    if let Some(key) = idempotency_key {
        lock_exclusive_in_order(LockSpace::PaymentKey, key);
    }
    lock_exclusive_in_order(LockSpace::Account, account);
    // SAFETY: the caller's context; the entry is copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    Spi::connect_mut(|client| {
        if let Some(key) = idempotency_key {
            if let Some(first) = replay(client, outer, key, account, &amount) {
                return first;
            }
        }
        let add = |client: &mut SpiClient<'_>| {
            let rows = spi_plans::run_as_owner(
                client,
                ADD_TO_ACCOUNT,
                &[TEXT, NUMERIC],
                &[account.into(), amount.clone().into()],
            );
            (!rows.is_empty()).then(|| rows.first().get_one::<AnyNumeric>().unwrap().unwrap())
        };
        let balance = loop {
            if let Some(balance) = add(client) {
                break balance;
            }
            make_room_or_refuse(client, account, &format!("a payment of {amount}"));
        };
        let args = [
            account.into(),
            amount.clone().into(),
            balance.into(),
            idempotency_key.into(),
        ];
        let rows = spi_plans::run_as_owner(client, INSERT_ENTRY, &[TEXT, NUMERIC, NUMERIC, TEXT], &args);
        Payment::copy(outer, &rows.first(), 1)
    })
}

/// The entry an earlier call appended with `key`, if any; an error if that call had other
/// arguments. We hold the key's lock, so no other call with this key is in flight.
fn replay(
    client: &mut SpiClient<'_>,
    outer: pg_sys::MemoryContext,
    key: &str,
    account: &str,
    amount: &AnyNumeric,
) -> Option<Payment> {
    let rows = spi_plans::run_as_owner(client, BY_IDEMPOTENCY_KEY, &[TEXT], &[key.into()]);
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    let (first_account, first_amount) = (
        row.get::<String>(2).unwrap().unwrap(),
        row.get::<AnyNumeric>(3).unwrap().unwrap(),
    );
    if first_account != account || &first_amount != amount {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "idempotency key \"{key}\" was first used for {first_amount} to account \"{first_account}\", \
                 not {amount} to account \"{account}\""
            ),
            "an idempotency key names one payment: give a different payment its own key",
        );
    }
    Some(Payment::copy(outer, &row, 1))
}

/// Called when an append changed nothing, to make it possible or refuse it (we hold the
/// account's lock): the account does not exist yet (create it), or holds past their timeout
/// still count against its limits (release them: an expired hold never refuses anything),
/// or the append would take it past a limit (refuse). Returns only when it changed
/// something, so the caller's retry cannot loop.
fn make_room_or_refuse(client: &mut SpiClient<'_>, account: &str, what: &str) {
    let rows = spi_plans::run_as_owner(client, ACCOUNT_LIMIT, &[TEXT], &[account.into()]);
    if rows.is_empty() {
        spi_plans::run_as_owner(client, CREATE_ACCOUNT, &[TEXT], &[account.into()]);
        return;
    }
    let row = rows.first();
    let pending = [4, 5].map(|i| row.get::<AnyNumeric>(i).unwrap().unwrap_or_default());
    let text = |i: usize| row.get::<AnyNumeric>(i).unwrap().map(|n| n.to_string());
    let (balance, min, max, debits, credits) = (text(1), text(2), text(3), text(4), text(5));
    let balance = balance.unwrap_or_default();
    let (debits, credits) = (debits.unwrap_or_default(), credits.unwrap_or_default());
    if pending.iter().any(|p| p > &AnyNumeric::from(0)) {
        let accounts = std::collections::BTreeSet::from([account.to_string()]);
        if !crate::holds::release_expired(client, &accounts, None).is_empty() {
            return;
        }
    }
    let held = |pending: &AnyNumeric, text: &str, side: &str| {
        if pending == &AnyNumeric::from(0) { String::new() } else { format!(" (pending {side} {text})") }
    };
    let limit = match (min, max) {
        (Some(min), None) => format!("below its min_balance {min}: its balance is {balance}{}", held(&pending[0], &debits, "debits")),
        (None, Some(max)) => format!("above its max_balance {max}: its balance is {balance}{}", held(&pending[1], &credits, "credits")),
        (min, max) => format!(
            "outside its limits (min_balance {}, max_balance {}): its balance is {balance}{}{}",
            min.unwrap_or_default(),
            max.unwrap_or_default(),
            held(&pending[0], &debits, "debits"),
            held(&pending[1], &credits, "credits")
        ),
    };
    raise(
        PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
        format!("{what} would take account \"{account}\" {limit}"),
        "the payment was not appended; the transaction can go on (catch the error in a savepoint)",
    );
}

const TABLE_BALANCE: &str = "UPDATE exactly.table_balances \
     SET balance = balance OPERATOR(pg_catalog.+) $3, entries = entries OPERATOR(pg_catalog.+) 1 \
     WHERE rel OPERATOR(pg_catalog.=) $1::pg_catalog.regclass AND account OPERATOR(pg_catalog.=) $2 \
     RETURNING balance";
const CREATE_TABLE_BALANCE: &str = "INSERT INTO exactly.table_balances (rel, account) \
     VALUES ($1::pg_catalog.regclass, $2) ON CONFLICT (rel, account) DO NOTHING";

const USAGE: &str = "use: CREATE TRIGGER ... BEFORE INSERT OR UPDATE OR DELETE ON your_table FOR EACH ROW \
     EXECUTE FUNCTION exactly.maintain_running_balance('amount_column', 'running_balance_column'[, 'account_column'])";

/// `BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW EXECUTE FUNCTION
/// exactly.maintain_running_balance('amount_column', 'running_balance_column'[, 'account_column'])`:
/// fills the running balance of each inserted row from the previous row of its account, and
/// refuses to change or delete those columns. A serial or identity key is drawn again under
/// the account's lock, so the key order is the ledger order. Declared in sql/ledger.sql.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn maintain_running_balance_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the server's call of our trigger function.
    unsafe {
        trigger_rows::entry(fcinfo, "exactly.maintain_running_balance()", USAGE, maintain_running_balance)
    }
}
crate::finfo_v1!(pg_finfo_maintain_running_balance_wrapper);

fn maintain_running_balance<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, pgrx::datum::TryFromDatumError> {
    let event = trigger.event();
    let tgtype = trigger.trigger().tgtype as u32;
    let all_events =
        pg_sys::TRIGGER_TYPE_INSERT | pg_sys::TRIGGER_TYPE_UPDATE | pg_sys::TRIGGER_TYPE_DELETE;
    if !(event.fired_before() && event.fired_for_row()) || tgtype & all_events != all_events {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "exactly.maintain_running_balance() must be fired BEFORE INSERT OR UPDATE OR DELETE FOR EACH ROW",
            USAGE,
        );
    }
    let args = trigger.extra_args().unwrap();
    if !(2..=3).contains(&args.len()) {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            format!(
                "exactly.maintain_running_balance() takes 2 or 3 arguments, not {}",
                args.len()
            ),
            USAGE,
        );
    }
    let (amount_column, balance_column) = (args[0].as_str(), args[1].as_str());
    let (amount_attno, amount_type, _) = column(trigger, amount_column, USAGE);
    let (balance_attno, balance_type, _) = column(trigger, balance_column, USAGE);
    let account = args
        .get(2)
        .map(|name| (name.as_str(), column(trigger, name, USAGE).0));
    if amount_type != pg_sys::NUMERICOID || balance_type != pg_sys::NUMERICOID {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("columns \"{amount_column}\" and \"{balance_column}\" must be numeric"),
            "running balances are kept in numeric columns",
        );
    }
    let data = trigger.trigger_data();
    let guarded = [
        Some(amount_attno),
        Some(balance_attno),
        account.map(|(_, attno)| attno),
    ];
    if event.fired_by_delete() {
        refuse_change(trigger, "deleted");
    }
    if event.fired_by_update() {
        let changed = guarded.iter().flatten().any(|&attno| {
            column_as_text(trigger, data.tg_trigtuple, attno)
                != column_as_text(trigger, data.tg_newtuple, attno)
        });
        if changed {
            refuse_change(trigger, "changed");
        }
        return Ok(Some(trigger.new().unwrap().into_owned()));
    }

    let mut row = trigger
        .new()
        .expect("a BEFORE INSERT row trigger has a new row")
        .into_owned();
    let amount = row.get_by_index::<AnyNumeric>(amount_attno)?;
    check_amount(amount.as_ref());
    let account_name = match account {
        Some((name, attno)) => {
            column_as_text(trigger, data.tg_trigtuple, attno).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("account column \"{name}\" is NULL"),
                    "every entry belongs to an account",
                )
            })
        }
        None => String::new(),
    };
    let rel = trigger.relid().unwrap();
    lock_exclusive_in_order(
        LockSpace::TableAccount,
        &format!("{}/{account_name}", rel.to_u32()),
    );
    // The key is drawn from the table's own sequence, as the caller (an identity column's
    // sequence needs no privilege, as for the insert's own draw).
    let redrawn_key = user_tables::open(rel).key_sequence.map(|(attno, sequence, identity)| {
        // SAFETY: a sequence of the table, read from its dependencies with its description.
        (attno, unsafe { nextval_internal(sequence, !identity) })
    });
    // The row is changed only after SPI is done: memory SPI hands out dies with it.
    let balance = Spi::connect_mut(|client| {
        let args = [
            rel.into(),
            account_name.as_str().into(),
            amount.clone().into(),
        ];
        let new_balance = |client: &mut SpiClient<'_>| {
            let rows = spi_plans::run_as_owner(client, TABLE_BALANCE, &[OID, TEXT, NUMERIC], &args);
            (!rows.is_empty()).then(|| rows.first().get_one::<AnyNumeric>().unwrap().unwrap())
        };
        new_balance(client).unwrap_or_else(|| {
            let args = [rel.into(), account_name.as_str().into()];
            spi_plans::run_as_owner(client, CREATE_TABLE_BALANCE, &[OID, TEXT], &args);
            new_balance(client)
                .expect("the ledger's balance row exists: we created it under its lock")
        })
    });
    if let Some((attno, key)) = redrawn_key {
        set_key(trigger, &mut row, attno as usize, key)?;
    }
    row.set_by_index(balance_attno, balance)?;
    Ok(Some(row))
}

/// The server's `nextval`, with or without its privilege check (sequence.h).
///
/// # Safety
/// `relid` is a sequence.
unsafe fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64 {
    unsafe extern "C-unwind" {
        fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
    }
    // SAFETY: an ERROR inside (no privilege, the sequence's maximum) becomes a Rust panic.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| nextval_internal(relid, check_permissions))
    }
}

/// Put `key`, drawn under the account lock, in the row's primary-key column (int2/4/8).
fn set_key(
    trigger: &PgTrigger,
    row: &mut PgHeapTuple<'_, pgrx::AllocatedByRust>,
    attno: usize,
    key: i64,
) -> Result<(), pgrx::datum::TryFromDatumError> {
    let key_type = attributes(trigger)[attno - 1].atttypid;
    let attno = std::num::NonZeroUsize::new(attno).unwrap();
    match key_type {
        pg_sys::INT8OID => row.set_by_index(attno, key),
        pg_sys::INT4OID => row.set_by_index(attno, key as i32),
        pg_sys::INT2OID => row.set_by_index(attno, key as i16),
        _ => Ok(()), // not an integer key: nothing to redraw
    }
}

fn refuse_change(trigger: &PgTrigger, what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_RESTRICT_VIOLATION,
        format!(
            "entries of \"{}\" are append-only: a ledger entry cannot be {what}",
            trigger.table_name().unwrap()
        ),
        "append a reversing entry (the negated amount) instead",
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap()
    }

    #[pg_test]
    fn appends_carry_the_running_balance() {
        assert_eq!(
            text("SELECT running_balance::text FROM exactly.append_payment(100)"),
            "100"
        );
        assert_eq!(
            text("SELECT running_balance::text FROM exactly.append_payment(-30.5)"),
            "69.5"
        );
        assert_eq!(
            text("SELECT account || ' ' || balance || ' ' || entries FROM exactly.accounts"),
            "default 69.5 2"
        );
    }

    #[pg_test]
    fn append_payments_appends_in_array_order_under_one_lock() {
        Spi::run("SELECT exactly.append_payment('a', 10)").unwrap();
        assert_eq!(
            text("SELECT string_agg(amount || '=>' || trim_scale(running_balance), ' ' ORDER BY id) FROM exactly.append_payments('a', '{5,-3,1.25}')"),
            "5=>15 -3=>12 1.25=>13.25"
        );
        assert_eq!(
            text("SELECT balance::text FROM exactly.accounts WHERE account = 'a'"),
            "13.25"
        );
    }

    #[pg_test(
        error = "this batch would take account \"w\" below its min_balance 0: its balance is 10"
    )]
    fn a_batch_dipping_below_min_balance_is_refused_whole() {
        Spi::run("INSERT INTO exactly.accounts (account, min_balance) VALUES ('w', 0)").unwrap();
        Spi::run("SELECT exactly.append_payment('w', 10)").unwrap();
        Spi::run("SELECT exactly.append_payments('w', '{-8,-4,100}')").unwrap();
    }

    #[pg_test]
    fn a_deposit_to_an_account_below_its_minimum_is_allowed() {
        Spi::run("SELECT exactly.append_payment('d', -5)").unwrap();
        Spi::run("UPDATE exactly.accounts SET min_balance = 0 WHERE account = 'd'").unwrap();
        assert_eq!(
            text("SELECT running_balance::text FROM exactly.append_payment('d', 1)"),
            "-4"
        );
    }

    #[pg_test]
    fn an_idempotency_key_replays_the_first_entry() {
        let first = text("SELECT id::text FROM exactly.append_payment('k', 7, 'pay-1')");
        let again = text("SELECT id::text FROM exactly.append_payment('k', 7.0, 'pay-1')");
        assert_eq!(first, again);
        assert_eq!(text("SELECT count(*)::text FROM exactly.payments"), "1");
    }

    #[pg_test(
        error = "idempotency key \"pay-1\" was first used for 7 to account \"k\", not 8 to account \"k\""
    )]
    fn an_idempotency_key_with_another_amount_is_refused() {
        Spi::run("SELECT exactly.append_payment('k', 7, 'pay-1')").unwrap();
        Spi::run("SELECT exactly.append_payment('k', 8, 'pay-1')").unwrap();
    }

    #[pg_test(
        error = "exactly.maintain_running_balance() must be fired BEFORE INSERT OR UPDATE OR DELETE FOR EACH ROW"
    )]
    fn the_trigger_insists_on_guarding_updates_and_deletes() {
        Spi::run(
            "CREATE TABLE l (id serial PRIMARY KEY, amount numeric, balance numeric);
             CREATE TRIGGER rb BEFORE INSERT ON l FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'balance');
             INSERT INTO l (amount) VALUES (1);",
        )
        .unwrap();
    }

    #[pg_test]
    fn the_trigger_keeps_one_ledger_per_table_without_an_account_column() {
        Spi::run(
            "CREATE TABLE l (id serial PRIMARY KEY, amount numeric, balance numeric);
             CREATE TRIGGER rb BEFORE INSERT OR UPDATE OR DELETE ON l FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'balance');
             INSERT INTO l (amount) VALUES (1), (2.5), (-0.5);",
        )
        .unwrap();
        assert_eq!(
            text("SELECT string_agg(balance::text, ' ' ORDER BY id) FROM l"),
            "1 3.5 3.0"
        );
    }
}
