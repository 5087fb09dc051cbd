//! What our trigger functions share: finding the columns their arguments name, and reading
//! a row's value as text whatever the column's type.

use std::num::NonZeroUsize;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// What our trigger functions do with the trigger manager's call: refuse any other caller
/// (`SELECT exactly.assign_invoice_number()` is 39P01, not a crash), run `body`, and hand
/// the row it returns back. Declared by hand in sql/ rather than with `#[pg_trigger]`, whose
/// wrapper panics (XX000) when it is not called by the trigger manager.
///
/// # Safety
/// `fcinfo` is the server's call of a trigger function of ours.
pub unsafe fn entry(
    fcinfo: pg_sys::FunctionCallInfo,
    function: &str,
    usage: &str,
    body: impl for<'a> FnOnce(
        &'a PgTrigger<'a>,
    ) -> Result<
        Option<PgHeapTuple<'a, pgrx::AllocatedByRust>>,
        pgrx::datum::TryFromDatumError,
    >,
) -> pg_sys::Datum {
    // SAFETY: the server passes a valid fcinfo; from_fcinfo checks it is a trigger call.
    let Ok(trigger) = (unsafe { PgTrigger::from_fcinfo(&*fcinfo) }) else {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            format!("{function} is a trigger function: it can only be called by a trigger"),
            usage,
        )
    };
    let row = body(&trigger).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("{function} could not write the row of \"{}\": {e}", trigger.table_name().unwrap_or_default()),
            usage,
        )
    });
    // The trigger protocol returns the row, or a null pointer (never the isnull flag).
    row.and_then(|row| row.into_trigger_datum()).unwrap_or(pg_sys::Datum::from(0))
}

/// The columns of the trigger's table, in attribute-number order (attno 1 at index 0).
pub fn attributes<'a>(trigger: &PgTrigger<'a>) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: the trigger manager hands us the relation, open and locked, with its descriptor.
    unsafe { descriptor_attributes((*trigger.trigger_data().tg_relation).rd_att) }
}

/// The attributes of a tuple descriptor, in attribute-number order.
///
/// # Safety
/// `tupdesc` must be a valid descriptor that outlives the returned slice.
pub unsafe fn descriptor_attributes<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: a descriptor's attributes lie in one array of natts.
    unsafe {
        // PostgreSQL 18 put an array of compact attributes first; its accessor finds the rest.
        #[cfg(feature = "pg18")]
        let first = pg_sys::TupleDescAttr(tupdesc, 0).cast_const();
        #[cfg(not(feature = "pg18"))]
        let first = (*tupdesc).attrs.as_ptr();
        std::slice::from_raw_parts(first, (*tupdesc).natts as usize)
    }
}

/// The attribute number and type of column `name` of the trigger's table, or an error that
/// shows `usage`.
pub fn column(trigger: &PgTrigger, name: &str, usage: &str) -> (NonZeroUsize, pg_sys::Oid, i32) {
    attributes(trigger)
        .iter()
        .enumerate()
        .find(|(_, att)| !att.attisdropped && att.name() == name)
        .map(|(i, att)| {
            (
                NonZeroUsize::new(i + 1).unwrap(),
                att.atttypid,
                att.atttypmod,
            )
        })
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column \"{name}\" of table \"{}\" does not exist",
                    trigger.table_name().unwrap()
                ),
                usage,
            )
        })
}

/// `tuple`'s value in column `attno` as text (its type's output function), None when NULL.
pub fn column_as_text(
    trigger: &PgTrigger,
    tuple: *mut pg_sys::HeapTupleData,
    attno: NonZeroUsize,
) -> Option<String> {
    // SAFETY: `tuple` is one of the trigger's rows, described by the relation's descriptor.
    unsafe {
        let tupdesc = (*trigger.trigger_data().tg_relation).rd_att;
        let datum = pgrx::heap_getattr_raw(tuple, attno, tupdesc)?;
        let type_oid = attributes(trigger)[attno.get() - 1].atttypid;
        let (mut output, mut varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, datum);
        Some(
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned(),
        )
    }
}
