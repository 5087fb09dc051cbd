//! Gapless invoice numbers (seed 001), per tenant and per period, in the tenant's template,
//! drawn when the invoice is inserted or when its transaction commits.
//!
//! `exactly.invoice_sequences` holds one row per tenant: how its numbers look (prefix,
//! width, template), when they start again (reset, fiscal_year_start) and, for a numbering
//! that never resets, its counter (`next_value`). A numbering that resets keeps one counter
//! row per period in `exactly.invoice_periods` (the period named by its first day). Drawing
//! numbers updates a counter row, which stays locked to the end of the transaction: a
//! rolled-back draw rolls the counter back with it and the number is handed out again.
//! Gapless and duplicate-free follow from the row lock alone; the fair queue in `xact_lock`
//! in front of it (one per counter row: the tenant's name, or the name and the period) is
//! there for speed, and gives each period its own line.

use std::cell::RefCell;
use std::collections::HashSet;
use std::num::NonZeroUsize;

use pgrx::datum::Date;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, AllocatedByRust, PgBuiltInOids};

use crate::errors::{non_empty, raise, required};
use crate::invoice_templates::{Day, Reset, Template, DEFAULT};
use crate::spi_plans;
use crate::trigger_rows::{self, column, column_as_text};
use crate::user_tables::{self, Column, UserTable};
use crate::xact_lock::{lock_exclusive_in_order, LockSpace};

/// Most numbers `next_invoice_numbers` hands out in one call (the set is built in memory).
const MAX_NUMBERS_PER_CALL: i32 = 1_000_000;
/// A bigint has at most 19 digits, so a wider zero-padding would only add zeros.
const MAX_WIDTH: i32 = 19;

const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
const DATE: PgOid = PgOid::BuiltIn(PgBuiltInOids::DATEOID);

/// Draw `$2` numbers from tenant `$1`'s own counter, if its numbering never resets; the
/// guard keeps `next_value` within bigint. (An `OPERATOR()` has neither the precedence nor
/// the associativity of its symbol: where two meet, parentheses say which goes first.)
const DRAW: &str = "UPDATE exactly.invoice_sequences \
     SET next_value = next_value OPERATOR(pg_catalog.+) $2 \
     WHERE tenant OPERATOR(pg_catalog.=) $1 AND reset OPERATOR(pg_catalog.=) 'never' \
       AND next_value OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) $2) \
     RETURNING prefix, width, format, fiscal_year_start, next_value OPERATOR(pg_catalog.-) $2";
/// The same from the counter of period `$2`.
const DRAW_FROM_PERIOD: &str = "UPDATE exactly.invoice_periods \
     SET next_value = next_value OPERATOR(pg_catalog.+) $3 \
     WHERE tenant OPERATOR(pg_catalog.=) $1 AND period OPERATOR(pg_catalog.=) $2 \
       AND next_value OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) $3) \
     RETURNING next_value OPERATOR(pg_catalog.-) $3";
const NUMBERING: &str = "SELECT prefix, width, format, reset, fiscal_year_start, next_value \
     FROM exactly.invoice_sequences WHERE tenant OPERATOR(pg_catalog.=) $1";
const PERIOD_NEXT_VALUE: &str = "SELECT next_value FROM exactly.invoice_periods \
     WHERE tenant OPERATOR(pg_catalog.=) $1 AND period OPERATOR(pg_catalog.=) $2";
const HAS_PERIODS: &str = "SELECT 1 FROM exactly.invoice_periods WHERE tenant OPERATOR(pg_catalog.=) $1 LIMIT 1";
const CREATE_ON_FIRST_USE: &str = "INSERT INTO exactly.invoice_sequences (tenant, prefix) \
     VALUES ($1, $1) ON CONFLICT (tenant) DO NOTHING";
const CREATE_PERIOD: &str = "INSERT INTO exactly.invoice_periods (tenant, period) \
     VALUES ($1, $2) ON CONFLICT (tenant, period) DO NOTHING";
const DEFINE: &str = "INSERT INTO exactly.invoice_sequences \
         (tenant, prefix, width, format, reset, fiscal_year_start) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant) \
     DO UPDATE SET prefix = excluded.prefix, width = excluded.width, format = excluded.format, \
         reset = excluded.reset, fiscal_year_start = excluded.fiscal_year_start";
/// Continue at `$2`, unless a number at or above it was handed out already.
const SET_NEXT: &str = "UPDATE exactly.invoice_sequences SET next_value = $2 \
     WHERE tenant OPERATOR(pg_catalog.=) $1 AND next_value OPERATOR(pg_catalog.<=) $2 RETURNING 1";
const SET_NEXT_IN_PERIOD: &str = "INSERT INTO exactly.invoice_periods AS p (tenant, period, next_value) \
     VALUES ($1, $2, $3) ON CONFLICT (tenant, period) DO UPDATE SET next_value = excluded.next_value \
     WHERE p.next_value OPERATOR(pg_catalog.<=) excluded.next_value RETURNING 1";

/// How a tenant's numbers look and when they start again.
struct Numbering {
    prefix: String,
    width: usize,
    template: Template,
    reset: Reset,
    fiscal_year_start: u8,
}

impl Numbering {
    /// From the table's columns; values edited by hand outside what define allows are read
    /// as the closest thing it allows rather than trusted.
    fn from_row(prefix: String, width: i32, format: Option<String>, reset: Option<String>, fiscal_year_start: i32) -> Numbering {
        Numbering {
            prefix,
            width: width.clamp(1, MAX_WIDTH) as usize,
            template: format
                .and_then(|f| Template::parse(&f).ok())
                .unwrap_or_else(|| Template::parse(DEFAULT).unwrap()),
            reset: reset.as_deref().and_then(Reset::parse).unwrap_or(Reset::Never),
            fiscal_year_start: fiscal_year_start.clamp(1, 12) as u8,
        }
    }
}

