//! Leases with fencing tokens (docs/coordination.md).
//!
//! A lease is a row of `exactly.leases`, so it outlives the transaction and the connection
//! that took it: a worker acquires in one short transaction, calls the third party with no
//! transaction open, and renews, writes and releases in others, from any pooled connection.
//!
//! Fencing: a grant and a `check_fence` of the same name take the name's lock (space
//! `Lease`; exclusive and shared) to the end of their transactions, and a grant increments
//! the fence under it. A fenced write that checks after a newer grant committed sees the
//! newer fence and is refused; one that checks before makes the newer grant wait until the
//! write's transaction has ended. So a newer holder never starts while a stale holder's
//! accepted write is still open. The lease space sorts first in our lock order, so a fenced
//! transaction may go on to take any other lock of ours.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::errors::{non_empty, not_too_long, positive, raise, required};
use crate::spi_plans::{self, types::*};
use crate::xact_lock::{self, LockSpace};

/// Longest name: names key exactly.leases and exactly.slots, whose index entries must fit
/// a third of a page whatever the name (a random name does not compress).
pub const MAX_NAME_BYTES: usize = 1000;

const LIVE: &str = "SELECT 1 FROM exactly.leases l
    WHERE l.name OPERATOR(pg_catalog.=) $1 AND l.token IS NOT NULL
      AND l.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()";
/// Grant the lease unless it is live. Under REPEATABLE READ a lease granted after the
/// snapshot makes the conflict update fail with 40001 rather than grant it twice.
const GRANT: &str = "INSERT INTO exactly.leases AS l (name, token, fence, granted_at, expires_at)
    VALUES ($1, pg_catalog.gen_random_uuid(), 1, pg_catalog.clock_timestamp(),
            pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $2)
    ON CONFLICT (name) DO UPDATE
    SET token = excluded.token, fence = l.fence OPERATOR(pg_catalog.+) 1,
        granted_at = excluded.granted_at, expires_at = excluded.expires_at
    WHERE l.token IS NULL OR l.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
    RETURNING l.token, l.fence";
const RENEW: &str = "UPDATE exactly.leases l
    SET expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $3
    WHERE l.name OPERATOR(pg_catalog.=) $1 AND l.token OPERATOR(pg_catalog.=) $2
      AND l.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";
const RELEASE: &str = "UPDATE exactly.leases l SET token = NULL, expires_at = NULL
    WHERE l.name OPERATOR(pg_catalog.=) $1 AND l.token OPERATOR(pg_catalog.=) $2
      AND l.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    RETURNING 1";
const FENCE: &str = "SELECT l.fence FROM exactly.leases l WHERE l.name OPERATOR(pg_catalog.=) $1";
/// The same, for a transaction whose snapshot may predate the newest grant: locking the
/// row fails with 40001 when it changed after the snapshot.
const FENCE_LOCKED: &str =
    "SELECT l.fence FROM exactly.leases l WHERE l.name OPERATOR(pg_catalog.=) $1 FOR SHARE";

/// Grant the lease on `name` for `ttl`: one row (token, fence), or none while another
/// holder's lease is live (never waits for it).
#[pg_extern(volatile, parallel_unsafe)]
fn acquire_lease(
    name: Option<&str>,
    ttl: Option<Interval>,
) -> TableIterator<'static, (name!(token, Uuid), name!(fence, i64))> {
    let name = lease_name(name);
    let ttl = positive(ttl, "ttl");
    let granted = Spi::connect_mut(|client| {
        // the common case under contention: answer without queueing on the name's lock
        if !spi_plans::run_as_owner(client, LIVE, &[TEXT], &[name.into()]).is_empty() {
            return None;
        }
        // waits for fenced writes of the name still open (see the module's comment)
        xact_lock::lock_exclusive_in_order(LockSpace::Lease, name);
        let rows = spi_plans::run_as_owner(client, GRANT, &[TEXT, INTERVAL], &[name.into(), ttl.into()]);
        rows.into_iter().next().map(|row| (row.get::<Uuid>(1).unwrap().unwrap(), row.get::<i64>(2).unwrap().unwrap()))
    });
    TableIterator::new(granted)
}

/// Give a live lease `ttl` more from now; false when it has ended.
#[pg_extern(volatile, parallel_unsafe)]
fn renew_lease(name: Option<&str>, token: Option<Uuid>, ttl: Option<Interval>) -> bool {
    let name = lease_name(name);
    let token = required(token, "token");
    let ttl = positive(ttl, "ttl");
    Spi::connect_mut(|client| {
        !spi_plans::run_as_owner(client, RENEW, &[TEXT, UUID, INTERVAL], &[name.into(), token.into(), ttl.into()])
            .is_empty()
    })
}

