//! Atomic find-or-create and counters on the user's own tables (seed 002).
//!
//! `find_or_create` looks the key up first, so a row that exists costs one index lookup,
//! takes no lock and burns no sequence value; only a missing key is inserted, with
//! `INSERT ... ON CONFLICT (key) DO NOTHING RETURNING`. Of callers racing to create one key
//! the unique index lets exactly one insert (the others wait for it to commit and insert
//! nothing), so exactly one is told `created`; the others look again and find its row.
//! `increment` updates first and inserts only a missing row, with `ON CONFLICT DO UPDATE`
//! for the race, so the sum of all increments is exact.
//!
//! Every writer of a row here first takes the (table, key) lock of `xact_lock`'s order
//! (`LockSpace::UserRow`), so the row lock it then waits for is held only by another writer
//! in that order: mixed with invoice numbers, payments or each other, in any order, these
//! calls wait or fail at once with 40001, never deadlock.
//!
//! Both accept any table with a unique index on exactly the key's columns; the SQL is
//! written for that table and column set on first use and kept (see `user_tables`), and
//! runs with the caller's rights (privileges, row-level security). Identifiers are quoted,
//! operators come from the index's operator classes, values are always parameters,
//! converted by the column type's own input function.


use pgrx::datum::{AnyNumeric, DatumWithOid};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::{JsonB, PgBuiltInOids, PgList, PgRelation};
use serde_json::{Map, Value};

use crate::errors::{finite, raise, required};
use crate::user_tables::{self, Column, RelArg, RowJson, UniqueKey, UserTable};
use crate::xact_lock::{lock_exclusive_in_order, LockSpace};

const NUMERIC: PgOid = PgOid::BuiltIn(PgBuiltInOids::NUMERICOID);

/// How often `find_or_create` looks again after an insert that found the key taken. Each
/// round needs another transaction to have deleted the row in between, or a BEFORE INSERT
/// trigger that rewrites the key or skips the row (then no round can ever find it).
const MAX_ROUNDS: usize = 10;

/// The row for `key` in `rel`, inserted with `defaults` (and the columns' own defaults and
/// the table's triggers) when there is none, and whether this call inserted it.
#[pg_extern(volatile, parallel_unsafe)]
fn find_or_create(
    rel: Option<RelArg>,
    key: Option<JsonB>,
    defaults: default!(Option<JsonB>, "'{}'"),
) -> TableIterator<'static, (name!(data, RowJson), name!(created, bool))> {
    let rel = required(rel, "rel").open();
    let key = object(required(key, "key"), "key");
    let defaults = object(required(defaults, "defaults"), "defaults");
    let table = user_tables::open(rel.oid());
    let unique_key = unique_key(&table, &key);
    let key_columns = &unique_key.columns;
    let mut default_columns: Vec<i16> = defaults
        .keys()
        .map(|name| table.column(name, "defaults").attno)
        .collect();
    default_columns.sort_unstable();
    if let Some(both) = default_columns.iter().find(|a| key_columns.contains(a)) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column {} is in both key and defaults", table.by_attno(*both).sql()),
            "a key column's value comes from key; leave it out of defaults",
        );
    }
    let key_values = values(&table, key_columns, &key, "key");
    // The common case, a row that exists: one index probe, no statement, no lock.
    let probed = probe(&rel, &table, unique_key, &key_values);
    if let Some(Some(row)) = probed {
        return TableIterator::once((row, false));
    }
    let default_values = values(&table, &default_columns, &defaults, "defaults");
    lock_row(&rel, &table, unique_key, &key_values);
    let insert_columns: Vec<i16> = key_columns.iter().chain(&default_columns).copied().collect();
    // which of the inserted columns are the key is part of the statement
    let statement: Vec<i32> = key_columns.iter().chain(&[0]).chain(&default_columns).map(|&a| a.into()).collect();
    let insert_values: Vec<DatumWithOid> =
        key_values.iter().chain(&default_values).map(again).collect();
    // SAFETY: the current context is the caller's; rows are copied into it from SPI's.
    let outer = unsafe { pg_sys::CurrentMemoryContext };
    let found = Spi::connect_mut(|client| {
        for _ in 0..MAX_ROUNDS {
            // Looked up again under the lock: the row may have come since the probe.
            if let Some(row) = json_of_first_row(outer, find(client, &table, unique_key, &key_values)) {
                return (row, false);
            }
            let inserted = table.run(client, "create", &statement, |t| {
                let names = t.column_list(insert_columns.iter().copied());
                let params: Vec<String> =
                    (1..=insert_columns.len()).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {} AS t {names} VALUES ({}) \
                     ON CONFLICT {} DO NOTHING RETURNING pg_catalog.to_jsonb(t.*)",
                    t.name,
                    params.join(", "),
                    t.column_list(key_columns.iter().copied()),
                );
                (sql, types(t, &insert_columns))
            }, &insert_values);
            if let Some(row) = json_of_first_row(outer, inserted) {
                return (row, true);
            }
            // Taken, yet not found: deleted since (look again), or hidden from the caller.
            if hidden_by_row_security(&rel, &table, unique_key, &key_values) {
                raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "a row with key {} exists in {}, but row-level security hides it from this role",
                        Value::Object(key.clone()),
                        table.name
                    ),
                    "the table's policies must let this role see the rows it finds or creates",
                );
            }
        }
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!(
                "no row for key {} in {} after {MAX_ROUNDS} inserts that found the key taken",
                Value::Object(key.clone()),
                table.name
            ),
            "other transactions keep deleting the row: retry; or a BEFORE INSERT trigger \
             rewrites the key or skips the row: pass the key as the trigger stores it",
        )
    });
    TableIterator::once(found)
}

