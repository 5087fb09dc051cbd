//! Idempotent bounded batch creation of raffle tickets (seed 000).
//!
//! A call locks the raffle row, inserts min(n, remaining) tickets in one statement and bumps
//! `tickets_created`, all in the caller's transaction. Calls on one raffle therefore run one
//! after another and each sees the count the previous one committed: the raffle can never
//! get more tickets than requested, and a call creates its whole batch or nothing.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, PgBuiltInOids};

use crate::errors::{raise, required};
use crate::spi_plans;

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
const FIRST_CALL: &str = "SELECT raffle_id, n, created FROM exactly.ticket_batches WHERE batch_key = $1";
const RECORD_BATCH: &str = "UPDATE exactly.ticket_batches SET created = $2 WHERE batch_key = $1";
const LOCK_RAFFLE: &str = "SELECT tickets_requested - tickets_created, code_length \
     FROM exactly.raffles WHERE id = $1 FOR UPDATE";
/// `$2` holds distinct codes in ascending order: the unique index is filled left to right.
const INSERT_TICKETS: &str = "INSERT INTO exactly.tickets (raffle_id, code) \
     SELECT $1, code FROM unnest($2::text[]) AS code ON CONFLICT (code) DO NOTHING";
const COUNT_CREATED: &str =
    "UPDATE exactly.raffles SET tickets_created = tickets_created + $2 WHERE id = $1";

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
    Spi::connect_mut(|client| {
        if let Some(key) = batch_key {
            if let Some(first_result) = claim_or_replay(client, key, raffle, n) {
                return first_result;
            }
        }
        let created = create(client, raffle, n);
        if let Some(key) = batch_key {
            spi_plans::run(client, RECORD_BATCH, &[TEXT, INT4], &[key.into(), created.into()]);
        }
        created
    })
}

/// Claim `key` for this call (None), or return the count of the call that claimed it first.
/// A key is claimed before the raffle is locked, always in that order, so no two calls can
/// wait for each other in a cycle.
fn claim_or_replay(client: &mut SpiClient<'_>, key: &str, raffle: i64, n: i32) -> Option<i32> {
    let args = [key.into(), raffle.into(), n.into()];
    if spi_plans::run(client, CLAIM_BATCH_KEY, &[TEXT, INT8, INT4], &args).len() == 1 {
        return None;
    }
    // ON CONFLICT waited for the claiming transaction to commit, so its row is final.
    let rows = spi_plans::run(client, FIRST_CALL, &[TEXT], &[key.into()]);
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
    let rows = spi_plans::run(client, LOCK_RAFFLE, &[INT8], &[raffle.into()]);
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
    insert_tickets(client, raffle, count as usize, code_length.unwrap() as usize);
    spi_plans::run(client, COUNT_CREATED, &[INT8, INT8], &[raffle.into(), count.into()]);
    count as i32
}

/// Insert `count` tickets with fresh random codes; a code already taken (by any raffle) is
/// replaced by another, so exactly `count` rows are inserted or the call fails.
fn insert_tickets(client: &mut SpiClient<'_>, raffle: i64, count: usize, code_length: usize) {
    let mut missing = count;
    for _ in 0..MAX_CODE_ROUNDS {
        let codes = random_codes(missing, code_length);
        let array = codes_to_text_array(&codes, code_length);
        missing -= spi_plans::run(client, INSERT_TICKETS, &[INT8, TEXT_ARRAY], &[raffle.into(), array]).len();
        if missing == 0 {
            return;
        }
    }
    raise(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!(
            "could not find {missing} more unused codes of {code_length} characters for raffle \
             {raffle} in {MAX_CODE_ROUNDS} rounds: the 16^{code_length} possible codes are nearly used up"
        ),
        "give the raffle a longer code_length before creating more tickets",
    )
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
    let mask = if length == 32 { u128::MAX } else { (1u128 << (4 * length)) - 1 };
    let mut codes: Vec<u128> = bytes
        .chunks_exact(bytes_per_code)
        .map(|chunk| chunk.iter().fold(0u128, |acc, &b| (acc << 8) | u128::from(b)) & mask)
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// The codes as a `text[]` of upper-case hex strings, zero-padded to `length`. Built directly
/// as server datums: a million codes would otherwise go through a million Rust Strings.
fn codes_to_text_array(codes: &[u128], length: usize) -> pgrx::datum::DatumWithOid<'static> {
    let mut datums: Vec<pg_sys::Datum> = codes
        .iter()
        .map(|&code| {
            let hex = format!("{code:0length$X}");
            // SAFETY: copies `length` bytes into a new text datum in the current context.
            unsafe { pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(hex.as_ptr().cast(), length as i32)) }
        })
        .collect();
    // SAFETY: `datums` are valid text datums; the array is allocated in the current context.
    unsafe {
        let array = pg_sys::construct_array_builtin(datums.as_mut_ptr(), datums.len() as i32, pg_sys::TEXTOID);
        pgrx::datum::DatumWithOid::new(pg_sys::Datum::from(array), pg_sys::TEXTARRAYOID)
    }
}