/// A contiguous block of numbers drawn for one tenant and date.
struct Block {
    numbering: Numbering,
    tenant: String,
    date: Day,
    first: i64,
}

impl Block {
    /// The number `offset` of the block, in the tenant's template. The default template
    /// with an empty prefix prints the bare number, as 0.2 did.
    fn format(&self, offset: i64) -> String {
        let n = &self.numbering;
        let number = self.first + offset;
        if n.prefix.is_empty() && n.template.is_default() {
            return format!("{number:0width$}", width = n.width);
        }
        n.template.render(&n.prefix, &self.tenant, number, n.width, self.date, n.fiscal_year_start)
    }
}

thread_local! {
    /// Tenants this backend last found to reset by period: their draws skip the look at the
    /// tenant's own counter. Only a hint: a wrong one costs a statement, never a number.
    static RESETTING: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
}

/// The name of a counter's queue lock: the tenant's, or with a period the tenant, a NUL
/// (which no tenant name holds) and the period, so it sorts right after the tenant's.
fn lock_name(tenant: &str, period: Option<Day>) -> Vec<u8> {
    let mut name = tenant.as_bytes().to_vec();
    if let Some(period) = period {
        name.push(0);
        name.extend_from_slice(period.iso().as_bytes());
    }
    name
}

/// A date as a `Day`; refused when infinite.
fn day_of(date: Date, argument: &str) -> Day {
    if !date.is_finite() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must be a finite date, not {date}"),
            "pass the invoice's date, e.g. '2026-12-01'",
        );
    }
    Day { year: date.year(), month: date.month(), day: date.day() }
}

/// Today, in the session's time zone (as `current_date`).
fn today() -> Day {
    // SAFETY: the transaction's start date, as current_date computes it.
    let today = unsafe { Date::from_pg_epoch_days(pg_sys::GetSQLCurrentDate()) };
    day_of(today, "current_date")
}

fn date_of(day: Day) -> Date {
    Date::new(day.year, day.month, day.day).expect("a day of a valid date")
}

/// Draw `count` consecutive numbers for `tenant` dated `date`, creating the tenant on first
/// use.
fn draw(tenant: &str, count: i64, date: Day) -> Block {
    non_empty(tenant, "tenant", "'11'");
    Spi::connect_mut(|client| {
        if !RESETTING.with(|r| r.borrow().contains(tenant)) {
            lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, None));
            if let Some(block) = draw_from_tenant(client, tenant, count, date) {
                return block;
            }
        }
        // No row yet, a numbering that resets by period, or no numbers left.
        let (mut numbering, _) = match read_numbering(client, tenant) {
            Some(found) => found,
            None => {
                // We hold the tenant's queue lock (no row: no hint), and every function of
                // ours that writes the row takes it first, so nothing of ours moves in between.
                spi_plans::run_as_owner(client, CREATE_ON_FIRST_USE, &[TEXT], &[tenant.into()]);
                read_numbering(client, tenant).unwrap_or_else(|| changed_concurrently(tenant))
            }
        };
        if date.period(numbering.reset, numbering.fiscal_year_start).is_none() {
            RESETTING.with(|r| r.borrow_mut().remove(tenant));
            lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, None));
            if let Some(block) = draw_from_tenant(client, tenant, count, date) {
                return block;
            }
            // Too few left, or a redefinition committed while we waited for the lock moved
            // the numbering to periods; we hold the tenant's lock now, so it cannot move again.
            let (now, next) = read_numbering(client, tenant).unwrap_or_else(|| changed_concurrently(tenant));
            if now.reset == Reset::Never {
                too_few_left(tenant, next, count);
            }
            numbering = now;
        }
        let period = date.period(numbering.reset, numbering.fiscal_year_start).expect("a numbering that resets");
        RESETTING.with(|r| r.borrow_mut().insert(tenant.to_string()));
        lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, Some(period)));
        let first = draw_from_period(client, tenant, period, count).unwrap_or_else(|| {
            let args = [tenant.into(), date_of(period).into()];
            let rows = spi_plans::run_as_owner(client, PERIOD_NEXT_VALUE, &[TEXT, DATE], &args);
            if !rows.is_empty() {
                too_few_left(tenant, rows.first().get_one::<i64>().unwrap().unwrap(), count);
            }
            spi_plans::run_as_owner(client, CREATE_PERIOD, &[TEXT, DATE], &args);
            draw_from_period(client, tenant, period, count).unwrap_or_else(|| changed_concurrently(tenant))
        });
        Block { numbering, tenant: tenant.to_string(), date, first }
    })
}

/// Move a numbering that never resets on by `count`; None when the tenant has no row,
/// resets by period, or has too few numbers left.
fn draw_from_tenant(client: &mut SpiClient<'_>, tenant: &str, count: i64, date: Day) -> Option<Block> {
    let rows = spi_plans::run_as_owner(client, DRAW, &[TEXT, INT8], &[tenant.into(), count.into()]);
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    let numbering = Numbering::from_row(
        row.get::<String>(1).unwrap()?,
        row.get::<i32>(2).unwrap()?,
        row.get::<String>(3).unwrap(),
        None,
        row.get::<i32>(4).unwrap()?,
    );
    Some(Block { numbering, tenant: tenant.to_string(), date, first: row.get::<i64>(5).unwrap()? })
}

/// Move period `period`'s counter on by `count`; None when it has no row yet or too few
/// numbers left.
fn draw_from_period(client: &mut SpiClient<'_>, tenant: &str, period: Day, count: i64) -> Option<i64> {
    let args = [tenant.into(), date_of(period).into(), count.into()];
    let rows = spi_plans::run_as_owner(client, DRAW_FROM_PERIOD, &[TEXT, DATE, INT8], &args);
    (!rows.is_empty()).then(|| rows.first().get_one::<i64>().unwrap().unwrap())
}

