//! Whose rights pg_exactly's statements run with.
//!
//! pg_exactly's state tables (schema `exactly`) are written only by its functions: an
//! application role gets `SELECT` on them from `exactly.grant_usage` and no way to write
//! them around the functions, so no one can rewind an invoice counter or rewrite a ledger
//! consistently enough to fool `verify_ledger`. The functions write them as the extension's
//! owner, the way PostgreSQL's foreign-key triggers run their queries as the table's owner:
//! the user id is switched around exactly those statements, with
//! `SECURITY_RESTRICTED_OPERATION` so nothing run inside them can change the session. The
//! caller's own tables are always touched as the caller, with the caller's privileges and
//! row-level security.

use std::cell::Cell;

use pgrx::pg_sys;

thread_local! {
    /// The extension's owner, read once per backend (an extension's owner never changes
    /// while it is installed).
    static OWNER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// Run `work` (statements on pg_exactly's own tables) as the extension's owner; the caller's
/// user id and security context come back whatever happens, an ERROR included.
pub fn as_owner<R>(work: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets this backend's current user id, as ri_triggers.c does; the
    // guard puts the caller's back when `work` returns or unwinds.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    let _restore = RestoreUser { user, context };
    let restricted = pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
        | pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    unsafe { pg_sys::SetUserIdAndSecContext(owner, context | restricted) };
    work()
}

struct RestoreUser {
    user: pg_sys::Oid,
    context: i32,
}

impl Drop for RestoreUser {
    fn drop(&mut self) {
        // SAFETY: the values GetUserIdAndSecContext gave us.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

/// `pg_extension.extowner` of pg_exactly.
fn extension_owner() -> pg_sys::Oid {
    if let Some(owner) = OWNER.get() {
        return owner;
    }
    // SAFETY: pg_extension has no syscache; it is read by its OID index, as extension.c does,
    // under a share lock, and the tuple is read before the scan ends.
    let owner = unsafe {
        let extension = pg_sys::get_extension_oid(c"pg_exactly".as_ptr(), false);
        let catalog = pg_sys::table_open(
            pg_sys::ExtensionRelationId,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        let mut key = std::mem::zeroed::<pg_sys::ScanKeyData>();
        pg_sys::ScanKeyInit(
            &mut key,
            pg_sys::Anum_pg_extension_oid as i16,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(extension),
        );
        let scan = pg_sys::systable_beginscan(
            catalog,
            pg_sys::Oid::from(pg_sys::ExtensionOidIndexId),
            true,
            std::ptr::null_mut(),
            1,
            &mut key,
        );
        let tuple = pg_sys::systable_getnext(scan);
        assert!(!tuple.is_null(), "pg_exactly's pg_extension row is missing");
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_extension>(tuple);
        let owner = (*form).extowner;
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(catalog, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        owner
    };
    OWNER.set(Some(owner));
    owner
}
