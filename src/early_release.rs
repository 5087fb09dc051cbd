//! Early lock release (`exactly.early_lock_release = on`): a transaction that used a hot row
//! of ours releases its locks once its commit record is in the log, and is flushed — and
//! only then answered — after.
//!
//! Why it is safe for durability: there is one log, and a flush covers everything before
//! it. A transaction that saw a row we released (waited for our lock, read our counter)
//! writes its own commit record after ours, so it cannot be acknowledged before ours is
//! durable. What it changes: another session's plain read may see our commit a fraction of
//! a millisecond before it is durable, as with an asynchronous commit elsewhere. Our own
//! read functions flush to the current insert position first (`flush_log`).
//!
//! How, from PostgreSQL's CommitTransaction / RecordTransactionCommit (xact.c), resowner.c
//! and syncrep.c:
//! - a hot-row function marks the transaction (`note_hot_row`);
//! - at XACT_EVENT_PRE_COMMIT (after deferred triggers), a marked top-level transaction with
//!   an xid, whose `synchronous_commit` is not already off, remembers the setting and sets
//!   the variable to off — the variable, not the GUC: `SET LOCAL` would show in `SHOW`, an
//!   enclosing function's `SET` clause could undo it, and its assign hook would leave
//!   `SyncRepWaitMode` off. RecordTransactionCommit then writes the commit record without
//!   flushing (and without waiting for a standby);
//! - at XACT_EVENT_COMMIT, `XactLastCommitEnd` is this transaction's commit record's end;
//! - at RESOURCE_RELEASE_AFTER_LOCKS of the top-level commit (ProcReleaseLocks has run in
//!   the LOCKS phase; the client has not been answered): the setting is put back, the log is
//!   flushed to that point in a critical section (a failure is a PANIC, as in core), and
//!   `SyncRepWaitForLSN` waits for the standbys the user's mode asks for;
//! - PREPARE TRANSACTION never passes PRE_COMMIT (its release phases run with isCommit too:
//!   nothing is armed then), and an abort after PRE_COMMIT puts the setting back.
//!
//! The callbacks are registered with the server directly: pgrx's transaction-callback helper
//! does not clear its hooks on PREPARE.

use std::cell::Cell;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;

static EARLY_LOCK_RELEASE: GucSetting<bool> = GucSetting::<bool>::new(false);

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    /// Nothing to do at commit.
    Idle,
    /// A hot-row function ran in this transaction, with the setting on.
    Used,
    /// This commit writes its record without flushing; `synchronous_commit` was this.
    Armed { synchronous_commit: i32 },
    /// The record is written; flush to `lsn`, then put `synchronous_commit` back.
    Written { synchronous_commit: i32, lsn: pg_sys::XLogRecPtr },
}

thread_local! {
    static STATE: Cell<State> = const { Cell::new(State::Idle) };
}

/// Registered from `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"exactly.early_lock_release",
        c"Release pg_exactly's hot-row locks before the commit's log flush (the client still waits for it).",
        c"Commits of transactions that used a hot row of pg_exactly (an invoice tenant, an account, \
          a raffle, a row written by find_or_create or increment) release their locks as soon as \
          their commit record is written, and are flushed before the client hears COMMIT: every \
          acknowledged commit is durable, but another session's plain read may see one a moment \
          before it is.",
        &EARLY_LOCK_RELEASE,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: called once per backend from _PG_init; the callbacks live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterResourceReleaseCallback(Some(on_resource_release), std::ptr::null_mut());
    }
}