/// The tenant's numbering and its own counter, if it has a row.
fn read_numbering(client: &mut SpiClient<'_>, tenant: &str) -> Option<(Numbering, i64)> {
    let rows = spi_plans::run_as_owner(client, NUMBERING, &[TEXT], &[tenant.into()]);
    if rows.is_empty() {
        return None;
    }
    let row = rows.first();
    let numbering = Numbering::from_row(
        row.get::<String>(1).unwrap()?,
        row.get::<i32>(2).unwrap()?,
        row.get::<String>(3).unwrap(),
        row.get::<String>(4).unwrap(),
        row.get::<i32>(5).unwrap()?,
    );
    Some((numbering, row.get::<i64>(6).unwrap()?))
}

fn too_few_left(tenant: &str, next: i64, count: i64) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        format!(
            "tenant \"{tenant}\" has too few invoice numbers left: the next is {next} and {count} more would pass the bigint maximum"
        ),
        "start a new numbering under another tenant name",
    )
}

/// Only possible when our snapshot cannot see a row another transaction committed
/// (REPEATABLE READ and above), or someone deleted the row behind our back.
fn changed_concurrently(tenant: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!("the invoice sequence of tenant \"{tenant}\" changed concurrently"),
        "retry the transaction",
    )
}

/// The next invoice number of `tenant` (dated `on_date`, default today), e.g. `11-00000001`.
#[pg_extern(volatile, parallel_unsafe)]
fn next_invoice_number(tenant: Option<&str>, on_date: default!(Option<Date>, "NULL")) -> String {
    let date = on_date.map(|d| day_of(d, "on_date")).unwrap_or_else(today);
    draw(required(tenant, "tenant"), 1, date).format(0)
}

/// `n` consecutive invoice numbers of `tenant` (dated `on_date`, default today), in order.
#[pg_extern(volatile, parallel_unsafe)]
fn next_invoice_numbers(
    tenant: Option<&str>,
    n: Option<i32>,
    on_date: default!(Option<Date>, "NULL"),
) -> SetOfIterator<'static, String> {
    let tenant = required(tenant, "tenant");
    let n = required(n, "n");
    if !(1..=MAX_NUMBERS_PER_CALL).contains(&n) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("n must be between 1 and {MAX_NUMBERS_PER_CALL}, not {n}"),
            "draw larger blocks in several calls in one transaction",
        );
    }
    let date = on_date.map(|d| day_of(d, "on_date")).unwrap_or_else(today);
    let block = draw(tenant, i64::from(n), date);
    SetOfIterator::new((0..i64::from(n)).map(move |i| block.format(i)))
}

/// Create `tenant`'s numbering, or change how its numbers look and when they start again.
/// Numbers already drawn keep their text; no counter is touched.
#[pg_extern(volatile, parallel_unsafe)]
fn define_invoice_sequence(
    tenant: Option<&str>,
    prefix: Option<&str>,
    width: default!(Option<i32>, 8),
    format: default!(Option<&str>, "NULL"),
    reset: default!(Option<&str>, "'never'"),
    fiscal_year_start: default!(Option<i32>, 1),
) {
    let tenant = required(tenant, "tenant");
    let prefix = required(prefix, "prefix");
    let width = required(width, "width");
    let reset_name = required(reset, "reset");
    let fiscal_year_start = required(fiscal_year_start, "fiscal_year_start");
    non_empty(tenant, "tenant", "'11'");
    if !(1..=MAX_WIDTH).contains(&width) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("width must be between 1 and {MAX_WIDTH}, not {width}"),
            "width is the number of digits numbers are zero-padded to, e.g. 8 for 11-00000001",
        );
    }
    let Some(reset) = Reset::parse(reset_name) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("reset must be 'never', 'yearly', 'monthly' or 'daily', not '{reset_name}'"),
            "'yearly' starts again every fiscal year (see fiscal_year_start)",
        );
    };
    if !(1..=12).contains(&fiscal_year_start) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("fiscal_year_start must be a month, 1 to 12, not {fiscal_year_start}"),
            "the fiscal year starts on the 1st of that month, e.g. 4 for April",
        );
    }
    let template = Template::parse(format.unwrap_or(DEFAULT)).unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e, "e.g. 'INV-{yyyy}-{number}'")
    });
    if !template.tells_periods_apart(reset, fiscal_year_start as u8) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "template '{}' would print the same number in two periods of reset '{}'",
                format.unwrap_or(DEFAULT),
                reset.name()
            ),
            "put the period in the template: {fy} (or {yyyy} for calendar years) for 'yearly', \
             {yyyy} and {mm} for 'monthly', and {dd} too for 'daily'",
        );
    }
    lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, None));
    RESETTING.with(|r| r.borrow_mut().remove(tenant));
    Spi::connect_mut(|client| {
        // Fiscal years starting in another month would print the years of numbers already
        // handed out again.
        if let Some((old, _)) = read_numbering(client, tenant) {
            let moved = old.reset == Reset::Yearly
                && reset == Reset::Yearly
                && i32::from(old.fiscal_year_start) != fiscal_year_start;
            if moved && !spi_plans::run_as_owner(client, HAS_PERIODS, &[TEXT], &[tenant.into()]).is_empty() {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "tenant \"{tenant}\" has numbered fiscal years starting in month {}: its fiscal year cannot move to month {fiscal_year_start}",
                        old.fiscal_year_start
                    ),
                    "define a new tenant for the new fiscal years",
                );
            }
        }
        let args = [
            tenant.into(),
            prefix.into(),
            width.into(),
            format.into(),
            reset.name().into(),
            fiscal_year_start.into(),
        ];
        spi_plans::run_as_owner(client, DEFINE, &[TEXT, TEXT, INT4, TEXT, TEXT, INT4], &args);
    });
}

