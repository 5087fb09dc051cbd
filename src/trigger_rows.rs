//! What our trigger functions share: finding the columns their arguments name, and reading
//! a row's value as text whatever the column's type.

use std::num::NonZeroUsize;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::raise;

/// The columns of the trigger's table, in attribute-number order (attno 1 at index 0).
pub fn attributes<'a>(trigger: &PgTrigger<'a>) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: the trigger manager hands us the relation, open and locked, with its descriptor.
    unsafe {
        let tupdesc = (*trigger.trigger_data().tg_relation).rd_att;
        (*tupdesc).attrs.as_slice((*tupdesc).natts as usize)
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
