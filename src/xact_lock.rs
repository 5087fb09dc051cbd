//! Fair, transaction-scoped exclusive locks on names, taken in the server's lock manager.
//!
//! Why: when many transactions update one hot row, each waiter sleeps on the row lock,
//! wakes when the holder commits, re-reads the new row version and often sleeps again.
//! Queueing first on a heavyweight lock of our own makes waiters line up in order and
//! find the row free when their turn comes. The row lock stays the guarantee; this lock
//! is the queue. A real lock-manager wait is deadlock-detected and shown in `pg_locks`.
//!
//! The locks are advisory locks with `objsubid` set to a space of ours. The application's
//! own `pg_advisory_xact_lock` keys use `objsubid` 1 (one bigint) and 2 (two ints), so
//! they never meet ours. `classid` and `objid` hold the high and low halves of a 64-bit
//! FNV-1a hash of the name. A collision between two names only makes them share a queue.

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// `pg_locks.objsubid` of each of our lock spaces. The order of the spaces is part of the
/// lock order of `lock_exclusive_in_order`: a key before its account or raffle.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u16)]
pub enum LockSpace {
    /// one lock per lease name: exclusive for a grant, renewal or release, shared for a
    /// fence check (held to the end of the writing transaction); first in the order, so a
    /// fenced write may go on to take any other lock of ours
    Lease = 98,
    /// one lock per slot name, held by whoever takes, renews or gives back one of its slots
    Slot = 99,
    /// one lock per invoice tenant, held by whoever draws that tenant's numbers
    InvoiceTenant = 101,
    /// one lock per idempotency key of a payment, a transfer (named "transfer\0key") or a
    /// hold ("hold\0key"), taken before the key's accounts
    PaymentKey = 102,
    /// one lock per ledger account of exactly.payments
    Account = 103,
    /// one lock per (table, account) of a table kept by exactly.maintain_running_balance()
    TableAccount = 104,
    /// one lock per ticket batch key, taken before the key's raffle
    TicketBatchKey = 105,
    /// one lock per raffle, held by whoever creates its tickets
    Raffle = 106,
    /// one lock per (table, key) of a user's table, held by whoever writes that row through
    /// find_or_create, increment or complete_batch: last, so a counter bumped after the
    /// rest of a transaction's work waits in line instead of failing
    UserRow = 107,
    /// not a lock: marks a transaction that holds row locks taken outside the order (a
    /// claim's picked rows); from then on it never waits for a lock of ours
    RowsOutsideTheOrder = 200,
    /// the application's named locks (`exactly.lock`): never taken through
    /// `lock_exclusive_in_order`, they wait like any lock-manager lock, deadlock-detected
    Named = 110,
    /// one per table whose rows are claimed: claimers pick one at a time, and let go before
    /// their commit (a queue, not a guarantee: its holder never waits for anything)
    ClaimPick = 111,
}

thread_local! {
    /// The highest (space, name) this backend's current transaction locked in order, tagged
    /// with the transaction's local id: stale, and ignored, once that transaction has ended.
    static HIGHEST_IN_ORDER: RefCell<Option<(pg_sys::LocalTransactionId, LockSpace, Vec<u8>)>> =
        const { RefCell::new(None) };
}

/// This backend's current top-level transaction, as the lock manager counts them.
fn local_transaction_id() -> pg_sys::LocalTransactionId {
    // SAFETY: MyProc is this backend's PGPROC, set before any SQL runs.
    unsafe {
        // PostgreSQL 17 moved the local id into PGPROC's virtual transaction id.
        #[cfg(feature = "pg15")]
        let id = (*pg_sys::MyProc).lxid;
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        let id = (*pg_sys::MyProc).vxid.lxid;
        id
    }
}

/// Record that the current transaction holds row locks outside the lock order (rows a
/// claim picked and locked): waiting for any lock of ours from now on could close a cycle
/// through them, so every later lock is only taken if free (else 40001).
pub fn hold_rows_outside_the_order() {
    HIGHEST_IN_ORDER.with(|highest| {
        *highest.borrow_mut() = Some((local_transaction_id(), LockSpace::RowsOutsideTheOrder, vec![]))
    });
}

/// Whether the current transaction holds any lock of ours (in order or not): then it must
/// not wait for a row lock that no lock of ours queues (it could close a cycle).
pub fn holds_any_lock_of_ours() -> bool {
    let xact = local_transaction_id();
    HIGHEST_IN_ORDER.with(|highest| matches!(&*highest.borrow(), Some((x, _, _)) if *x == xact))
}

/// Take `name`'s lock in `space`, waiting in line if another transaction holds it; released
/// when the (sub)transaction ends. Every lock of ours is taken here, so a transaction may
/// hold several, taken in any order, across primitives, without ever deadlocking: it only
/// waits for a lock that sorts after every lock it already holds, so no cycle of waits can
/// form. A lock that sorts before one already held is taken only if it is free; if it is
/// not, waiting could close a cycle, and the call fails with a serialization failure
/// (40001) to retry instead. The rows these locks guard are written only by holders.
pub fn lock_exclusive_in_order(space: LockSpace, name: impl AsRef<[u8]>) {
    lock_in_order(space, name.as_ref(), pg_sys::ExclusiveLock)
}

/// As `lock_exclusive_in_order`, in share mode: holders of the share lock do not exclude
/// one another, only the exclusive holders of the same name.
pub fn lock_shared_in_order(space: LockSpace, name: impl AsRef<[u8]>) {
    lock_in_order(space, name.as_ref(), pg_sys::ShareLock)
}