/// Continue `tenant`'s numbering (the period of `on_date`, default today) at `next_value`,
/// e.g. after moving from another system; refused when a number at or above it was handed
/// out already.
#[pg_extern(volatile, parallel_unsafe)]
fn set_next_invoice_number(
    tenant: Option<&str>,
    next_value: Option<i64>,
    on_date: default!(Option<Date>, "NULL"),
) {
    let tenant = required(tenant, "tenant");
    let next_value = required(next_value, "next_value");
    non_empty(tenant, "tenant", "'11'");
    if next_value < 1 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("next_value must be 1 or more, not {next_value}"),
            "numbers start at 1",
        );
    }
    let date = on_date.map(|d| day_of(d, "on_date")).unwrap_or_else(today);
    lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, None));
    Spi::connect_mut(|client| {
        let (numbering, next) = read_numbering(client, tenant).unwrap_or_else(|| {
            spi_plans::run_as_owner(client, CREATE_ON_FIRST_USE, &[TEXT], &[tenant.into()]);
            read_numbering(client, tenant).unwrap_or_else(|| changed_concurrently(tenant))
        });
        let period = date.period(numbering.reset, numbering.fiscal_year_start);
        let set = match period {
            None => !spi_plans::run_as_owner(client, SET_NEXT, &[TEXT, INT8], &[tenant.into(), next_value.into()])
                .is_empty(),
            Some(period) => {
                lock_exclusive_in_order(LockSpace::InvoiceTenant, lock_name(tenant, Some(period)));
                let args = [tenant.into(), date_of(period).into(), next_value.into()];
                !spi_plans::run_as_owner(client, SET_NEXT_IN_PERIOD, &[TEXT, DATE, INT8], &args).is_empty()
            }
        };
        if !set {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "tenant \"{tenant}\" has handed out numbers at or above {next_value} already{}",
                    match period {
                        None => format!(" (its next is {next})"),
                        Some(period) => format!(" in the period from {}", period.iso()),
                    }
                ),
                "a numbering only moves forward: pass a number past the last one handed out",
            );
        }
    });
}

const USAGE: &str = "use: CREATE TRIGGER ... BEFORE INSERT ON your_table FOR EACH ROW \
     EXECUTE FUNCTION exactly.assign_invoice_number('tenant_columns', 'number_column'[, 'date_column'])";
const USAGE_AT_COMMIT: &str = "use: CREATE CONSTRAINT TRIGGER ... AFTER INSERT OR UPDATE ON your_table \
     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \
     exactly.assign_invoice_number_at_commit('tenant_columns', 'number_column'[, 'date_column'])";

/// Whether a value of this type prints the same text whatever the session's settings
/// (DateStyle, TimeZone, extra_float_digits, search_path for reg* types): only then may its
/// text name a numbering.
fn text_ignores_settings(type_oid: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups of a column's type; the row type's descriptor is released.
    unsafe {
        let base = pg_sys::getBaseType(type_oid);
        let plain = [
            pg_sys::TEXTOID,
            pg_sys::VARCHAROID,
            pg_sys::BPCHAROID,
            pg_sys::NAMEOID,
            pg_sys::CHAROID,
            pg_sys::INT2OID,
            pg_sys::INT4OID,
            pg_sys::INT8OID,
            pg_sys::NUMERICOID,
            pg_sys::UUIDOID,
            pg_sys::BOOLOID,
        ];
        if plain.contains(&base) {
            return true;
        }
        match pg_sys::get_typtype(base) as u8 {
            b'e' => true,
            b'c' => {
                let desc = pg_sys::lookup_rowtype_tupdesc(base, -1);
                let fields: Vec<pg_sys::Oid> = trigger_rows::descriptor_attributes(desc)
                    .iter()
                    .filter(|att| !att.attisdropped)
                    .map(|att| att.atttypid)
                    .collect();
                pg_sys::DecrTupleDescRefCount(desc);
                fields.into_iter().all(text_ignores_settings)
            }
            _ => false,
        }
    }
}

/// What the two triggers read from their arguments: where the tenant, number and date are.
struct InvoiceColumns {
    /// The scope: one or more columns, whose texts joined with `:` name the tenant.
    tenant: Vec<(NonZeroUsize, String)>,
    number: (NonZeroUsize, String, i32),
    date: Option<(NonZeroUsize, pg_sys::Oid)>,
}

