//! Slots: a counting semaphore with leases, "at most N holders of a name at once"
//! (docs/coordination.md). A slot is a row of `exactly.slots`, so like a lease it outlives
//! the transaction and connection that took it and ends at its ttl unless renewed.
//!
//! Taking and renewing a slot of a name happen one at a time under the name's lock (space
//! `Slot`): the count of live holders a caller sees is then the count when it inserts, and
//! a renewal cannot bring a holder back to life behind a caller that counted it as expired.
//! Callers queue on that lock in arrival order (the lock manager's queue is first come,
//! first served): the fairness policy. A caller that finds every slot held gets NULL at once,
//! without queueing.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::errors::{non_empty, not_too_long, positive, raise, required};
use crate::leases::MAX_NAME_BYTES;
use crate::spi_plans::{self, types::*};
use crate::xact_lock::{self, LockSpace};

const MAX_SLOTS: i32 = 1_000_000;

const LIVE_HOLDERS: &str = "SELECT pg_catalog.count(*) FROM exactly.slots s
    WHERE s.name OPERATOR(pg_catalog.=) $1
      AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()";
/// Forget the name's expired holders and take a slot if fewer than $2 are live.
const TAKE: &str = "WITH expired AS (
        DELETE FROM exactly.slots s
        WHERE s.name OPERATOR(pg_catalog.=) $1
          AND s.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp())
    INSERT INTO exactly.slots (name, token, acquired_at, expires_at)
    SELECT $1, pg_catalog.gen_random_uuid(), pg_catalog.clock_timestamp(),
           pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $3
    WHERE (SELECT pg_catalog.count(*) FROM exactly.slots s
           WHERE s.name OPERATOR(pg_catalog.=) $1
             AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())
          OPERATOR(pg_catalog.<) $2::pg_catalog.int8
    RETURNING token";
const RENEW: &str = "UPDATE exactly.slots s
    SET expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $3
    WHERE s.name OPERATOR(pg_catalog.=) $1 AND s.token OPERATOR(pg_catalog.=) $2
      AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";
const RELEASE: &str = "DELETE FROM exactly.slots s
    WHERE s.name OPERATOR(pg_catalog.=) $1 AND s.token OPERATOR(pg_catalog.=) $2
      AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";

/// Take one of `slots` slots of `name` for `ttl`: its token, or NULL when all are held.
#[pg_extern(volatile, parallel_unsafe)]
fn acquire_slot(name: Option<&str>, slots: Option<i32>, ttl: Option<Interval>) -> Option<Uuid> {
    let name = slot_name(name);
    let slots = required(slots, "slots");
    if !(1..=MAX_SLOTS).contains(&slots) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("slots = {slots} is out of range"),
            format!("allow between 1 and {MAX_SLOTS} holders at once"),
        );
    }
    let ttl = positive(ttl, "ttl");
    // SAFETY: reads the isolation level of the running transaction.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        // an older snapshot would not see holders that came since, and count too few
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "exactly.acquire_slot cannot count holders under REPEATABLE READ or SERIALIZABLE",
            "take slots in a READ COMMITTED transaction of their own (autocommit is fine)",
        );
    }
    Spi::connect_mut(|client| {
        let live: i64 = spi_plans::run_as_owner(client, LIVE_HOLDERS, &[TEXT], &[name.into()])
            .first()
            .get_one()
            .unwrap()
            .unwrap();
        if live >= slots as i64 {
            return None;
        }
        xact_lock::lock_exclusive_in_order(LockSpace::Slot, name);
        let taken = spi_plans::run_as_owner(client, TAKE, &[TEXT, INT4, INTERVAL], &[name.into(), slots.into(), ttl.into()]);
        taken.into_iter().next().map(|row| row.get::<Uuid>(1).unwrap().unwrap())
    })
}

/// Give a live slot `ttl` more from now; false when it has ended.
#[pg_extern(volatile, parallel_unsafe)]
fn renew_slot(name: Option<&str>, token: Option<Uuid>, ttl: Option<Interval>) -> bool {
    let name = slot_name(name);
    let token = required(token, "token");
    let ttl = positive(ttl, "ttl");
    xact_lock::lock_exclusive_in_order(LockSpace::Slot, name);
    Spi::connect_mut(|client| {
        !spi_plans::run_as_owner(client, RENEW, &[TEXT, UUID, INTERVAL], &[name.into(), token.into(), ttl.into()])
            .is_empty()
    })
}

/// Give a live slot back now; false when it had ended already.
#[pg_extern(volatile, parallel_unsafe)]
fn release_slot(name: Option<&str>, token: Option<Uuid>) -> bool {
    let name = slot_name(name);
    let token = required(token, "token");
    Spi::connect_mut(|client| {
        !spi_plans::run_as_owner(client, RELEASE, &[TEXT, UUID], &[name.into(), token.into()]).is_empty()
    })
}

fn slot_name(name: Option<&str>) -> &str {
    let name = required(name, "name");
    non_empty(name, "name", "'sync:tenant-42'");
    not_too_long(name, "name", MAX_NAME_BYTES);
    name
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn taken(sql: &str) -> bool {
        Spi::get_one::<pgrx::Uuid>(sql).unwrap().is_some()
    }

    #[pg_test]
    fn no_more_than_slots_holders_and_an_expired_slot_is_free_again() {
        assert!(taken("SELECT exactly.acquire_slot('s', 2, '1 minute')"));
        assert!(taken("SELECT exactly.acquire_slot('s', 2, '1 ms')"));
        Spi::run("SELECT pg_sleep(0.01)").unwrap();
        assert!(taken("SELECT exactly.acquire_slot('s', 2, '1 minute')"));
        assert!(!taken("SELECT exactly.acquire_slot('s', 2, '1 minute')"));
        // the expired holder was forgotten; two rows remain
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM exactly.slots").unwrap(), Some(2));
        Spi::run("SELECT exactly.release_slot('s', token) FROM exactly.slots LIMIT 1").unwrap();
        assert!(taken("SELECT exactly.acquire_slot('s', 2, '1 minute')"));
    }

    #[pg_test(error = "slots = 0 is out of range")]
    fn zero_slots_are_refused() {
        Spi::run("SELECT exactly.acquire_slot('s', 0, '1 minute')").unwrap();
    }
}
