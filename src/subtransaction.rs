//! Internal subtransactions that never outlive the call that began them.
//!
//! A subtransaction lets a call undo part of its own work without aborting the caller's
//! transaction: a plain insert that met a taken ticket code, the row locks a completion took
//! before it found a row busy. Whatever happens inside — a caught error, an error raised on,
//! a cancel, a timeout — it is committed or rolled back before control leaves `attempt`, and
//! the caller's memory context and resource owner are put back, as PL/Python does for its
//! subtransactions. A subtransaction left open would wedge the session (every later
//! statement 25P02, and ROLLBACK a FATAL error).

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Run `work` in a subtransaction: kept when it returns `Some`, rolled back when it returns
/// `None` (all it did is undone) or raises an ERROR (rolled back, then raised again).
pub fn attempt<R>(work: impl FnOnce() -> Option<R>) -> Option<R> {
    // SAFETY: begin/commit/roll back pair up on every path below; the caller's memory context
    // and resource owner are saved before and restored after.
    unsafe {
        let (context, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let end = |keep: bool| {
            if keep {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        // The subtransaction ends outside the try: an error while ending it must not end it
        // twice.
        let outcome = PgTryBuilder::new(AssertUnwindSafe(|| Ok(work())))
            .catch_others(Err)
            .execute();
        match outcome {
            Ok(result) => {
                end(result.is_some());
                result
            }
            Err(error) => {
                end(false);
                error.rethrow()
            }
        }
    }
}