/// Add `by` to column `col` of the row for `key` in `rel`, creating the row (with `col =
/// by`) when there is none; returns the new value. A NULL in `col` counts as 0.
#[pg_extern(volatile, parallel_unsafe)]
fn increment(
    rel: Option<RelArg>,
    key: Option<JsonB>,
    col: Option<&str>,
    by: default!(Option<AnyNumeric>, 1),
) -> AnyNumeric {
    let rel = required(rel, "rel").open();
    let key = object(required(key, "key"), "key");
    let col = required(col, "col");
    let by = required(by, "by");
    let table = user_tables::open(rel.oid());
    let unique_key = unique_key(&table, &key);
    let key_columns = unique_key.columns.clone();
    let counter = table.column(col, "col");
    check_counter(&table, counter, &key_columns, &by);
    let mut args = values(&table, &key_columns, &key, "key");
    lock_row(&rel, &table, unique_key, &args);
    args.push(by.into());
    let mut columns = key_columns.clone();
    columns.push(counter.attno);
    let statement: Vec<i32> = key_columns.iter().chain(&[0, counter.attno]).map(|&a| a.into()).collect();
    let types_with_by = |t: &UserTable| {
        let mut types = types(t, &key_columns);
        types.push(NUMERIC);
        types
    };
    let c = counter.sql();
    let n = key_columns.len() + 1;
    Spi::connect_mut(|client| {
        let updated = first(table
            .run(client, "add", &statement, |t| {
                let sql = format!(
                    "UPDATE {} AS t SET {c} = COALESCE(t.{c}, 0) OPERATOR(pg_catalog.+) ${n} \
                     WHERE {} RETURNING t.{c}::pg_catalog.numeric",
                    t.name,
                    key_condition(t, unique_key)
                );
                (sql, types_with_by(t))
            }, &args));
        if let Some(value) = updated {
            return value;
        }
        // No row: insert it, or add to the one a concurrent caller just inserted.
        first(table
            .run(client, "create and add", &statement, |t| {
                let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
                let sql = format!(
                    "INSERT INTO {} AS t {} VALUES ({}) ON CONFLICT {} \
                     DO UPDATE SET {c} = COALESCE(t.{c}, 0) OPERATOR(pg_catalog.+) excluded.{c} \
                     RETURNING t.{c}::pg_catalog.numeric",
                    t.name,
                    t.column_list(columns.iter().copied()),
                    params.join(", "),
                    t.column_list(key_columns.iter().copied()),
                );
                (sql, types_with_by(t))
            }, &args))
            .expect("an upsert returns its row")
    })
}

/// Take the lock that queues writers of the key's row, in pg_exactly's lock order.
fn lock_row(rel: &PgRelation, table: &UserTable, key: &UniqueKey, values: &[DatumWithOid]) {
    let datums: Vec<pg_sys::Datum> = values
        .iter()
        .map(|v| v.datum().expect("key values are never NULL").sans_lifetime())
        .collect();
    // SAFETY: non-NULL values of the key columns' types, in the key's column order.
    let name = unsafe { key.lock_name(table, rel.oid(), &datums) };
    lock_exclusive_in_order(LockSpace::UserRow, name);
}