impl InvoiceColumns {
    fn of(trigger: &PgTrigger, function: &str, usage: &str) -> InvoiceColumns {
        let args = trigger.extra_args().unwrap();
        if !(2..=3).contains(&args.len()) {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                format!("{function} takes 2 or 3 arguments, not {}", args.len()),
                usage,
            );
        }
        let tenant = args[0]
            .split(',')
            .map(|name| {
                let name = name.trim();
                let (attno, type_oid, _) = column(trigger, name, usage);
                if !text_ignores_settings(type_oid) {
                    raise(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!("scope column \"{name}\" cannot name a numbering: its text depends on the session's settings"),
                        "use text, integer, numeric, uuid, boolean or enum columns for the scope (a date's text follows DateStyle and TimeZone)",
                    );
                }
                (attno, name.to_string())
            })
            .collect();
        let (number_attno, number_type, number_typmod) = column(trigger, &args[1], usage);
        if number_type != pg_sys::TEXTOID && number_type != pg_sys::VARCHAROID {
            raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("number column \"{}\" must be text or varchar", args[1]),
                "invoice numbers are text such as 11-00000001",
            );
        }
        let date = args.get(2).map(|name| {
            let (attno, type_oid, _) = column(trigger, name, usage);
            // SAFETY: a catalog lookup of the column's type.
            let base = unsafe { pg_sys::getBaseType(type_oid) };
            if ![pg_sys::DATEOID, pg_sys::TIMESTAMPOID, pg_sys::TIMESTAMPTZOID].contains(&base) {
                raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!("date column \"{name}\" must be a date, timestamp or timestamptz column"),
                    "the invoice's date picks its period",
                );
            }
            (attno, base)
        });
        InvoiceColumns { tenant, number: (number_attno, args[1].clone(), number_typmod), date }
    }

    /// The row's tenant (its scope columns' texts joined with `:`) and date (today when the
    /// date column is NULL or there is none); None when the row has a number already.
    fn to_number(&self, trigger: &PgTrigger, tuple: *mut pg_sys::HeapTupleData) -> Option<(String, Day)> {
        if column_as_text(trigger, tuple, self.number.0).is_some() {
            return None; // the caller chose the number
        }
        let parts: Vec<String> = self
            .tenant
            .iter()
            .map(|(attno, name)| {
                column_as_text(trigger, tuple, *attno).unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        format!("tenant column \"{name}\" is NULL"),
                        "every invoice needs a tenant to be numbered for",
                    )
                })
            })
            .collect();
        let date = self.date.and_then(|(attno, type_oid)| {
            // SAFETY: a column of the trigger's row, of the type checked in `of`.
            let datum = unsafe {
                pgrx::heap_getattr_raw(tuple, attno, (*trigger.trigger_data().tg_relation).rd_att)
            }?;
            // SAFETY: a value of that type; a timestamptz's date is in the session's time zone.
            let date = unsafe {
                match type_oid {
                    pg_sys::TIMESTAMPOID => Date::from(Timestamp::from_datum(datum, false)?),
                    pg_sys::TIMESTAMPTZOID => Date::from(TimestampWithTimeZone::from_datum(datum, false)?),
                    _ => Date::from_datum(datum, false)?,
                }
            };
            Some(day_of(date, "the invoice's date"))
        });
        Some((parts.join(":"), date.unwrap_or_else(today)))
    }

    /// Refuse a number longer than a varchar(n) number column: a BEFORE trigger's values
    /// skip the length check, and numbers are never truncated.
    fn check_fits(&self, number: &str) {
        let (_, name, typmod) = &self.number;
        let max_len = typmod - pg_sys::VARHDRSZ as i32;
        if *typmod >= 0 && number.chars().count() > max_len as usize {
            raise(
                PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
                format!("invoice number \"{number}\" is longer than column \"{name}\" (varchar({max_len}))"),
                "widen the column; numbers are never truncated",
            );
        }
    }
}

/// `BEFORE INSERT ... FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('tenant_columns',
/// 'number_column'[, 'date_column'])`: fills the number column when it is NULL, so `INSERT
/// ... RETURNING number_column` hands the number to the client. Declared in sql/invoices.sql.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn assign_invoice_number_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the server's call of our trigger function.
    unsafe { trigger_rows::entry(fcinfo, "exactly.assign_invoice_number()", USAGE, assign_invoice_number) }
}
crate::finfo_v1!(pg_finfo_assign_invoice_number_wrapper);

fn assign_invoice_number<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, pgrx::datum::TryFromDatumError> {
    let event = trigger.event();
    if !(event.fired_before() && event.fired_for_row() && event.fired_by_insert()) {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "exactly.assign_invoice_number() must be fired BEFORE INSERT FOR EACH ROW",
            USAGE,
        );
    }
    let columns = InvoiceColumns::of(trigger, "exactly.assign_invoice_number()", USAGE);
    let row = trigger.new().expect("a BEFORE INSERT row trigger has a new row").into_owned();
    let Some((tenant, date)) = columns.to_number(trigger, trigger.trigger_data().tg_trigtuple) else {
        return Ok(Some(row));
    };
    let number = draw(&tenant, 1, date).format(0);
    columns.check_fits(&number);
    let mut row = row;
    row.set_by_index(columns.number.0, number)?;
    Ok(Some(row))
}

/// `CREATE CONSTRAINT TRIGGER ... AFTER INSERT OR UPDATE ... DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
/// EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant_columns', 'number_column'[,
/// 'date_column'])`: draws the number when the transaction commits and writes it into the
/// row, so the tenant's lock is held only while the transaction commits. Numbers follow
/// commit order; a transaction that rolls back draws nothing. Declared in sql/invoices.sql.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn assign_invoice_number_at_commit_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the server's call of our trigger function.
    unsafe {
        trigger_rows::entry(
            fcinfo,
            "exactly.assign_invoice_number_at_commit()",
            USAGE_AT_COMMIT,
            assign_invoice_number_at_commit,
        )
    }
}
crate::finfo_v1!(pg_finfo_assign_invoice_number_at_commit_wrapper);

fn assign_invoice_number_at_commit<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, pgrx::datum::TryFromDatumError> {
    let event = trigger.event();
    let declared = trigger.trigger();
    let on_insert_and_every_update = declared.tgtype as u32 & pg_sys::TRIGGER_TYPE_INSERT != 0
        && declared.tgtype as u32 & pg_sys::TRIGGER_TYPE_UPDATE != 0
        && declared.tgnattr == 0;
    if !(event.fired_after() && event.fired_for_row() && (event.fired_by_insert() || event.fired_by_update()))
        || !declared.tgdeferrable
        || !on_insert_and_every_update
    {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            "exactly.assign_invoice_number_at_commit() must be a DEFERRABLE constraint trigger, \
             fired AFTER INSERT OR UPDATE FOR EACH ROW",
            USAGE_AT_COMMIT,
        );
    }
    let columns = InvoiceColumns::of(trigger, "exactly.assign_invoice_number_at_commit()", USAGE_AT_COMMIT);
    let data = trigger.trigger_data();
    // The version this event is about: the inserted row, or an update's new version.
    let (tuple, slot) = if event.fired_by_update() {
        (data.tg_newtuple, data.tg_newslot)
    } else {
        (data.tg_trigtuple, data.tg_trigslot)
    };
    // A version a later command replaced or deleted is not numbered: the replacing UPDATE
    // queued its own event, which numbers the row as it is committed (as PostgreSQL's
    // foreign-key triggers skip such versions).
    let still_live = || unsafe {
        // SAFETY: the trigger's relation and its slot holding that version.
        pg_sys::table_tuple_satisfies_snapshot(data.tg_relation, slot, &raw mut pg_sys::SnapshotSelfData)
    };
    if !still_live() {
        return Ok(None);
    }
    let Some((tenant, date)) = columns.to_number(trigger, tuple) else {
        return Ok(None);
    };
    let table = user_tables::open(trigger.relid().unwrap());
    let number_column = table.column(&columns.number.1, "number_column");
    // SAFETY: the version's place in the trigger's own table (a partition's, for one).
    let place = unsafe { (*tuple).t_self };
    Spi::connect_mut(|client| {
        if !lock_unnumbered(client, &table, number_column, &place) {
            if still_live() {
                raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("the invoice row to number is hidden from the current user by {}'s row-level security", table.name),
                    "let the inserting role see and update its own invoices, or number them with exactly.assign_invoice_number",
                );
            }
            return; // another transaction updated it since: its own event numbers it
        }
        let number = draw(&tenant, 1, date).format(0);
        columns.check_fits(&number);
        if !set_number(client, &table, number_column, &place, &number) {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("invoice number {number} could not be written into its row of {}: a trigger or rule skipped the update", table.name),
                "let exactly.assign_invoice_number_at_commit update the number column",
            );
        }
    });
    Ok(None)
}

