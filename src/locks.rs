//! Named locks for the application (seed 003).
//!
//! `exactly.lock('third_party_sync')` is the seed's advisory lock done so it cannot go wrong
//! behind a transaction-pooling PgBouncer: it is held to the end of the transaction, never
//! by the session. It is a lock-manager lock like `pg_advisory_xact_lock`: waiters queue in
//! order, a deadlock is detected (40P01), `pg_terminate_backend` on the holder frees it. The
//! name is hashed to 64 bits in a lock space of our own (`pg_locks.objsubid` 110), so it
//! never meets the application's own `pg_advisory_lock` keys (objsubid 1 and 2). These locks
//! stay out of the lock order of our other functions: the application picks their order.

use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgBuiltInOids;

use crate::errors::{non_empty, raise, required};
use crate::spi_plans;
use crate::xact_lock::{acquire, tag, LockSpace};

const OID: PgOid = PgOid::BuiltIn(PgBuiltInOids::OIDOID);

/// Who holds and who waits for one name, oldest first.
/// Run as the caller: pg_stat_activity shows another role's query only to whom may see it.
const STATUS: &str = "SELECT l.pid, l.granted, l.waitstart, a.xact_start, a.state, a.query
    FROM pg_catalog.pg_locks l
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid
    WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.database OPERATOR(pg_catalog.=) $1
      AND l.classid OPERATOR(pg_catalog.=) $2 AND l.objid OPERATOR(pg_catalog.=) $3
      AND l.objsubid OPERATOR(pg_catalog.=) 110
    ORDER BY l.granted DESC, l.waitstart";

/// Lock `name` until the end of the transaction, waiting for its holder; with `timeout`,
/// give up after that long with 55P03.
#[pg_extern(volatile, parallel_unsafe)]
fn lock(name: Option<&str>, timeout: default!(Option<Interval>, "NULL")) {
    let name = required(name, "name");
    non_empty(name, "name", "'third_party_sync'");
    let Some(timeout) = timeout else {
        acquire(LockSpace::Named, name, false);
        return;
    };
    let micros = timeout.as_micros();
    if micros < 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("timeout {timeout} is negative"),
            "pass how long to wait, e.g. '2 seconds', or NULL to wait as long as it takes",
        );
    }
    // lock_timeout counts whole milliseconds; round up so we never give up early.
    let millis = ((micros + 999) / 1000).min(i32::MAX as i128) as i32;
    if millis == 0 {
        if !acquire(LockSpace::Named, name, true) {
            timed_out(name, &timeout);
        }
        return;
    }
    // The lock manager's own timer: the wait stays a real, fair, deadlock-detected wait.
    // SAFETY: LockTimeout is the lock_timeout setting, read when a lock wait begins; we set
    // it for our one wait and put the session's value back whatever happens.
    let saved = unsafe { pg_sys::LockTimeout };
    PgTryBuilder::new(|| {
        unsafe { pg_sys::LockTimeout = millis };
        acquire(LockSpace::Named, name, false);
    })
    .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| {
        timed_out(name, &timeout)
    })
    .finally(|| unsafe { pg_sys::LockTimeout = saved })
    .execute();
}

fn timed_out(name: &str, timeout: &Interval) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("could not lock \"{name}\" within {timeout}"),
        format!("another transaction holds it; see SELECT * FROM exactly.lock_status('{name}')"),
    )
}

/// Lock `name` until the end of the transaction if no other transaction holds it.
#[pg_extern(volatile, parallel_unsafe)]
fn try_lock(name: Option<&str>) -> bool {
    let name = required(name, "name");
    non_empty(name, "name", "'third_party_sync'");
    acquire(LockSpace::Named, name, true)
}

/// The sessions holding (granted) and waiting for `name`, from pg_locks and pg_stat_activity.
#[pg_extern(volatile, parallel_safe)]
fn lock_status(
    name: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(granted, Option<bool>),
        name!(waiting_since, Option<TimestampWithTimeZone>),
        name!(xact_start, Option<TimestampWithTimeZone>),
        name!(state, Option<String>),
        name!(query, Option<String>),
    ),
> {
    let name = required(name, "name");
    let tag = tag(LockSpace::Named, name);
    let rows = Spi::connect_mut(|client| {
        let args = [
            pg_sys::Oid::from(tag.locktag_field1).into(),
            pg_sys::Oid::from(tag.locktag_field2).into(),
            pg_sys::Oid::from(tag.locktag_field3).into(),
        ];
        spi_plans::run(client, STATUS, &[OID, OID, OID], &args)
            .map(|row| {
                (
                    row.get(1).unwrap(),
                    row.get(2).unwrap(),
                    row.get(3).unwrap(),
                    row.get(4).unwrap(),
                    row.get(5).unwrap(),
                    row.get(6).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_held_lock_is_shown_and_taken_again_by_its_holder() {
        Spi::run("SELECT exactly.lock('sync')").unwrap();
        assert_eq!(Spi::get_one::<bool>("SELECT exactly.try_lock('sync')"), Ok(Some(true)));
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT pid = pg_backend_pid() AND granted FROM exactly.lock_status('sync')"
            ),
            Ok(Some(true))
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM exactly.lock_status('other')"),
            Ok(Some(0))
        );
    }

    #[pg_test(error = "timeout -00:00:01 is negative")]
    fn a_negative_timeout_is_refused() {
        Spi::run("SELECT exactly.lock('sync', '-1 second')").unwrap();
    }
}
