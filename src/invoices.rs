//! Gapless per-tenant invoice numbers (seed 001).
//!
//! Each tenant has one counter row in `exactly.invoice_sequences`. Drawing numbers updates
//! that row, so the row lock is held to the end of the transaction: a rolled-back draw
//! rolls the counter back with it and the number is handed out again. Gapless and
//! duplicate-free follow from the row lock alone; the fair queue in `xact_lock` in front of
//! it is there for speed under contention (see that module).

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, AllocatedByRust, PgBuiltInOids};

use crate::errors::{non_empty, raise, required};
use crate::spi_plans;
use crate::trigger_rows::{self, column, column_as_text};
use crate::xact_lock::{lock_exclusive_in_order, LockSpace};

/// Most numbers `next_invoice_numbers` hands out in one call (the set is built in memory).
const MAX_NUMBERS_PER_CALL: i32 = 1_000_000;
/// A bigint has at most 19 digits, so a wider zero-padding would only add zeros.
const MAX_WIDTH: i32 = 19;

const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);

/// Draw `$2` numbers for tenant `$1`; the guard keeps `next_value` within bigint. (An
/// `OPERATOR()` has neither the precedence nor the associativity of its symbol: where two
/// meet, parentheses say which goes first.)
const DRAW: &str = "UPDATE exactly.invoice_sequences \
     SET next_value = next_value OPERATOR(pg_catalog.+) $2 \
     WHERE tenant OPERATOR(pg_catalog.=) $1 \
       AND next_value OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) $2) \
     RETURNING prefix, width, next_value OPERATOR(pg_catalog.-) $2";
const NEXT_VALUE: &str =
    "SELECT next_value FROM exactly.invoice_sequences WHERE tenant OPERATOR(pg_catalog.=) $1";
const CREATE_ON_FIRST_USE: &str = "INSERT INTO exactly.invoice_sequences (tenant, prefix) \
     VALUES ($1, $1) ON CONFLICT (tenant) DO NOTHING";
const DEFINE: &str = "INSERT INTO exactly.invoice_sequences (tenant, prefix, width) \
     VALUES ($1, $2, $3) ON CONFLICT (tenant) \
     DO UPDATE SET prefix = excluded.prefix, width = excluded.width";

/// A contiguous block of numbers drawn for one tenant, in that tenant's format.
struct Block {
    prefix: String,
    width: usize,
    first: i64,
}

impl Block {
    /// `<prefix>-<number zero-padded to width>`; a wider number is printed whole.
    fn format(&self, offset: i64) -> String {
        let (number, width) = (self.first + offset, self.width);
        if self.prefix.is_empty() {
            format!("{number:0width$}")
        } else {
            format!("{}-{number:0width$}", self.prefix)
        }
    }
}

/// Draw `count` consecutive numbers for `tenant`, creating the tenant on first use.
fn draw(tenant: &str, count: i64) -> Block {
    non_empty(tenant, "tenant", "'11'");
    lock_exclusive_in_order(LockSpace::InvoiceTenant, tenant);
    Spi::connect_mut(|client| {
        if let Some(block) = draw_from_row(client, tenant, count) {
            return block;
        }
        // No row yet, or no numbers left. We hold the tenant's queue lock, and every function
        // of ours that writes the row takes it first, so nothing of ours moves in between.
        let rows = spi_plans::run_as_owner(client, NEXT_VALUE, &[TEXT], &[tenant.into()]);
        if !rows.is_empty() {
            let next = rows.first().get_one::<i64>().unwrap().unwrap();
            raise(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "tenant \"{tenant}\" has too few invoice numbers left: the next is {next} and {count} more would pass the bigint maximum"
                ),
                "start a new numbering under another tenant name",
            );
        }
        spi_plans::run_as_owner(client, CREATE_ON_FIRST_USE, &[TEXT], &[tenant.into()]);
        draw_from_row(client, tenant, count).unwrap_or_else(|| {
            // Only possible when our snapshot cannot see a row another transaction committed
            // (REPEATABLE READ and above), or someone deleted the row behind our back.
            raise(
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                format!("the invoice sequence of tenant \"{tenant}\" changed concurrently"),
                "retry the transaction",
            )
        })
    })
}

/// Move the tenant's counter on by `count`; None when it has no row or too few numbers left.
fn draw_from_row(client: &mut SpiClient<'_>, tenant: &str, count: i64) -> Option<Block> {
    let rows = spi_plans::run_as_owner(client, DRAW, &[TEXT, INT8], &[tenant.into(), count.into()]);
    if rows.is_empty() {
        return None;
    }
    let (prefix, width, first) = rows.first().get_three::<String, i32, i64>().unwrap();
    // The table has no CHECK constraints (see sql/invoices.sql): a width edited by hand
    // outside 1..19 is clamped rather than trusted.
    Some(Block {
        prefix: prefix?,
        width: width?.clamp(1, MAX_WIDTH) as usize,
        first: first?,
    })
}

/// The next invoice number of `tenant`, e.g. `11-00000001`.
#[pg_extern(volatile, parallel_unsafe)]
fn next_invoice_number(tenant: Option<&str>) -> String {
    draw(required(tenant, "tenant"), 1).format(0)
}

