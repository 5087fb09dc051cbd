//! Idempotent bounded batch creation of raffle tickets (seed 000).
//!
//! A call locks the raffle row, inserts min(n, remaining) tickets in one statement and bumps
//! `tickets_created`, all in the caller's transaction. Calls on one raffle therefore run one
//! after another and each sees the count the previous one committed: the raffle can never
//! get more tickets than requested, and a call creates its whole batch or nothing.

use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgBuiltInOids};

use crate::errors::{raise, required};
use crate::spi_plans;
use crate::subtransaction;
use crate::xact_lock::{lock_exclusive_in_order, LockSpace};

/// Most tickets one call creates (its codes are built in memory: ~50 bytes each).
const MAX_TICKETS_PER_CALL: i32 = 1_000_000;
/// Rounds of fresh codes a call tries before it calls the code space exhausted.
const MAX_CODE_ROUNDS: u32 = 64;

const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);

const CLAIM_BATCH_KEY: &str = "INSERT INTO exactly.ticket_batches (batch_key, raffle_id, n) \
     VALUES ($1, $2, $3) ON CONFLICT (batch_key) DO NOTHING";
const FIRST_CALL: &str = "SELECT raffle_id, n, created FROM exactly.ticket_batches \
     WHERE batch_key OPERATOR(pg_catalog.=) $1";
const RECORD_BATCH: &str = "UPDATE exactly.ticket_batches SET created = $2 \
     WHERE batch_key OPERATOR(pg_catalog.=) $1";
const LOCK_RAFFLE: &str = "SELECT tickets_requested OPERATOR(pg_catalog.-) tickets_created, code_length \
     FROM exactly.raffles WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE";
/// `$2` holds distinct codes in ascending order: the unique index is filled left to right.
const INSERT_TICKETS: &str = "INSERT INTO exactly.tickets (raffle_id, code) \
     SELECT $1, c.code FROM pg_catalog.unnest($2) AS c(code)";
/// The same, skipping codes already taken: slower (a speculative insertion per row).
const INSERT_FREE_TICKETS: &str = "INSERT INTO exactly.tickets (raffle_id, code) \
     SELECT $1, c.code FROM pg_catalog.unnest($2) AS c(code) ON CONFLICT (code) DO NOTHING";
const COUNT_CREATED: &str = "UPDATE exactly.raffles \
     SET tickets_created = tickets_created OPERATOR(pg_catalog.+) $2 WHERE id OPERATOR(pg_catalog.=) $1";

/// Create up to `n` tickets for `raffle`; returns how many this call created. With
/// `batch_key`, a repeat of the key creates nothing and returns the first call's count.
#[pg_extern(volatile, parallel_unsafe)]
fn batch_create_tickets(
    raffle: Option<i64>,
    n: Option<i32>,
    batch_key: default!(Option<&str>, "NULL"),
) -> i32 {
    let raffle = required(raffle, "raffle");
    let n = required(n, "n");
    if !(0..=MAX_TICKETS_PER_CALL).contains(&n) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("n must be between 0 and {MAX_TICKETS_PER_CALL}, not {n}"),
            "split larger batches into several calls, each with its own batch key",
        );
    }
    // The key's queue lock first, then the raffle's: in lock order (see xact_lock), and a
    // second call with the same key waits here, not inside the key row's insert.
    if let Some(key) = batch_key {
        lock_exclusive_in_order(LockSpace::TicketBatchKey, key);
    }
    lock_exclusive_in_order(LockSpace::Raffle, &raffle.to_string());
    Spi::connect_mut(|client| {
        if let Some(key) = batch_key {
            if let Some(first_result) = claim_or_replay(client, key, raffle, n) {
                return first_result;
            }
        }
        let created = create(client, raffle, n);
        if let Some(key) = batch_key {
            spi_plans::run_as_owner(
                client,
                RECORD_BATCH,
                &[TEXT, INT4],
                &[key.into(), created.into()],
            );
        }
        created
    })
}

/// Claim `key` for this call (None), or return the count of the call that claimed it first.
fn claim_or_replay(client: &mut SpiClient<'_>, key: &str, raffle: i64, n: i32) -> Option<i32> {
    let args = [key.into(), raffle.into(), n.into()];
    if spi_plans::run_as_owner(client, CLAIM_BATCH_KEY, &[TEXT, INT8, INT4], &args).len() == 1 {
        return None;
    }
    // We hold the key's lock, so the transaction that claimed it has ended: its row is final.
    let rows = spi_plans::run_as_owner(client, FIRST_CALL, &[TEXT], &[key.into()]);
    if rows.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!("batch key \"{key}\" changed concurrently"),
            "retry the transaction",
        );
    }
    let (first_raffle, first_n, created) = rows.first().get_three::<i64, i32, i32>().unwrap();
    let (first_raffle, first_n) = (first_raffle.unwrap(), first_n.unwrap());
    if (first_raffle, first_n) != (raffle, n) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "batch key \"{key}\" was first used for raffle {first_raffle} with n = {first_n}, \
                 not raffle {raffle} with n = {n}"
            ),
            "a batch key names one batch: give a different batch its own key",
        );
    }
    Some(created.unwrap_or(0))
}