fn lock_in_order(space: LockSpace, name: &[u8], mode: u32) {
    crate::early_release::note_hot_row();
    let xact = local_transaction_id();
    let after_all_held = HIGHEST_IN_ORDER.with(|highest| match &*highest.borrow() {
        Some((x, s, n)) if *x == xact => (space, name) >= (*s, n.as_slice()),
        _ => true,
    });
    if after_all_held {
        acquire_in_mode(space, name, mode, false);
        HIGHEST_IN_ORDER
            .with(|highest| *highest.borrow_mut() = Some((xact, space, name.to_vec())));
    } else if !acquire_in_mode(space, name, mode, true) {
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!(
                "{} is busy, and this transaction already holds a lock that sorts after it; \
                 waiting could deadlock",
                describe(space, name)
            ),
            "retry the transaction; taking accounts, tenants or raffles in ascending order never needs a retry",
        );
    }
}

/// Take the locks of all `names` in `space` (sorted, distinct), as `lock_exclusive_in_order`
/// would one by one, but without holding any of them while waiting for another: take every
/// free one; at the first busy one, let go of those this call took and wait for that one
/// alone, then try the rest again while holding it. A transaction that needs two hot
/// accounts then never sits on one of them in the other's queue, so the first one's queue
/// keeps moving (with ten accounts and twenty clients, a transfer that held its first
/// account while waiting for its second made everyone behind the first wait too). After a
/// few rounds it falls back to waiting in order while holding, so it cannot starve.
pub fn lock_all_in_order(space: LockSpace, names: &[&[u8]]) {
    const ROUNDS: usize = 4;
    crate::early_release::note_hot_row();
    let xact = local_transaction_id();
    let before = HIGHEST_IN_ORDER.with(|h| h.borrow().clone()).filter(|(x, _, _)| *x == xact);
    let mut waited_for: Option<&[u8]> = None;
    for _ in 0..ROUNDS {
        let mut taken: Vec<&[u8]> = waited_for.into_iter().collect();
        let busy = names.iter().copied().filter(|n| Some(*n) != waited_for).find(|name| {
            if acquire(space, name, true) {
                taken.push(name);
                false
            } else {
                true
            }
        });
        let Some(busy) = busy else {
            let last = names.last().expect("at least one name");
            HIGHEST_IN_ORDER.with(|highest| {
                let mut highest = highest.borrow_mut();
                let after = match &before {
                    Some((_, s, n)) => (space, *last) > (*s, n.as_slice()),
                    None => true,
                };
                *highest = if after { Some((xact, space, last.to_vec())) } else { before.clone() };
            });
            return;
        };
        for name in taken {
            release(space, name);
        }
        HIGHEST_IN_ORDER.with(|highest| *highest.borrow_mut() = before.clone());
        lock_exclusive_in_order(space, busy);
        waited_for = Some(busy);
    }
    if let Some(name) = waited_for {
        release(space, name);
        HIGHEST_IN_ORDER.with(|highest| *highest.borrow_mut() = before.clone());
    }
    for name in names {
        lock_exclusive_in_order(space, name);
    }
}

/// Give back one hold of `name`'s lock in `space` (a lock this transaction held before keeps
/// its earlier holds: the lock manager counts them).
pub fn release(space: LockSpace, name: &[u8]) {
    let tag = tag(space, name);
    // SAFETY: a well-formed tag of a lock this backend holds in this mode.
    unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false) };
}

/// Take `name`'s lock in `space` only if no other transaction holds it; never waits, so it
/// may be taken in any order. Taken, it counts in the lock order like any other.
pub fn lock_if_free(space: LockSpace, name: impl AsRef<[u8]>) -> bool {
    crate::early_release::note_hot_row();
    let name = name.as_ref();
    if !acquire(space, name, true) {
        return false;
    }
    let xact = local_transaction_id();
    HIGHEST_IN_ORDER.with(|highest| {
        let mut highest = highest.borrow_mut();
        let after_all_held = match &*highest {
            Some((x, s, n)) if *x == xact => (space, name) > (*s, n.as_slice()),
            _ => true,
        };
        if after_all_held {
            *highest = Some((xact, space, name.to_vec()));
        }
    });
    true
}

/// What a lock is for, for messages: the name when it is text, else the kind of lock.
fn describe(space: LockSpace, name: &[u8]) -> String {
    match (space, std::str::from_utf8(name)) {
        (LockSpace::UserRow, _) | (_, Err(_)) => "a row of this key".to_string(),
        (_, Ok(text)) => format!("\"{text}\""),
    }
}

/// LockAcquire on our tag, exclusive, to the end of the transaction; with `no_wait`, false
/// when another transaction holds it. Without, it waits (deadlock-detected, and subject to
/// `lock_timeout`), so only `lock_exclusive_in_order` and the named locks call it.
pub fn acquire(space: LockSpace, name: impl AsRef<[u8]>, no_wait: bool) -> bool {
    acquire_in_mode(space, name.as_ref(), pg_sys::ExclusiveLock, no_wait)
}

fn acquire_in_mode(space: LockSpace, name: &[u8], mode: u32, no_wait: bool) -> bool {
    let tag = tag(space, name);
    // SAFETY: a well-formed tag; an error (deadlock, cancel) longjmps out as an ERROR.
    let result = unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, no_wait) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// The advisory lock tag of `name` in `space`: as `pg_locks` shows it, classid and objid
/// hold the hash's high and low halves and objsubid the space.
pub fn tag(space: LockSpace, name: impl AsRef<[u8]>) -> pg_sys::LOCKTAG {
    let hash = fnv1a64(name.as_ref());
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once the backend is connected, before any SQL runs.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (hash >> 32) as u32,
        locktag_field3: hash as u32,
        locktag_field4: space as u16,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// FNV-1a, 64 bits: stable across releases, so backends running two versions of this
/// library during an upgrade still meet in the same queue.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(super::fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(super::fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