/// End a live lease now; false when it had ended already.
#[pg_extern(volatile, parallel_unsafe)]
fn release_lease(name: Option<&str>, token: Option<Uuid>) -> bool {
    let name = lease_name(name);
    let token = required(token, "token");
    Spi::connect_mut(|client| {
        !spi_plans::run_as_owner(client, RELEASE, &[TEXT, UUID], &[name.into(), token.into()]).is_empty()
    })
}

/// Refuse (55006) the calling transaction's write when `name` was granted again after the
/// grant of `fence`; otherwise hold off every new grant of `name` until the transaction ends.
#[pg_extern(volatile, parallel_unsafe)]
fn check_fence(name: Option<&str>, fence: Option<i64>) {
    let name = lease_name(name);
    let fence = required(fence, "fence");
    xact_lock::lock_shared_in_order(LockSpace::Lease, name);
    // SAFETY: reads the isolation level of the running transaction.
    let snapshot_per_transaction = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let newest: Option<i64> = Spi::connect_mut(|client| {
        let sql = if snapshot_per_transaction { FENCE_LOCKED } else { FENCE };
        let rows = spi_plans::run_as_owner(client, sql, &[TEXT], &[name.into()]);
        rows.into_iter().next().map(|row| row.get::<i64>(1).unwrap().unwrap())
    });
    match newest {
        Some(newest) if newest == fence => {}
        Some(newest) if newest > fence => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("lease \"{name}\" was granted again: fence {fence} is stale, the newest is {newest}"),
            "another holder has the lease now; drop this work (its write is refused)",
        ),
        newest => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "fence {fence} was never granted for lease \"{name}\" (the newest is {})",
                newest.map_or("none".to_string(), |n| n.to_string())
            ),
            "pass the fence that exactly.acquire_lease returned",
        ),
    }
}

fn lease_name(name: Option<&str>) -> &str {
    let name = required(name, "name");
    non_empty(name, "name", "'third_party_sync'");
    not_too_long(name, "name", MAX_NAME_BYTES);
    name
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The fence of a query that returns a grant's row or none.
    fn fence(sql: &str) -> Option<i64> {
        Spi::get_one::<i64>(&format!("SELECT ({sql})")).unwrap()
    }

    #[pg_test]
    fn a_live_lease_is_granted_once_and_its_fence_grows_with_every_grant() {
        assert_eq!(fence("SELECT fence FROM exactly.acquire_lease('a', '1 minute')"), Some(1));
        assert_eq!(fence("SELECT fence FROM exactly.acquire_lease('a', '1 minute')"), None);
        Spi::run("SELECT exactly.release_lease('a', token) FROM exactly.leases WHERE name = 'a'").unwrap();
        assert_eq!(fence("SELECT fence FROM exactly.acquire_lease('a', '1 minute')"), Some(2));
        Spi::run("SELECT exactly.check_fence('a', 2)").unwrap();
        // another name has its own fences
        assert_eq!(fence("SELECT fence FROM exactly.acquire_lease('b', '1 minute')"), Some(1));
    }

    #[pg_test]
    fn an_expired_lease_is_granted_again_and_renewing_it_is_too_late() {
        Spi::run("SELECT exactly.acquire_lease('a', '1 ms')").unwrap();
        Spi::run("SELECT pg_sleep(0.01)").unwrap();
        let token = Spi::get_one::<pgrx::Uuid>("SELECT token FROM exactly.leases").unwrap().unwrap();
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT exactly.renew_lease('a', $1, '1 minute')", &[token.into()]).unwrap(),
            Some(false)
        );
        assert_eq!(fence("SELECT fence FROM exactly.acquire_lease('a', '1 minute')"), Some(2));
    }

    #[pg_test(error = "lease \"a\" was granted again: fence 1 is stale, the newest is 2")]
    fn a_stale_fence_is_refused() {
        Spi::run("SELECT exactly.acquire_lease('a', '1 ms')").unwrap();
        Spi::run("SELECT pg_sleep(0.01)").unwrap();
        Spi::run("SELECT exactly.acquire_lease('a', '1 minute')").unwrap();
        Spi::run("SELECT exactly.check_fence('a', 1)").unwrap();
    }

    #[pg_test(error = "ttl 00:00:00 is not positive")]
    fn a_zero_ttl_is_refused() {
        Spi::run("SELECT exactly.acquire_lease('a', '0 s')").unwrap();
    }
}