/// The row for the key, as jsonb, if one is visible: the probe's statement twin, for what
/// the probe leaves to a statement and for looking again under the lock.
fn find<'conn>(
    client: &mut SpiClient<'conn>,
    table: &UserTable,
    key: &UniqueKey,
    key_values: &[DatumWithOid],
) -> SpiTupleTable<'conn> {
    table
        .run(client, "find", &key.columns.iter().map(|&a| a.into()).collect::<Vec<i32>>(), |t| {
            let sql = format!(
                "SELECT pg_catalog.to_jsonb(t.*) FROM {} AS t WHERE {}",
                t.name,
                key_condition(t, key)
            );
            (sql, types(t, &key.columns))
        }, key_values)
}

/// `t.a = $1 AND t.b = $2` for the key's columns (ascending), by their operator classes.
fn key_condition(table: &UserTable, key: &UniqueKey) -> String {
    let conditions: Vec<String> = key
        .columns
        .iter()
        .enumerate()
        .map(|(i, &a)| key.part(a).eq_sql(&format!("t.{}", table.by_attno(a).sql()), &format!("${}", i + 1)))
        .collect();
    conditions.join(" AND ")
}

/// The jsonb in the first column of the first row, copied into `context` (SPI's own memory
/// ends with the connection), if there is a row.
fn json_of_first_row(context: pg_sys::MemoryContext, rows: SpiTupleTable<'_>) -> Option<RowJson> {
    if rows.is_empty() {
        return None;
    }
    let datum = rows.first().get_datum_by_ordinal(1).unwrap()?;
    // SAFETY: a jsonb datum of the current SPI result.
    Some(unsafe { RowJson::copy(context, datum) })
}

/// The row for the key, read straight through its unique index as a statement would (same
/// snapshot rules, no executor start-up): the common case of `find_or_create` is one index
/// probe. Some(None) when no row is visible; None when a statement must look instead: the
/// caller's access is checked by the statement (row-level security on the table, or only
/// column privileges), or a partitioned table (its rows and indexes are its partitions').
fn probe(
    rel: &PgRelation,
    table: &UserTable,
    key: &UniqueKey,
    values: &[DatumWithOid],
) -> Option<Option<RowJson>> {
    let relid = rel.oid();
    // SAFETY: privilege and row-level security checks of the caller on an open relation.
    let statement_needed = table.partitioned
        || unsafe {
            pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
                != pg_sys::AclResult::ACLCHECK_OK
                || pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, true)
                    == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        };
    if statement_needed {
        return None;
    }
    // SAFETY: the transaction's snapshot, as a statement would use; the slot holds a row of
    // the table, of its row type.
    Some(unsafe {
        index_lookup(rel, key, values, pg_sys::GetTransactionSnapshot(), |slot| {
            RowJson(row_to_jsonb(table.row_type, pg_sys::ExecFetchSlotHeapTupleDatum(slot)))
        })
    })
}

/// Whether the key's row exists but the caller's row-level security policies hide it: the
/// latest committed state is read straight through the index, under no policy (the answer
/// only picks the error: the insert that found the key taken has told as much).
fn hidden_by_row_security(
    rel: &PgRelation,
    table: &UserTable,
    key: &UniqueKey,
    values: &[DatumWithOid],
) -> bool {
    // SAFETY: the caller's row-level security state of an open relation; the latest snapshot.
    unsafe {
        !table.partitioned
            && pg_sys::check_enable_rls(rel.oid(), pg_sys::InvalidOid, true)
                == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            && index_lookup(rel, key, values, pg_sys::GetLatestSnapshot(), |_| ()).is_some()
    }
}

