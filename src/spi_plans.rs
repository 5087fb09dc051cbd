//! Statements prepared once per backend and kept, as PL/pgSQL keeps its plans.
//!
//! An unprepared statement sent through SPI on every call is parsed and planned every
//! time; that alone made an early prototype slower than the equivalent PL/pgSQL. A kept
//! plan is revalidated by the plan cache when a table it uses changes, so it never goes
//! stale; it lives as long as the backend, which is what `SPI_keepplan` is for.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, &'static OwnedPreparedStatement>> =
        RefCell::new(HashMap::new());
}

/// `run` as the extension's owner: for statements on pg_exactly's own tables, which only
/// its functions write (see `privileges`).
pub fn run_as_owner<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    crate::privileges::as_owner(|| run(client, sql, types, args))
}

/// `run_as_owner` with the plan cache told to use the statement's generic plan. Left to
/// itself it re-plans a statement on every call when it estimates the generic plan costlier
/// than the custom ones, as it does for `= ANY ($1)` over an array of unknown length: that
/// planning was a sixth of a transfer's CPU. For statements whose best plan does not depend
/// on their parameters' values.
pub fn run_as_owner_generic<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    /// Puts the session's setting back however the statement ends (an error unwinds).
    struct Restore(std::ffi::c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a GUC variable of this backend, restored to the value we found.
            unsafe { pg_sys::plan_cache_mode = self.0 };
        }
    }
    // SAFETY: as above; only GetCachedPlan reads it, within this statement.
    let _restore = Restore(unsafe { pg_sys::plan_cache_mode });
    unsafe {
        pg_sys::plan_cache_mode = pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as std::ffi::c_int
    };
    run_as_owner(client, sql, types, args)
}

/// Run `sql` (a statement with `$n` parameters of `types`) through its kept plan,
/// preparing it on first use in this backend, with the caller's rights. Every name in
/// `sql` is schema-qualified, operators included, so whatever the caller's search_path,
/// no object anyone creates anywhere is resolved in our statements.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    types: &[PgOid],
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let plan = match PLANS.with(|plans| plans.borrow().get(sql).copied()) {
        Some(plan) => plan,
        None => {
            let prepared = client
                .prepare_mut(sql, types)
                .unwrap_or_else(|e| panic!("preparing {sql}: {e}"))
                .keep();
            // Leaked on purpose: kept plans live for the backend's lifetime, and the map
            // hands out &'static so a statement that re-enters us (a trigger calling one of
            // our functions) never finds the map borrowed.
            let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared));
            PLANS.with(|plans| plans.borrow_mut().insert(sql, plan));
            plan
        }
    };
    client
        .update(plan, None, args)
        .unwrap_or_else(|e| panic!("running {sql}: {e}"))
}

/// A datum we built (or were passed) as a statement argument. Unlike a `DatumWithOid` made
/// from a Rust value, the same datum can be passed again when a statement is retried.
///
/// # Safety
/// `datum` must be a valid value of type `type_oid` that outlives the statement.
pub unsafe fn arg(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> DatumWithOid<'static> {
    DatumWithOid::new(datum, type_oid)
}

/// A copy in `context` of a varlena datum of an SPI result (a row, a jsonb): SPI's memory
/// ends with the connection, the copy with `context`.
///
/// # Safety
/// `datum` is a varlena value.
pub unsafe fn copy_out(context: pg_sys::MemoryContext, datum: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: as the caller says; the copy is made whole (detoasted) in `context`.
    unsafe {
        pgrx::PgMemoryContexts::For(context)
            .switch_to(|_| pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr())))
    }
}

/// A row of one of pg_exactly's tables, returned by a function declared `RETURNS
/// exactly.<table>`: the composite datum a statement returned (`SELECT t FROM ...`), copied
/// out of SPI's memory and handed to the server as is. (pgrx's composite wrapper takes a
/// tuple-descriptor reference per row, which makes a million-row result quadratic.)
macro_rules! table_row {
    ($name:ident, $sql_type:literal) => {
        pub struct $name(pgrx::pg_sys::Datum);

        impl $name {
            /// A copy in `context` of the composite datum in column `ordinal` of the current row.
            pub fn copy(
                context: pgrx::pg_sys::MemoryContext,
                rows: &pgrx::spi::SpiTupleTable<'_>,
                ordinal: usize,
            ) -> $name {
                let datum = rows.get_datum_by_ordinal(ordinal).unwrap().expect("a row");
                // SAFETY: a composite (varlena) datum of the SPI result.
                $name(unsafe { $crate::spi_plans::copy_out(context, datum) })
            }
        }

        impl pgrx::IntoDatum for $name {
            fn into_datum(self) -> Option<pgrx::pg_sys::Datum> {
                Some(self.0)
            }

            fn type_oid() -> pgrx::pg_sys::Oid {
                pgrx::pg_sys::RECORDOID
            }
        }

        // SAFETY: the datum is a composite in memory that outlives the call (see `copy`).
        unsafe impl pgrx::callconv::BoxRet for $name {
            unsafe fn box_into<'fcx>(
                self,
                fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
            ) -> pgrx::datum::Datum<'fcx> {
                unsafe { fcinfo.return_raw_datum(self.0) }
            }
        }

        pgrx::impl_sql_translatable!($name, $sql_type);
    };
}
pub(crate) use table_row;

/// The parameter types our statements use, named once.
pub mod types {
    use pgrx::pg_sys::PgOid;
    use pgrx::PgBuiltInOids;

    pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
    pub const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
    pub const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);
    pub const INTERVAL: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALOID);
}
