//! One way to refuse bad input: an ERROR with a SQLSTATE, a message that names the
//! bad value, and a hint that says what to do instead.

use pgrx::datum::{AnyNumeric, Interval};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raise an ERROR. Nothing after it runs; the statement (and any change it made) is undone.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    let message: String = message.into();
    ErrorReport::new(code, message, "pg_exactly")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Refuse a NULL argument: every argument of ours means something, none is optional by NULL.
#[track_caller]
pub fn required<T>(value: Option<T>, argument: &str) -> T {
    match value {
        Some(v) => v,
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("argument \"{argument}\" must not be NULL"),
            format!("pass a value for \"{argument}\""),
        ),
    }
}

/// Refuse an empty name (a tenant, an account): it would name nothing.
#[track_caller]
pub fn non_empty(value: &str, argument: &str, example: &str) {
    if value.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must not be an empty string"),
            format!("name the {argument}, e.g. {example}"),
        );
    }
}

/// Refuse a name longer than `max` bytes: names are keys of a state table's index, and an
/// index entry has a size limit.
#[track_caller]
pub fn not_too_long(value: &str, argument: &str, max: usize) {
    if value.len() > max {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} is {} bytes long; at most {max} are allowed", value.len()),
            format!("use a shorter {argument}, e.g. a hash of the long one"),
        );
    }
}

/// A required interval that must be more than zero (a ttl, a lease).
pub fn positive(value: Option<Interval>, argument: &str) -> Interval {
    let value = required(value, argument);
    if value.as_micros() <= 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} {value} is not positive"),
            format!("pass how long it lasts, e.g. {argument} => '30 seconds'"),
        );
    }
    value
}

/// Refuse NaN and Infinity where a number is added to something: the sum would be lost.
#[track_caller]
pub fn finite(value: &AnyNumeric, argument: &str) {
    // SAFETY: a numeric datum of our own copy of the value, alive for the call.
    if !unsafe { is_finite(value.clone().into_datum().unwrap()) } {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must be a finite number, not {value}"),
            "NaN and Infinity cannot be added: the sum would be lost",
        );
    }
}

/// Whether a numeric is neither NaN nor infinite.
///
/// # Safety
/// `numeric` is a numeric datum.
pub unsafe fn is_finite(numeric: pg_sys::Datum) -> bool {
    // SAFETY: as the caller says.
    unsafe {
        let numeric = pg_sys::pg_detoast_datum_packed(numeric.cast_mut_ptr()).cast();
        !pg_sys::numeric_is_nan(numeric) && !pg_sys::numeric_is_inf(numeric)
    }
}