/// Lock the raffle, create min(n, remaining) tickets, count them; returns how many.
fn create(client: &mut SpiClient<'_>, raffle: i64, n: i32) -> i32 {
    let rows = spi_plans::run_as_owner(client, LOCK_RAFFLE, &[INT8], &[raffle.into()]);
    if rows.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("raffle {raffle} does not exist"),
            "create it first: INSERT INTO exactly.raffles (tickets_requested) VALUES (...) RETURNING id",
        );
    }
    let (remaining, code_length) = rows.first().get_two::<i64, i32>().unwrap();
    let count = remaining.unwrap().clamp(0, i64::from(n));
    if count == 0 {
        return 0;
    }
    insert_tickets(
        client,
        raffle,
        count as usize,
        code_length.unwrap() as usize,
    );
    spi_plans::run_as_owner(
        client,
        COUNT_CREATED,
        &[INT8, INT8],
        &[raffle.into(), count.into()],
    );
    count as i32
}

/// Insert `count` tickets with fresh random codes; a code already taken (by any raffle) is
/// replaced by another, so exactly `count` rows are inserted or the call fails.
fn insert_tickets(client: &mut SpiClient<'_>, raffle: i64, count: usize, code_length: usize) {
    let codes = random_codes(count, code_length);
    let array = codes_to_text_array(&codes, code_length);
    // With 12 characters a taken code is a one-in-billions event: try the plain INSERT, ~25%
    // faster than ON CONFLICT, and fall back only when a code turns out to be taken.
    if codes.len() == count && insert_all_or_nothing(client, raffle, array) {
        return;
    }
    // SAFETY (spi_plans::arg): arrays from codes_to_text_array live in the SPI context.
    let insert = |client: &mut SpiClient<'_>, array: pg_sys::Datum| {
        let args = [raffle.into(), unsafe {
            spi_plans::arg(array, pg_sys::TEXTARRAYOID)
        }];
        spi_plans::run_as_owner(client, INSERT_FREE_TICKETS, &[INT8, TEXT_ARRAY], &args).len()
    };
    let mut missing = count - insert(client, array);
    for _ in 0..MAX_CODE_ROUNDS {
        if missing == 0 {
            return;
        }
        let codes = random_codes(missing, code_length);
        missing -= insert(client, codes_to_text_array(&codes, code_length));
    }
    if missing > 0 {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "could not find {missing} more unused codes of {code_length} characters for raffle \
                 {raffle} in {MAX_CODE_ROUNDS} rounds: the 16^{code_length} possible codes are nearly used up"
            ),
            "give the raffle a longer code_length before creating more tickets",
        )
    }
}

/// Insert every code with a plain INSERT inside a subtransaction: true when all went in,
/// false (and nothing inserted) when one was already taken.
fn insert_all_or_nothing(client: &mut SpiClient<'_>, raffle: i64, array: pg_sys::Datum) -> bool {
    subtransaction::attempt(|| {
        PgTryBuilder::new(AssertUnwindSafe(|| {
            // SAFETY: the array built by codes_to_text_array, alive for the call.
            let args = [raffle.into(), unsafe { spi_plans::arg(array, pg_sys::TEXTARRAYOID) }];
            spi_plans::run_as_owner(client, INSERT_TICKETS, &[INT8, TEXT_ARRAY], &args);
            Some(())
        }))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |_| None)
        .execute()
    })
    .is_some()
}