/// Look the key up in its unique index under `snapshot`; `found` reads the row's slot.
///
/// # Safety
/// `rel` is open and locked; `values` are of the key columns' types, in the key's column
/// order; `snapshot` is a valid snapshot.
unsafe fn index_lookup<R>(
    rel: &PgRelation,
    key: &UniqueKey,
    values: &[DatumWithOid],
    snapshot: pg_sys::Snapshot,
    found: impl FnOnce(*mut pg_sys::TupleTableSlot) -> R,
) -> Option<R> {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: the index is opened and locked here and kept locked to the end of the
    // transaction, as a statement would; the key datums are of the key columns' types, as
    // the index's equality functions expect; the snapshot is registered for the scan.
    unsafe {
        let mut scan_keys: Vec<pg_sys::ScanKeyData> = key
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let value = &values[key.columns.iter().position(|&a| a == part.attno).unwrap()];
                let mut scan_key = std::mem::zeroed::<pg_sys::ScanKeyData>();
                pg_sys::ScanKeyEntryInitialize(
                    &mut scan_key,
                    0,
                    (i + 1) as i16,
                    pg_sys::BTEqualStrategyNumber as u16,
                    pg_sys::InvalidOid,
                    part.collation,
                    part.equality,
                    value.datum().expect("key values are never NULL").sans_lifetime(),
                );
                scan_key
            })
            .collect();
        let snapshot = pg_sys::RegisterSnapshot(snapshot);
        let index = pg_sys::index_open(key.index, lock);
        let nkeys = scan_keys.len() as i32;
        // PostgreSQL 18 takes where to count the scan for EXPLAIN: nowhere here.
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(rel.as_ptr(), index, snapshot, nkeys, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(rel.as_ptr(), index, snapshot, std::ptr::null_mut(), nkeys, 0);
        pg_sys::index_rescan(scan, scan_keys.as_mut_ptr(), scan_keys.len() as i32, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel.as_ptr(), std::ptr::null_mut());
        let row = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
            .then(|| found(slot));
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::UnregisterSnapshot(snapshot);
        row
    }
}

/// `to_jsonb(row)` for a row of type `row_type`. to_jsonb learns its argument's type from the
/// call expression, so it gets one, as if called from SQL.
unsafe fn row_to_jsonb(row_type: pg_sys::Oid, row: pg_sys::Datum) -> pg_sys::Datum {
    let mut to_jsonb = std::mem::zeroed::<pg_sys::FmgrInfo>();
    pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TO_JSONB), &mut to_jsonb);
    let mut args = PgList::<pg_sys::Node>::new();
    args.push(pg_sys::makeNullConst(row_type, -1, pg_sys::InvalidOid).cast());
    to_jsonb.fn_expr = pg_sys::makeFuncExpr(
        pg_sys::Oid::from(pg_sys::F_TO_JSONB),
        pg_sys::JSONBOID,
        args.into_pg(),
        pg_sys::InvalidOid,
        pg_sys::InvalidOid,
        pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
    )
    .cast();
    pg_sys::FunctionCall1Coll(&mut to_jsonb, pg_sys::InvalidOid, row)
}

/// The first column of the first row, if there is a row.
fn first<T: FromDatum + IntoDatum>(rows: SpiTupleTable<'_>) -> Option<T> {
    if rows.is_empty() {
        None
    } else {
        rows.first().get_one::<T>().unwrap()
    }
}

/// The same argument once more, for a second statement.
fn again<'a>(value: &DatumWithOid<'a>) -> DatumWithOid<'a> {
    // SAFETY: the same datum and type; it lives as long as the original.
    unsafe { DatumWithOid::new_from_datum(value.datum(), value.oid()) }
}

/// `value` as a JSON object, or an error naming the argument.
fn object(value: JsonB, argument: &str) -> Map<String, Value> {
    match value.0 {
        Value::Object(map) => map,
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{argument} must be a JSON object of column names and values, not {other}"),
            format!("pass e.g. '{{\"key\": \"books\"}}'::jsonb as {argument}"),
        ),
    }
}

/// The unique key whose columns are exactly the key's: that index is what makes one row per
/// key true.
fn unique_key<'t>(table: &'t UserTable, key: &Map<String, Value>) -> &'t UniqueKey {
    if key.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "key must name at least one column",
            "pass the columns of a unique key of the table, e.g. '{\"key\": \"books\"}'",
        );
    }
    let mut columns: Vec<i16> = key.keys().map(|name| table.column(name, "key").attno).collect();
    columns.sort_unstable();
    let Some(unique_key) = table.unique_key(&columns) else {
        let known: Vec<String> = table
            .unique_keys
            .iter()
            .map(|k| table.column_list(k.columns.iter().copied()))
            .collect();
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE,
            format!(
                "table {} has no unique index on exactly the key's columns {}",
                table.name,
                table.column_list(columns.iter().copied())
            ),
            if known.is_empty() {
                format!(
                    "the table has no usable unique index; create one: CREATE UNIQUE INDEX ON {} {}",
                    table.name,
                    table.column_list(columns.iter().copied())
                )
            } else {
                format!("use the columns of one of its unique keys: {}", known.join(", "))
            },
        );
    };
    unique_key
}