/// `n` consecutive invoice numbers of `tenant`, in order.
#[pg_extern(volatile, parallel_unsafe)]
fn next_invoice_numbers(tenant: Option<&str>, n: Option<i32>) -> SetOfIterator<'static, String> {
    let tenant = required(tenant, "tenant");
    let n = required(n, "n");
    if !(1..=MAX_NUMBERS_PER_CALL).contains(&n) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("n must be between 1 and {MAX_NUMBERS_PER_CALL}, not {n}"),
            "draw larger blocks in several calls in one transaction",
        );
    }
    let block = draw(tenant, i64::from(n));
    SetOfIterator::new((0..i64::from(n)).map(move |i| block.format(i)))
}

/// Create `tenant`'s numbering, or change its prefix and width. Numbers already drawn keep
/// their text; the counter is never touched.
#[pg_extern(volatile, parallel_unsafe)]
fn define_invoice_sequence(
    tenant: Option<&str>,
    prefix: Option<&str>,
    width: default!(Option<i32>, 8),
) {
    let tenant = required(tenant, "tenant");
    let prefix = required(prefix, "prefix");
    let width = required(width, "width");
    non_empty(tenant, "tenant", "'11'");
    if !(1..=MAX_WIDTH).contains(&width) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("width must be between 1 and {MAX_WIDTH}, not {width}"),
            "width is the number of digits numbers are zero-padded to, e.g. 8 for 11-00000001",
        );
    }
    lock_exclusive_in_order(LockSpace::InvoiceTenant, tenant);
    Spi::connect_mut(|client| {
        spi_plans::run_as_owner(
            client,
            DEFINE,
            &[TEXT, TEXT, INT4],
            &[tenant.into(), prefix.into(), width.into()],
        );
    });
}

const USAGE: &str = "use: CREATE TRIGGER ... BEFORE INSERT ON your_table FOR EACH ROW \
     EXECUTE FUNCTION exactly.assign_invoice_number('tenant_column', 'number_column')";

/// `BEFORE INSERT ... FOR EACH ROW EXECUTE FUNCTION
/// exactly.assign_invoice_number('tenant_column', 'number_column')`: fills the number column
/// from the row's tenant when it is NULL, so `INSERT ... RETURNING number_column` hands the
/// number to the client. Declared in sql/invoices.sql.
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
    let args = trigger.extra_args().unwrap();
    let [tenant_column, number_column] = args.as_slice() else {
        raise(
            PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            format!(
                "exactly.assign_invoice_number() takes 2 arguments, not {}",
                args.len()
            ),
            USAGE,
        );
    };
    let row = trigger
        .new()
        .expect("a BEFORE INSERT row trigger has a new row");
    let (tenant_attno, _, _) = column(trigger, tenant_column, USAGE);
    let (number_attno, number_type, number_typmod) = column(trigger, number_column, USAGE);
    if number_type != pg_sys::TEXTOID && number_type != pg_sys::VARCHAROID {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("number column \"{number_column}\" must be text or varchar"),
            "invoice numbers are text such as 11-00000001",
        );
    }
    let new_tuple = trigger.trigger_data().tg_trigtuple;
    if column_as_text(trigger, new_tuple, number_attno).is_some() {
        return Ok(Some(row.into_owned())); // the caller chose the number
    }
    let tenant = column_as_text(trigger, new_tuple, tenant_attno).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("tenant column \"{tenant_column}\" is NULL"),
            "every invoice needs a tenant to be numbered for",
        )
    });
    let number = draw(&tenant, 1).format(0);
    // A BEFORE trigger's values skip the varchar(n) length check, so make it here.
    let max_len = number_typmod - pg_sys::VARHDRSZ as i32;
    if number_typmod >= 0 && number.chars().count() > max_len as usize {
        raise(
            PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
            format!("invoice number \"{number}\" is longer than column \"{number_column}\" (varchar({max_len}))"),
            "widen the column; numbers are never truncated",
        );
    }
    let mut row = row.into_owned();
    row.set_by_index(number_attno, number)?;
    Ok(Some(row))
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

    #[pg_test(error = "exactly.assign_invoice_number() takes 2 arguments, not 1")]
    fn the_trigger_refuses_a_missing_argument() {
        numbered_table("tenant text, number text", "BEFORE", "'tenant'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }

    #[pg_test(error = "exactly.assign_invoice_number() must be fired BEFORE INSERT FOR EACH ROW")]
    fn the_trigger_refuses_to_run_after_insert() {
        numbered_table("tenant text, number text", "AFTER", "'tenant', 'number'");
        Spi::run("INSERT INTO inv (tenant) VALUES ('11');").unwrap();
    }
}

#[cfg(test)]
mod format_tests {
    use super::Block;

    #[test]
    fn zero_pads_to_the_width_and_never_truncates() {
        let block = Block {
            prefix: "11".into(),
            width: 8,
            first: 1,
        };
        assert_eq!(block.format(0), "11-00000001");
        assert_eq!(block.format(122_999_999), "11-123000000");
    }
}
