//! What our functions know about a user's own table, and the statements they run on it.
//!
//! `find_or_create`, `increment` and the claims work on any table: their SQL is written per
//! (table, columns) at the first call and prepared once, as PL/pgSQL would for a function
//! written for that table. What the SQL is built from (the table's qualified name, its
//! columns and types, its unique keys) is read from the catalogs once per backend and
//! forgotten when the server says the table changed (a relcache invalidation: a column
//! added, dropped, renamed or retyped, an index created or dropped), together with the
//! statements built from it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{PgBuiltInOids, PgRelation};

use crate::errors::raise;
use crate::spi_plans;

const OID: PgOid = PgOid::BuiltIn(PgBuiltInOids::OIDOID);

/// Schema-qualified and quoted, so the cached SQL means the same table whatever the caller's
/// search_path is later.
const TABLE: &str = "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = $1";
const COLUMNS: &str = "SELECT attname::text, attnum, atttypid, atttypmod
    FROM pg_catalog.pg_attribute
    WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum";
/// Indexes `INSERT ... ON CONFLICT (columns)` can use as its arbiter: unique, valid, checked
/// immediately, on plain columns, over the whole table.
const UNIQUE_KEYS: &str = "SELECT indkey::int2[], indnkeyatts, indisprimary
    FROM pg_catalog.pg_index
    WHERE indrelid = $1 AND indisunique AND indisvalid AND indimmediate
      AND indexprs IS NULL AND indpred IS NULL
    ORDER BY indisprimary DESC, indexrelid";

pub struct Column {
    pub name: String,
    pub attno: i16,
    pub type_oid: pg_sys::Oid,
    pub typmod: i32,
}

impl Column {
    /// The name quoted for SQL.
    pub fn sql(&self) -> String {
        quote_identifier(&self.name)
    }
}

pub struct UserTable {
    /// Schema-qualified and quoted: safe to write into SQL as is.
    pub name: String,
    /// In attribute-number order; dropped columns left out.
    pub columns: Vec<Column>,
    /// The key columns (attribute numbers, ascending) of each unique key; the primary key
    /// first when there is one.
    pub unique_keys: Vec<Vec<i16>>,
    pub has_primary_key: bool,
    /// Set by the invalidation callback; the next `open` reads the catalogs again.
    stale: Cell<bool>,
    statements: RefCell<HashMap<(&'static str, Vec<i16>), Rc<OwnedPreparedStatement>>>,
}

thread_local! {
    static TABLES: RefCell<HashMap<pg_sys::Oid, Rc<UserTable>>> = RefCell::new(HashMap::new());
    /// Set when an invalidation arrived while TABLES was borrowed (it never is across a call
    /// into the server, but better safe): then every entry is forgotten.
    static ALL_STALE: Cell<bool> = const { Cell::new(false) };
}

/// Registered in `_PG_init`. Runs whenever this backend processes a relcache invalidation;
/// it only marks, it frees nothing: a statement of ours may be running further up the stack.
#[pg_guard]
pub unsafe extern "C-unwind" fn forget_changed_table(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    TABLES.with(|tables| match tables.try_borrow() {
        Ok(tables) if relid != pg_sys::InvalidOid => {
            if let Some(table) = tables.get(&relid) {
                table.stale.set(true);
            }
        }
        _ => ALL_STALE.with(|all| all.set(true)),
    });
}

pub fn register_invalidation_callback() {
    // SAFETY: called once from _PG_init; the callback lives as long as the library.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_changed_table), pg_sys::Datum::from(0));
    }
}

/// What we know about `rel`, read from the catalogs when not known yet or changed since.
pub fn open(client: &mut SpiClient<'_>, rel: &PgRelation) -> Rc<UserTable> {
    let relid = rel.oid();
    if ALL_STALE.with(|all| all.replace(false)) {
        TABLES.with(|tables| tables.borrow_mut().clear());
    }
    let known = TABLES.with(|tables| tables.borrow().get(&relid).cloned());
    if let Some(table) = known.filter(|t| !t.stale.get()) {
        return table;
    }
    let table = Rc::new(read_catalogs(client, relid));
    TABLES.with(|tables| tables.borrow_mut().insert(relid, table.clone()));
    table
}