fn place_arg(place: &pg_sys::ItemPointerData) -> pgrx::datum::DatumWithOid<'_> {
    // SAFETY (spi_plans::arg): a tid, alive for the trigger call.
    unsafe { spi_plans::arg(pg_sys::Datum::from(place as *const pg_sys::ItemPointerData), pg_sys::TIDOID) }
}

/// Lock the row at `place` if it is there and without a number, as the caller (it is its
/// table, and its policies apply).
fn lock_unnumbered(client: &mut SpiClient<'_>, table: &UserTable, number: &Column, place: &pg_sys::ItemPointerData) -> bool {
    let column = number.sql();
    !table
        .run(client, "lock an invoice to number", &[number.attno.into()], |t| {
            let sql = format!(
                "SELECT 1 FROM {} AS t WHERE t.ctid OPERATOR(pg_catalog.=) $1 AND t.{column} IS NULL FOR NO KEY UPDATE OF t",
                t.name
            );
            (sql, vec![PgOid::from(pg_sys::TIDOID)])
        }, &[place_arg(place)])
        .is_empty()
}

/// Write `number` into the row at `place`; false when nothing was written.
fn set_number(client: &mut SpiClient<'_>, table: &UserTable, number: &Column, place: &pg_sys::ItemPointerData, text: &str) -> bool {
    let column = number.sql();
    !table
        .run(client, "number an invoice", &[number.attno.into()], |t| {
            let sql = format!("UPDATE {} AS t SET {column} = $1 WHERE t.ctid OPERATOR(pg_catalog.=) $2 RETURNING 1", t.name);
            (sql, vec![TEXT, PgOid::from(pg_sys::TIDOID)])
        }, &[text.into(), place_arg(place)])
        .is_empty()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    /// `CREATE TABLE inv (columns)` numbered by our trigger, fired `timing` INSERT with `args`.
    fn numbered_table(columns: &str, timing: &str, args: &str) {
        Spi::run(&format!(
            "CREATE TABLE inv ({columns});
             CREATE TRIGGER number {timing} INSERT ON inv FOR EACH ROW
               EXECUTE FUNCTION exactly.assign_invoice_number({args});"
        ))
        .unwrap();
    }

    #[pg_test]
    fn first_use_creates_the_tenant_with_its_name_as_prefix() {
        assert_eq!(
            one("SELECT exactly.next_invoice_number('11')").as_deref(),
            Some("11-00000001")
        );
        assert_eq!(
            one("SELECT exactly.next_invoice_number(tenant => '11')").as_deref(),
            Some("11-00000002")
        );
        assert_eq!(
            one("SELECT exactly.next_invoice_number('12')").as_deref(),
            Some("12-00000001")
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT next_value FROM exactly.invoice_sequences WHERE tenant = '11'"
            )
            .unwrap(),
            Some(3)
        );
    }

    #[pg_test]
    fn define_sets_prefix_and_width_and_keeps_the_counter() {
        Spi::run("SELECT exactly.define_invoice_sequence('eu', 'EU', 4)").unwrap();
        assert_eq!(
            one("SELECT exactly.next_invoice_number('eu')").as_deref(),
            Some("EU-0001")
        );
        Spi::run(
            "SELECT exactly.define_invoice_sequence(tenant => 'eu', prefix => 'E', width => 2)",
        )
        .unwrap();
        assert_eq!(
            one("SELECT exactly.next_invoice_number('eu')").as_deref(),
            Some("E-02")
        );
        Spi::run("SELECT exactly.define_invoice_sequence('eu', 'EU')").unwrap();
        assert_eq!(
            one("SELECT exactly.next_invoice_number('eu')").as_deref(),
            Some("EU-00000003")
        );
    }

    #[pg_test]
    fn a_number_wider_than_the_width_is_printed_whole() {
        Spi::run("SELECT exactly.define_invoice_sequence('w', 'W', 2)").unwrap();
        Spi::run("UPDATE exactly.invoice_sequences SET next_value = 12345 WHERE tenant = 'w'")
            .unwrap();
        assert_eq!(
            one("SELECT exactly.next_invoice_number('w')").as_deref(),
            Some("W-12345")
        );
    }

    #[pg_test]
    fn an_empty_prefix_gives_bare_numbers() {
        Spi::run("SELECT exactly.define_invoice_sequence('plain', '', 6)").unwrap();
        assert_eq!(
            one("SELECT exactly.next_invoice_number('plain')").as_deref(),
            Some("000001")
        );
    }

    #[pg_test]
    fn next_invoice_numbers_hands_out_a_contiguous_block_in_order() {
        Spi::run("SELECT exactly.next_invoice_number('b')").unwrap();
        assert_eq!(
            one("SELECT string_agg(n, ',') FROM exactly.next_invoice_numbers('b', 3) AS n")
                .as_deref(),
            Some("b-00000002,b-00000003,b-00000004")
        );
        assert_eq!(
            one("SELECT exactly.next_invoice_number('b')").as_deref(),
            Some("b-00000005")
        );
    }

    #[pg_test]
    fn the_trigger_numbers_rows_per_tenant_and_keeps_given_numbers() {
        numbered_table(
            "id serial, tenant_identifier text, invoice_number varchar(20)",
            "BEFORE",
            "'tenant_identifier', 'invoice_number'",
        );
        Spi::run("INSERT INTO inv (tenant_identifier) VALUES ('11'), ('12'), ('11'); INSERT INTO inv (tenant_identifier, invoice_number) VALUES ('11', 'manual-1');").unwrap();
        assert_eq!(
            one("SELECT string_agg(invoice_number, ',' ORDER BY id) FROM inv").as_deref(),
            Some("11-00000001,12-00000001,11-00000002,manual-1")
        );
    }

    #[pg_test]
    fn the_trigger_accepts_a_non_text_tenant_column() {
        numbered_table(
            "tenant_id int, number text",
            "BEFORE",
            "'tenant_id', 'number'",
        );
        assert_eq!(
            one("INSERT INTO inv (tenant_id) VALUES (42) RETURNING number").as_deref(),
            Some("42-00000001")
        );
    }

    #[pg_test(error = "argument \"tenant\" must not be NULL")]
    fn null_tenant_is_refused() {
        Spi::run("SELECT exactly.next_invoice_number(NULL)").unwrap();
    }

    #[pg_test(error = "tenant must not be an empty string")]
    fn empty_tenant_is_refused() {
        Spi::run("SELECT exactly.next_invoice_number('')").unwrap();
    }

    #[pg_test(error = "n must be between 1 and 1000000, not 0")]
    fn zero_numbers_are_refused() {
        Spi::run("SELECT exactly.next_invoice_numbers('t', 0)").unwrap();
    }

    #[pg_test(error = "n must be between 1 and 1000000, not -5")]
    fn negative_numbers_are_refused() {
        Spi::run("SELECT exactly.next_invoice_numbers('t', -5)").unwrap();
    }

    #[pg_test(error = "argument \"n\" must not be NULL")]
    fn null_n_is_refused() {
        Spi::run("SELECT exactly.next_invoice_numbers('t', NULL)").unwrap();
    }

    #[pg_test(error = "width must be between 1 and 19, not 0")]
    fn zero_width_is_refused() {
        Spi::run("SELECT exactly.define_invoice_sequence('t', 'T', 0)").unwrap();
    }

    #[pg_test(error = "argument \"prefix\" must not be NULL")]
    fn null_prefix_is_refused() {
        Spi::run("SELECT exactly.define_invoice_sequence('t', NULL)").unwrap();
    }

    #[pg_test(
        error = "tenant \"full\" has too few invoice numbers left: the next is 9223372036854775806 and 2 more would pass the bigint maximum"
    )]
    fn exhausted_numbers_are_refused_not_wrapped() {
        Spi::run("SELECT exactly.define_invoice_sequence('full', 'F')").unwrap();
        Spi::run("UPDATE exactly.invoice_sequences SET next_value = 9223372036854775806 WHERE tenant = 'full'").unwrap();
        Spi::run("SELECT exactly.next_invoice_numbers('full', 2)").unwrap();
    }

    #[pg_test(error = "tenant column \"tenant\" is NULL")]
    fn the_trigger_refuses_a_null_tenant() {
        numbered_table("tenant text, number text", "BEFORE", "'tenant', 'number'");
        Spi::run("INSERT INTO inv (tenant) VALUES (NULL);").unwrap();
    }

    #[pg_test(error = "column \"nope\" of table \"inv\" does not exist")]
    fn the_trigger_refuses_an_unknown_column() {
        numbered_table("tenant text, number text", "BEFORE", "'tenant', 'nope'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('t');").unwrap();
    }

    #[pg_test(
        error = "invoice number \"11-00000001\" is longer than column \"number\" (varchar(5))"
    )]
    fn the_trigger_never_truncates_into_a_short_varchar() {
        numbered_table(
            "tenant text, number varchar(5)",
            "BEFORE",
            "'tenant', 'number'",
        );
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }

    #[pg_test(error = "number column \"number\" must be text or varchar")]
    fn the_trigger_refuses_a_non_text_number_column() {
        numbered_table("tenant text, number bigint", "BEFORE", "'tenant', 'number'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }

    #[pg_test(error = "exactly.assign_invoice_number() takes 2 or 3 arguments, not 1")]
    fn the_trigger_refuses_a_missing_argument() {
        numbered_table("tenant text, number text", "BEFORE", "'tenant'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }

    #[pg_test(error = "exactly.assign_invoice_number() must be fired BEFORE INSERT FOR EACH ROW")]
    fn the_trigger_refuses_to_run_after_insert() {
        numbered_table("tenant text, number text", "AFTER", "'tenant', 'number'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }

    #[pg_test]
    fn a_yearly_template_starts_again_each_fiscal_year() {
        Spi::run("SELECT exactly.define_invoice_sequence('fy', 'F', 3, 'INV-{fy}-{prefix}{number}', 'yearly', 4)").unwrap();
        let at = |date: &str| one(&format!("SELECT exactly.next_invoice_number('fy', '{date}')")).unwrap();
        assert_eq!(at("2026-03-31"), "INV-2025-F001");
        assert_eq!(at("2025-04-01"), "INV-2025-F002");
        assert_eq!(at("2026-04-01"), "INV-2026-F001");
        assert_eq!(
            one("SELECT string_agg(period || '=' || next_value, ' ' ORDER BY period) FROM exactly.invoice_periods WHERE tenant = 'fy'")
                .as_deref(),
            Some("2025-04-01=3 2026-04-01=2")
        );
    }

    #[pg_test]
    fn date_tokens_tenant_and_blocks_render_from_the_date() {
        Spi::run("SELECT exactly.define_invoice_sequence('d', 'P', 2, '{tenant}/{yy}{mm}{dd}/{number}', 'daily')").unwrap();
        assert_eq!(
            one("SELECT string_agg(n, ',') FROM exactly.next_invoice_numbers('d', 3, '2026-07-04') AS n").as_deref(),
            Some("d/260704/01,d/260704/02,d/260704/03")
        );
    }

    #[pg_test]
    fn set_next_continues_forward_and_an_empty_prefix_keeps_bare_numbers() {
        Spi::run("SELECT exactly.define_invoice_sequence('m', '', 4)").unwrap();
        Spi::run("SELECT exactly.set_next_invoice_number('m', 1500)").unwrap();
        assert_eq!(one("SELECT exactly.next_invoice_number('m')").as_deref(), Some("1500"));
        Spi::run("SELECT exactly.define_invoice_sequence('y', 'Y', 4, '{yyyy}-{number}', 'yearly')").unwrap();
        Spi::run("SELECT exactly.set_next_invoice_number('y', 42, '2026-06-01')").unwrap();
        assert_eq!(one("SELECT exactly.next_invoice_number('y', '2026-12-31')").as_deref(), Some("2026-0042"));
        assert_eq!(one("SELECT exactly.next_invoice_number('y', '2027-01-01')").as_deref(), Some("2027-0001"));
    }

    #[pg_test(error = "tenant \"s\" has handed out numbers at or above 2 already (its next is 3)")]
    fn set_next_is_refused_below_what_was_handed_out() {
        Spi::run("SELECT exactly.next_invoice_numbers('s', 2)").unwrap();
        Spi::run("SELECT exactly.set_next_invoice_number('s', 2)").unwrap();
    }

    #[pg_test(error = "template \"INV-{year}-{number}\" has an unknown token {year}; tokens: {prefix} {number} {yyyy} {yy} {mm} {dd} {fy} {tenant}")]
    fn an_unknown_token_is_refused() {
        Spi::run("SELECT exactly.define_invoice_sequence('u', 'U', 4, 'INV-{year}-{number}')").unwrap();
    }

    #[pg_test(error = "template 'INV-{yyyy}-{number}' would print the same number in two periods of reset 'monthly'")]
    fn a_template_that_cannot_tell_periods_apart_is_refused() {
        Spi::run("SELECT exactly.define_invoice_sequence('u', 'U', 4, 'INV-{yyyy}-{number}', 'monthly')").unwrap();
    }

    #[pg_test]
    fn the_trigger_takes_several_scope_columns_and_a_date_column() {
        numbered_table(
            "tenant_id int, series text, issued timestamptz, number text",
            "BEFORE",
            "'tenant_id, series', 'number', 'issued'",
        );
        Spi::run("SELECT exactly.define_invoice_sequence('7:A', 'A', 3, '{prefix}{mm}-{number}')").unwrap();
        Spi::run("INSERT INTO inv VALUES (7, 'A', '2026-02-10 12:00+00'), (7, 'B', NULL), (7, 'A', '2026-03-01 12:00+00')").unwrap();
        assert_eq!(
            one("SELECT string_agg(number, ',' ORDER BY number) FROM inv").as_deref(),
            Some("7:B-00000001,A02-001,A03-002")
        );
    }

    #[pg_test(error = "exactly.assign_invoice_number_at_commit() must be a DEFERRABLE constraint trigger, fired AFTER INSERT OR UPDATE FOR EACH ROW")]
    fn the_commit_time_trigger_must_be_a_deferrable_constraint_trigger() {
        Spi::run(
            "CREATE TABLE inv (tenant text, number text);
             CREATE TRIGGER number AFTER INSERT ON inv FOR EACH ROW
               EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant', 'number');
             INSERT INTO inv (tenant) VALUES ('11');",
        )
        .unwrap();
    }

    #[pg_test(error = "exactly.assign_invoice_number_at_commit() must be a DEFERRABLE constraint trigger, fired AFTER INSERT OR UPDATE FOR EACH ROW")]
    fn the_commit_time_trigger_must_also_fire_on_updates() {
        Spi::run(
            "CREATE TABLE inv (tenant text, number text);
             CREATE CONSTRAINT TRIGGER number AFTER INSERT ON inv DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
               EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant', 'number');
             INSERT INTO inv (tenant) VALUES ('11');
             SET CONSTRAINTS number IMMEDIATE;",
        )
        .unwrap();
    }

    #[pg_test]
    fn the_commit_time_trigger_numbers_at_set_constraints_immediate() {
        Spi::run(
            "CREATE TABLE inv (id int PRIMARY KEY, tenant text, number text);
             CREATE CONSTRAINT TRIGGER number AFTER INSERT OR UPDATE ON inv DEFERRABLE INITIALLY DEFERRED
               FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant', 'number');
             INSERT INTO inv (id, tenant) VALUES (1, 'c'), (2, 'c'), (3, 'c');
             UPDATE inv SET tenant = 'c' WHERE id = 2;
             DELETE FROM inv WHERE id = 3;",
        )
        .unwrap();
        assert_eq!(one("SELECT count(number)::text FROM inv").as_deref(), Some("0"));
        Spi::run("SET CONSTRAINTS number IMMEDIATE").unwrap();
        // the updated row is found by its key; the deleted one draws nothing
        assert_eq!(
            one("SELECT string_agg(id || '=' || number, ',' ORDER BY id) FROM inv").as_deref(),
            Some("1=c-00000001,2=c-00000002")
        );
    }
}