/// Parameter types of a statement over `columns`: the columns' own types.
fn types(table: &UserTable, columns: &[i16]) -> Vec<PgOid> {
    columns
        .iter()
        .map(|a| PgOid::from(table.by_attno(*a).type_oid))
        .collect()
}

/// The values of `object` for `columns`, in that order, converted to the columns' types.
fn values(
    table: &UserTable,
    columns: &[i16],
    object: &Map<String, Value>,
    argument: &str,
) -> Vec<DatumWithOid<'static>> {
    columns
        .iter()
        .map(|a| {
            let column = table.by_attno(*a);
            let value = &object[&column.name];
            if value.is_null() && argument == "key" {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("key column {} must not be null", column.sql()),
                    "a unique index never matches NULL, so every call would create another row",
                );
            }
            column.value_of_json(value)
        })
        .collect()
}

/// `col` must be a number column outside the key, and `by` must fit its kind of number.
fn check_counter(table: &UserTable, counter: &Column, key_columns: &[i16], by: &AnyNumeric) {
    if key_columns.contains(&counter.attno) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("column {} is part of the key and cannot be incremented", counter.sql()),
            "increment a counter column outside the key",
        );
    }
    let base = counter.base_type;
    let integer = [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&base);
    if !integer && ![pg_sys::NUMERICOID, pg_sys::FLOAT4OID, pg_sys::FLOAT8OID].contains(&base) {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("column {} of {} is not a number column", counter.sql(), table.name),
            "col must name a smallint, integer, bigint, numeric, real or double precision column",
        );
    }
    finite(by, "by");
    if integer && by.floor() != *by {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("by = {by} is not a whole number, but column {} holds integers", counter.sql()),
            "pass a whole number, or make the column numeric",
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap()
    }

    fn counters() {
        Spi::run(
            "CREATE TABLE counters (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE,
                                    value int NOT NULL DEFAULT 0, note text DEFAULT 'new')",
        )
        .unwrap();
    }

    #[pg_test]
    fn the_first_call_creates_with_defaults_and_later_calls_find() {
        counters();
        assert_eq!(
            text("SELECT data::text || ' ' || created FROM exactly.find_or_create('counters', '{\"key\": \"books\"}', '{\"value\": 5}')"),
            r#"{"id": 1, "key": "books", "note": "new", "value": 5} true"#
        );
        assert_eq!(
            text("SELECT data::text || ' ' || created FROM exactly.find_or_create('counters', '{\"key\": \"books\"}', '{\"value\": 9}')"),
            r#"{"id": 1, "key": "books", "note": "new", "value": 5} false"#
        );
        // finding an existing row draws no id (the sequence is found by its column: tests
        // running side by side create tables of the same names, and their sequences' names
        // can differ)
        assert_eq!(
            text("SELECT pg_sequence_last_value(pg_get_serial_sequence('counters', 'id'))::text"),
            "1"
        );
    }

    #[pg_test]
    fn increment_creates_at_by_then_adds() {
        counters();
        let increment = "SELECT exactly.increment('counters', '{\"key\": \"hits\"}', 'value', 3)::text";
        assert_eq!(text(increment), "3");
        assert_eq!(text(increment), "6");
        assert_eq!(text("SELECT value::text FROM counters WHERE key = 'hits'"), "6");
    }

    #[pg_test]
    fn a_unique_index_created_later_is_seen_by_the_next_call() {
        counters();
        // the table's description is cached by this call (tests/upsert.rs shows the refusal
        // before the index exists, from a client: an error here would end the test)
        assert_eq!(
            text("SELECT created::text FROM exactly.find_or_create('counters', '{\"key\": \"k0\"}')"),
            "true"
        );
        let by_note = "SELECT created::text FROM exactly.find_or_create('counters', '{\"note\": \"n1\", \"key\": \"k1\"}')";
        Spi::run("CREATE UNIQUE INDEX ON counters (note, key)").unwrap();
        assert_eq!(text(by_note), "true");
        Spi::run("ALTER TABLE counters ADD COLUMN extra int DEFAULT 7").unwrap();
        assert_eq!(
            text("SELECT data->>'extra' FROM exactly.find_or_create('counters', '{\"key\": \"k1\"}')"),
            "7"
        );
    }

    #[pg_test]
    fn a_key_and_a_default_are_not_the_same_statement_as_a_longer_key() {
        Spi::run("CREATE TABLE ab (id serial PRIMARY KEY, a int NOT NULL UNIQUE, b int NOT NULL, UNIQUE (a, b))")
            .unwrap();
        let call = |key: &str, defaults: &str| {
            text(&format!("SELECT data->>'id' || ' ' || created FROM exactly.find_or_create('ab', '{key}', '{defaults}')"))
        };
        assert_eq!(call(r#"{"a": 7}"#, r#"{"b": 1}"#), "1 true");
        assert_eq!(call(r#"{"a": 7, "b": 1}"#, "{}"), "1 false");
        assert_eq!(call(r#"{"a": 8, "b": 2}"#, "{}"), "2 true");
    }

    #[pg_test(error = "no row for key {\"name\":\"Foo\"} in public.lower_keys after 10 inserts that found the key taken")]
    fn a_trigger_that_rewrites_the_key_is_reported_not_looped_on() {
        Spi::run(
            "CREATE TABLE lower_keys (id serial PRIMARY KEY, name text UNIQUE);
             CREATE FUNCTION lower_name() RETURNS trigger LANGUAGE plpgsql AS
                 'BEGIN NEW.name := lower(NEW.name); RETURN NEW; END';
             CREATE TRIGGER lower_name BEFORE INSERT ON lower_keys FOR EACH ROW EXECUTE FUNCTION lower_name();",
        )
        .unwrap();
        let call = "SELECT created FROM exactly.find_or_create('lower_keys', '{\"name\": \"Foo\"}')";
        assert_eq!(Spi::get_one::<bool>(call), Ok(Some(true)));
        Spi::run(call).unwrap();
    }

    #[pg_test]
    fn a_partitioned_table_is_looked_up_by_a_statement() {
        Spi::run(
            "CREATE TABLE parted (region text, key text, n int DEFAULT 0, PRIMARY KEY (region, key))
                 PARTITION BY LIST (region);
             CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');",
        )
        .unwrap();
        let call = "SELECT data::text || ' ' || created FROM exactly.find_or_create('parted', '{\"region\": \"eu\", \"key\": \"k\"}')";
        assert_eq!(text(call), r#"{"n": 0, "key": "k", "region": "eu"} true"#);
        assert_eq!(text(call), r#"{"n": 0, "key": "k", "region": "eu"} false"#);
        assert_eq!(
            text("SELECT exactly.increment('parted', '{\"region\": \"eu\", \"key\": \"k\"}', 'n', 2)::text"),
            "2"
        );
    }

    #[pg_test]
    fn json_values_go_into_json_columns_as_json() {
        Spi::run("CREATE TABLE docs (key text PRIMARY KEY, meta jsonb, tags text[])").unwrap();
        assert_eq!(
            text(r#"SELECT data::text FROM exactly.find_or_create('docs', '{"key": "d"}', '{"meta": "hello", "tags": "{a,b}"}')"#),
            r#"{"key": "d", "meta": "hello", "tags": ["a", "b"]}"#
        );
    }

    #[pg_test]
    fn values_are_parameters_and_names_are_quoted() {
        Spi::run(r#"CREATE TABLE "odd ""table""" ("select" text PRIMARY KEY, "Mixed Case" int DEFAULT 1)"#)
            .unwrap();
        let row = text(
            r#"SELECT data::text FROM exactly.find_or_create('"odd ""table"""', '{"select": "x''); DROP TABLE \"odd \"\"table\"\"\"; --"}')"#,
        );
        assert_eq!(
            row,
            r#"{"select": "x'); DROP TABLE \"odd \"\"table\"\"\"; --", "Mixed Case": 1}"#
        );
        assert_eq!(
            text(r#"SELECT exactly.increment('"odd ""table"""', '{"select": "y"}', 'Mixed Case')::text"#),
            "1"
        );
    }
}
