//! What our functions know about a user's own table, and the statements they run on it.
//!
//! `find_or_create`, `increment` and the claims work on any table: their SQL is written per
//! (table, columns) at the first call and prepared once, as PL/pgSQL would for a function
//! written for that table. What the SQL is built from (the table's qualified name, its
//! columns and types, its unique keys) is read from the relation cache once per backend and
//! forgotten when the server says the table changed (a relcache invalidation: a column
//! added, dropped, renamed or retyped, an index created or dropped), together with the
//! statements built from it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{PgList, PgMemoryContexts, PgRelation};

use crate::errors::raise;

pub struct Column {
    pub name: String,
    pub attno: i16,
    pub type_oid: pg_sys::Oid,
    pub typmod: i32,
    /// The type under any domains: what kind of value the column holds.
    pub base_type: pg_sys::Oid,
    /// The type's input function and its type parameter: how a value's text becomes a
    /// value of the column (looked up once here, not on every call).
    pub input_function: pg_sys::Oid,
    pub input_param: pg_sys::Oid,
}

impl Column {
    /// The name quoted for SQL.
    pub fn sql(&self) -> String {
        quote_identifier(&self.name)
    }

    /// The type's name for SQL, schema-qualified and quoted where needed.
    pub fn type_sql(&self) -> String {
        // SAFETY: a type oid read from the catalogs; the result is a palloc'd C string.
        unsafe { CStr::from_ptr(pg_sys::format_type_be_qualified(self.type_oid)) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A unique index `INSERT ... ON CONFLICT (columns)` can use as its arbiter: unique, valid,
/// checked at once, on plain columns, over the whole table.
pub struct UniqueKey {
    /// The key columns (attribute numbers, ascending).
    pub columns: Vec<i16>,
    pub index: pg_sys::Oid,
    /// Per index column, in the index's order: the table column, and the equality function
    /// and collation an index scan for one key value needs.
    pub probe: Vec<(i16, pg_sys::RegProcedure, pg_sys::Oid)>,
}

pub struct UserTable {
    /// Schema-qualified and quoted: safe to write into SQL as is.
    pub name: String,
    /// The table's row type.
    pub row_type: pg_sys::Oid,
    /// A partitioned table: its rows and indexes are its partitions'.
    pub partitioned: bool,
    /// In attribute-number order; dropped columns left out.
    pub columns: Vec<Column>,
    /// The primary key first when there is one.
    pub unique_keys: Vec<UniqueKey>,
    has_primary_key: bool,
    /// Set by the invalidation callback; the next `open` reads the catalogs again.
    stale: Cell<bool>,
    statements: RefCell<HashMap<(&'static str, Vec<i32>), Rc<OwnedPreparedStatement>>>,
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

/// What we know about table `relid`, read when not known yet or changed since.
pub fn open(relid: pg_sys::Oid) -> Rc<UserTable> {
    if ALL_STALE.with(|all| all.replace(false)) {
        TABLES.with(|tables| tables.borrow_mut().clear());
    }
    let known = TABLES.with(|tables| tables.borrow().get(&relid).cloned());
    if let Some(table) = known.filter(|t| !t.stale.get()) {
        return table;
    }
    let table = Rc::new(read_relcache(relid));
    TABLES.with(|tables| tables.borrow_mut().insert(relid, table.clone()));
    table
}

/// Read the table's description from the relation cache: the server's current view of it,
/// whatever the transaction's snapshot (a REPEATABLE READ snapshot may predate a change).
fn read_relcache(relid: pg_sys::Oid) -> UserTable {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: the relation (and each index) is opened and locked before it is read, and
    // closed when its PgRelation is dropped; the lock lasts to the end of the transaction.
    unsafe {
        let rel = pg_sys::try_relation_open(relid, lock);
        if rel.is_null() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("table with OID {} does not exist", relid.to_u32()),
                "it was dropped, or the OID is wrong",
            );
        }
        let rel = PgRelation::from_pg_owned(rel);
        let name = CStr::from_ptr(pg_sys::quote_qualified_identifier(
            pg_sys::get_namespace_name(rel.namespace_oid()),
            (*rel.rd_rel).relname.data.as_ptr(),
        ))
        .to_string_lossy()
        .into_owned();
        let kind = (*rel.rd_rel).relkind as u8;
        if kind != pg_sys::RELKIND_RELATION && kind != pg_sys::RELKIND_PARTITIONED_TABLE {
            raise(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("{name} is not a table"),
                "pass a table (a view, index or sequence has no rows of its own to lock)",
            );
        }
        let columns = rel
            .tuple_desc()
            .iter()
            .filter(|att| !att.attisdropped)
            .map(|att| {
                let (mut input_function, mut input_param) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
                pg_sys::getTypeInputInfo(att.atttypid, &mut input_function, &mut input_param);
                Column {
                    name: att.name().to_string(),
                    attno: att.attnum,
                    type_oid: att.atttypid,
                    typmod: att.atttypmod,
                    base_type: pg_sys::getBaseType(att.atttypid),
                    input_function,
                    input_param,
                }
            })
            .collect();
        let mut has_primary_key = false;
        let mut unique_keys = vec![];
        let indexes = PgList::<pg_sys::Oid>::from_pg(pg_sys::RelationGetIndexList(rel.as_ptr()));
        for index_oid in indexes.iter_oid() {
            let index = PgRelation::with_lock(index_oid, lock);
            let form = &*index.rd_index;
            let in_index_order = form.indkey.values.as_slice(form.indnkeyatts as usize);
            // 0 stands for an expression
            if !form.indisunique
                || !form.indisvalid
                || !form.indimmediate
                || in_index_order.contains(&0)
                || !pg_sys::RelationGetIndexPredicate(index.as_ptr()).is_null()
            {
                continue;
            }
            let probe = in_index_order
                .iter()
                .enumerate()
                .map(|(i, &attno)| {
                    let opcintype = *index.rd_opcintype.add(i);
                    let equality = pg_sys::get_opfamily_member(
                        *index.rd_opfamily.add(i),
                        opcintype,
                        opcintype,
                        pg_sys::BTEqualStrategyNumber as i16,
                    );
                    (attno, pg_sys::get_opcode(equality), *index.rd_indcollation.add(i))
                })
                .collect();
            let mut columns = in_index_order.to_vec();
            columns.sort_unstable();
            let key = UniqueKey { columns, index: index_oid, probe };
            if form.indisprimary {
                has_primary_key = true;
                unique_keys.insert(0, key);
            } else {
                unique_keys.push(key);
            }
        }
        UserTable {
            name,
            row_type: (*rel.rd_rel).reltype,
            partitioned: kind == pg_sys::RELKIND_PARTITIONED_TABLE,
            columns,
            unique_keys,
            has_primary_key,
            stale: Cell::new(false),
            statements: RefCell::new(HashMap::new()),
        }
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

    /// The primary key's columns, if the table has one.
    pub fn primary_key(&self) -> Option<&[i16]> {
        self.has_primary_key.then(|| self.unique_keys[0].columns.as_slice())
    }

    /// The unique key on exactly `columns` (ascending attribute numbers), if there is one.
    pub fn unique_key(&self, columns: &[i16]) -> Option<&UniqueKey> {
        self.unique_keys.iter().find(|k| k.columns == columns)
    }

    pub fn by_attno(&self, attno: i16) -> &Column {
        self.columns.iter().find(|c| c.attno == attno).unwrap()
    }

    /// `(a, b)` for the columns `attnos`, quoted: for SQL and for messages alike.
    pub fn column_list(&self, attnos: impl IntoIterator<Item = i16>) -> String {
        let names: Vec<String> = attnos.into_iter().map(|a| self.by_attno(a).sql()).collect();
        format!("({})", names.join(", "))
    }

    /// Run the statement `purpose` built for `shape` (what its SQL is written from: column
    /// numbers, lists of them told apart by a 0, which is never a column number, or a
    /// number written into the SQL), writing and preparing it with `build` on first use
    /// (SQL text, parameter types) and keeping it while the table is unchanged.
    pub fn run<'conn>(
        &self,
        client: &mut SpiClient<'conn>,
        purpose: &'static str,
        shape: &[i32],
        build: impl FnOnce(&Self) -> (String, Vec<PgOid>),
        args: &[pgrx::datum::DatumWithOid<'_>],
    ) -> SpiTupleTable<'conn> {
        let known = self
            .statements
            .borrow()
            .get(&(purpose, shape.to_vec()))
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
                    .insert((purpose, shape.to_vec()), statement.clone());
                statement
            }
        };
        client
            .update(&*statement, None, args)
            .unwrap_or_else(|e| panic!("running {purpose} on {}: {e}", self.name))
    }
}

/// A jsonb value as the server built it, returned as is: no round trip through text.
pub struct RowJson(pub pg_sys::Datum);

impl RowJson {
    /// A copy in `context` of a jsonb datum of an SPI result (SPI's memory ends with the
    /// connection).
    ///
    /// # Safety
    /// `datum` must be a jsonb value.
    pub unsafe fn copy(context: pg_sys::MemoryContext, datum: pg_sys::Datum) -> RowJson {
        RowJson(unsafe {
            PgMemoryContexts::For(context).switch_to(|_| {
                pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr()))
            })
        })
    }
}

impl IntoDatum for RowJson {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum is a jsonb varlena in memory that outlives the call (see its makers).
unsafe impl BoxRet for RowJson {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

pgrx::impl_sql_translatable!(RowJson, "jsonb");

/// An identifier quoted for SQL when it needs to be (the server's own rules and keywords).
pub fn quote_identifier(name: &str) -> String {
    let name = std::ffi::CString::new(name).expect("identifiers hold no NUL");
    // SAFETY: quote_identifier reads a C string and returns it or a palloc'd quoted copy.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}