fn read_catalogs(client: &mut SpiClient<'_>, relid: pg_sys::Oid) -> UserTable {
    let row = spi_plans::run(client, TABLE, &[OID], &[relid.into()]).first();
    let (name, kind) = (
        row.get::<String>(1).unwrap().unwrap(),
        row.get::<String>(2).unwrap().unwrap(),
    );
    if kind != "r" && kind != "p" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{name}\" is not a table"),
            "pass a table (a view, index or sequence has no rows of its own to lock)",
        );
    }
    let columns = spi_plans::run(client, COLUMNS, &[OID], &[relid.into()])
        .map(|row| Column {
            name: row.get::<String>(1).unwrap().unwrap(),
            attno: row.get::<i16>(2).unwrap().unwrap(),
            type_oid: row.get::<pg_sys::Oid>(3).unwrap().unwrap(),
            typmod: row.get::<i32>(4).unwrap().unwrap(),
        })
        .collect();
    let mut has_primary_key = false;
    let unique_keys = spi_plans::run(client, UNIQUE_KEYS, &[OID], &[relid.into()])
        .map(|row| {
            let mut key: Vec<i16> = row.get::<Vec<i16>>(1).unwrap().unwrap();
            key.truncate(row.get::<i16>(2).unwrap().unwrap() as usize); // INCLUDE columns are no part of the key
            key.sort_unstable();
            has_primary_key |= row.get::<bool>(3).unwrap().unwrap();
            key
        })
        .collect();
    UserTable {
        name,
        columns,
        unique_keys,
        has_primary_key,
        stale: Cell::new(false),
        statements: RefCell::new(HashMap::new()),
    }
}

impl UserTable {
    /// Column `name`, or an error that says which argument named it.
    pub fn column(&self, name: &str, argument: &str) -> &Column {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("column \"{name}\" of table {} does not exist", self.name),
                    format!(
                        "{argument} must name columns of the table; it has {}",
                        self.column_list(self.columns.iter().map(|c| c.attno))
                    ),
                )
            })
    }

    pub fn by_attno(&self, attno: i16) -> &Column {
        self.columns.iter().find(|c| c.attno == attno).unwrap()
    }

    /// `(a, b)` for the columns `attnos`, quoted: for SQL and for messages alike.
    pub fn column_list(&self, attnos: impl IntoIterator<Item = i16>) -> String {
        let names: Vec<String> = attnos.into_iter().map(|a| self.by_attno(a).sql()).collect();
        format!("({})", names.join(", "))
    }

    /// Run the statement `purpose` built for `columns`, writing and preparing it with `build`
    /// on first use (SQL text, parameter types) and keeping it while the table is unchanged.
    pub fn run<'conn>(
        &self,
        client: &mut SpiClient<'conn>,
        purpose: &'static str,
        columns: &[i16],
        build: impl FnOnce(&Self) -> (String, Vec<PgOid>),
        args: &[pgrx::datum::DatumWithOid<'_>],
    ) -> SpiTupleTable<'conn> {
        let known = self
            .statements
            .borrow()
            .get(&(purpose, columns.to_vec()))
            .cloned();
        let statement = match known {
            Some(statement) => statement,
            None => {
                let (sql, types) = build(self);
                let statement = Rc::new(
                    client
                        .prepare_mut(&sql, &types)
                        .unwrap_or_else(|e| panic!("preparing {sql}: {e}"))
                        .keep(),
                );
                self.statements
                    .borrow_mut()
                    .insert((purpose, columns.to_vec()), statement.clone());
                statement
            }
        };
        client
            .update(&*statement, None, args)
            .unwrap_or_else(|e| panic!("running {purpose} on {}: {e}", self.name))
    }
}

/// An identifier quoted for SQL when it needs to be (the server's own rules and keywords).
pub fn quote_identifier(name: &str) -> String {
    let name = std::ffi::CString::new(name).expect("identifiers hold no NUL");
    // SAFETY: quote_identifier reads a C string and returns it or a palloc'd quoted copy.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}