/// Up to `count` distinct random codes of `length` hex digits, as numbers, ascending.
/// Duplicates drawn within the batch are dropped; the caller draws again for them.
fn random_codes(count: usize, length: usize) -> Vec<u128> {
    let bytes_per_code = length.div_ceil(2);
    let mut bytes = vec![0u8; count * bytes_per_code];
    // SAFETY: fills exactly the buffer we own. pg_strong_random is the server's
    // cryptographically secure source (OpenSSL or /dev/urandom).
    if !unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "could not generate random ticket codes",
            "the server's strong random source failed; see its log",
        );
    }
    let mask = if length == 32 {
        u128::MAX
    } else {
        (1u128 << (4 * length)) - 1
    };
    let mut codes: Vec<u128> = bytes
        .chunks_exact(bytes_per_code)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
                & mask
        })
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// The codes as a `text[]` of upper-case hex strings, zero-padded to `length`. Built directly
/// as server datums: a million codes would otherwise go through a million Rust Strings.
fn codes_to_text_array(codes: &[u128], length: usize) -> pg_sys::Datum {
    let mut datums: Vec<pg_sys::Datum> = codes
        .iter()
        .enumerate()
        .map(|(i, &code)| {
            if i % 65_536 == 0 {
                pgrx::check_for_interrupts!(); // a cancel is heard while a million are made
            }
            let hex = format!("{code:0length$X}");
            // SAFETY: copies `length` bytes into a new text datum in the current context.
            unsafe {
                pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                    hex.as_ptr().cast(),
                    length as i32,
                ))
            }
        })
        .collect();
    // SAFETY: `datums` are valid text datums; the array is allocated in the current context.
    unsafe {
        let array = pg_sys::construct_array_builtin(
            datums.as_mut_ptr(),
            datums.len() as i32,
            pg_sys::TEXTOID,
        );
        pg_sys::Datum::from(array)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn raffle(requested: i64, code_length: i32) -> i64 {
        Spi::get_one_with_args::<i64>(
            "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES ($1, $2) RETURNING id",
            &[requested.into(), code_length.into()],
        )
        .unwrap()
        .unwrap()
    }

    fn create(raffle: i64, n: i32, key: Option<&str>) -> i32 {
        Spi::get_one_with_args::<i32>(
            "SELECT exactly.batch_create_tickets(raffle => $1, n => $2, batch_key => $3)",
            &[raffle.into(), n.into(), key.into()],
        )
        .unwrap()
        .unwrap()
    }

    fn count(sql: &str, raffle: i64) -> i64 {
        Spi::get_one_with_args::<i64>(sql, &[raffle.into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn creates_at_most_what_remains_and_counts_it() {
        let r = raffle(2500, 12);
        assert_eq!(create(r, 1000, None), 1000);
        assert_eq!(create(r, 1000, None), 1000);
        assert_eq!(create(r, 1000, None), 500);
        assert_eq!(create(r, 1000, None), 0);
        assert_eq!(
            count(
                "SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1",
                r
            ),
            2500
        );
        assert_eq!(
            count(
                "SELECT tickets_created FROM exactly.raffles WHERE id = $1",
                r
            ),
            2500
        );
    }

    #[pg_test]
    fn codes_are_unique_upper_case_hex_of_the_raffles_length() {
        let r = raffle(5000, 7);
        create(r, 5000, None);
        assert_eq!(
            count("SELECT count(DISTINCT code) FROM exactly.tickets WHERE raffle_id = $1 AND code ~ '^[0-9A-F]{7}$'", r),
            5000
        );
    }

    #[pg_test]
    fn n_zero_creates_nothing_and_returns_zero() {
        let r = raffle(10, 12);
        assert_eq!(create(r, 0, None), 0);
        assert_eq!(
            count(
                "SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1",
                r
            ),
            0
        );
    }

    #[pg_test]
    fn a_repeated_batch_key_returns_the_first_count_and_creates_nothing() {
        let r = raffle(1500, 12);
        assert_eq!(create(r, 1000, Some("a")), 1000);
        assert_eq!(create(r, 1000, Some("b")), 500);
        assert_eq!(create(r, 1000, Some("a")), 1000);
        assert_eq!(create(r, 1000, Some("b")), 500);
        assert_eq!(
            count(
                "SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1",
                r
            ),
            1500
        );
    }

    /// With 4-character codes, a third of them taken by another raffle, nearly every batch of
    /// 20 distinct codes meets a taken one: the plain insert fails, its subtransaction is
    /// rolled back, and the call still creates exactly its count.
    #[pg_test]
    fn taken_codes_are_replaced_and_the_count_stays_exact() {
        let crowded = raffle(20_000, 4);
        assert_eq!(create(crowded, 20_000, None), 20_000);
        let r = raffle(3000, 4);
        for _ in 0..150 {
            assert_eq!(create(r, 20, None), 20);
        }
        assert_eq!(
            count(
                "SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1",
                r
            ),
            3000
        );
        // both raffles by their ids: other tests running at the same time draw raffle ids too,
        // so the crowded raffle's id need not be r - 1
        assert_eq!(
            count(
                &format!("SELECT count(DISTINCT code) FROM exactly.tickets WHERE raffle_id IN ($1, {crowded})"),
                r
            ),
            23_000
        );
        assert_eq!(
            count(
                "SELECT tickets_created FROM exactly.raffles WHERE id = $1",
                r
            ),
            3000
        );
        // rows the rolled-back plain inserts wrote before meeting a taken code: the fallback ran
        let attempted = count(
            "SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relid = 'exactly.tickets'::regclass AND $1 > 0",
            r,
        );
        assert!(
            attempted > 23_000,
            "no plain insert was rolled back ({attempted} rows inserted)"
        );
    }

    #[pg_test]
    fn purge_forgets_old_batch_keys() {
        let r = raffle(10, 12);
        create(r, 5, Some("old"));
        Spi::run("UPDATE exactly.ticket_batches SET created_at = now() - interval '40 days'")
            .unwrap();
        create(r, 5, Some("new"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT exactly.purge_ticket_batches('30 days')").unwrap(),
            Some(1)
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM exactly.ticket_batches").unwrap(),
            Some(1)
        );
    }

    #[pg_test(error = "raffle 424242 does not exist")]
    fn an_unknown_raffle_is_refused() {
        create(424242, 1, None);
    }

    #[pg_test(error = "n must be between 0 and 1000000, not -1")]
    fn a_negative_n_is_refused() {
        create(raffle(10, 12), -1, None);
    }
}