/// Called by every function that takes a hot row's lock (`xact_lock::lock_exclusive_in_order`).
pub fn note_hot_row() {
    if EARLY_LOCK_RELEASE.get() && STATE.get() == State::Idle {
        STATE.set(State::Used);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match (event, STATE.get()) {
        (pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT, State::Used) => {
            // SAFETY: reads of this backend's transaction state and commit setting.
            let (xid, current) = unsafe { (pg_sys::GetTopTransactionIdIfAny(), pg_sys::synchronous_commit) };
            // No xid: no commit record to flush. Already off: the user chose an asynchronous
            // commit, and there is no flush to move.
            if xid == pg_sys::InvalidTransactionId
                || current <= pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32
            {
                STATE.set(State::Idle);
                return;
            }
            // SAFETY: the variable RecordTransactionCommit reads; put back after the release.
            unsafe { pg_sys::synchronous_commit = pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32 };
            STATE.set(State::Armed { synchronous_commit: current });
        }
        (pg_sys::XactEvent::XACT_EVENT_COMMIT, State::Armed { synchronous_commit }) => {
            // SAFETY: set by RecordTransactionCommit to the end of this commit's record (a
            // transaction with an xid always writes one).
            let lsn = unsafe { pg_sys::XactLastCommitEnd };
            STATE.set(State::Written { synchronous_commit, lsn });
        }
        (pg_sys::XactEvent::XACT_EVENT_COMMIT, _) => STATE.set(State::Idle),
        (
            pg_sys::XactEvent::XACT_EVENT_ABORT
            | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
            | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
            | pg_sys::XactEvent::XACT_EVENT_PREPARE,
            state,
        ) => {
            if let State::Armed { synchronous_commit } | State::Written { synchronous_commit, .. } = state {
                // SAFETY: putting back what we changed.
                unsafe { pg_sys::synchronous_commit = synchronous_commit };
            }
            STATE.set(State::Idle);
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_resource_release(
    phase: pg_sys::ResourceReleasePhase::Type,
    is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if phase != pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS || !is_top_level {
        return;
    }
    let State::Written { synchronous_commit, lsn } = STATE.get() else {
        return;
    };
    STATE.set(State::Idle);
    // SAFETY: the commit's locks are released; the client has not been answered yet.
    unsafe {
        pg_sys::synchronous_commit = synchronous_commit;
        if !is_commit {
            return;
        }
        // As RecordTransactionCommit flushes: in a critical section, so that a failure to
        // write the log is a PANIC, never a commit reported and then lost.
        pg_sys::CritSectionCount += 1;
        pg_sys::XLogFlush(lsn);
        pg_sys::CritSectionCount -= 1;
        // The standbys the user's synchronous_commit and synchronous_standby_names ask for
        // (nothing when none is configured); a cancel here warns, as in core.
        pg_sys::SyncRepWaitForLSN(lsn, true);
    }
}

/// Flush the log to everything inserted so far: what any transaction released early has
/// written is durable before our read functions answer.
#[pg_extern(volatile, parallel_safe)]
fn flush_log() {
    // SAFETY: XLogFlush to the end of the WAL inserted so far.
    unsafe {
        if !pg_sys::RecoveryInProgress() {
            pg_sys::XLogFlush(end_of_inserted_log());
        }
    }
}

/// The end of the WAL inserted so far. GetXLogInsertRecPtr gives where the next record
/// starts: right after a page header when the last record ended at a page boundary. No
/// record ends there, and XLogFlush refuses (XX000 "flush request ... is not satisfied") to
/// flush further than what was generated, so step back over the header.
unsafe fn end_of_inserted_log() -> pg_sys::XLogRecPtr {
    let maxalign = |n: usize| (n + 7) & !7;
    let short_header = maxalign(std::mem::size_of::<pg_sys::XLogPageHeaderData>()) as u64;
    let long_header = maxalign(std::mem::size_of::<pg_sys::XLogLongPageHeaderData>()) as u64;
    let next = pg_sys::GetXLogInsertRecPtr();
    if next % pg_sys::wal_segment_size as u64 == long_header {
        next - long_header
    } else if next % pg_sys::XLOG_BLCKSZ as u64 == short_header {
        next - short_header
    } else {
        next
    }
}
