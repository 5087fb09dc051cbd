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
use std::ffi::{CStr, CString};
use std::rc::Rc;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::datum::DatumWithOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use serde_json::Value;
use pgrx::{PgList, PgRelation};

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
    /// How a value is stored: its length (-1 varlena, -2 C string) and whether by value.
    pub typlen: i16,
    pub typbyval: bool,
}

impl Column {
    /// A JSON value as a value of `column`'s type: its text through the type's input function,
    /// as a literal in SQL would be (a JSON string's contents, a number's digits exactly as
    /// written, `true`/`false` for a boolean). A json or jsonb column gets the value itself, as
    /// JSON; anywhere else an object, an array or a boolean is refused rather than turned into
    /// text.
    pub fn value_of_json(&self, value: &Value) -> DatumWithOid<'static> {
            let column = self;
        let json_column = [pg_sys::JSONOID, pg_sys::JSONBOID].contains(&column.base_type);
        let kind = match value {
            Value::Bool(_) if !json_column && column.base_type != pg_sys::BOOLOID => Some("true or false"),
            Value::Object(_) if !json_column => Some("an object"),
            Value::Array(_) if !json_column => Some("an array"),
            _ => None,
        };
        if let Some(kind) = kind {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("column {} is not boolean or JSON, so its value cannot be {kind}: {value}", column.sql()),
                format!(
                    "pass the value as a JSON string in the column type's own form, e.g. {{\"{}\": \"...\"}}",
                    column.name
                ),
            );
        }
        let text = match value {
            Value::Null => return DatumWithOid::null_oid(column.type_oid),
            Value::String(s) if !json_column => s.clone(),
            other => other.to_string(),
        };
        let text = CString::new(text).expect("jsonb strings hold no NUL");
        // SAFETY: the column's input function, read with the table's description; a value it
        // rejects raises that function's own error (e.g. 22P02).
        unsafe {
            let datum = pg_sys::OidInputFunctionCall(
                column.input_function,
                text.as_ptr() as *mut _,
                column.input_param,
                column.typmod,
            );
            DatumWithOid::new(datum, column.type_oid)
        }
    }

    /// The name quoted for SQL.
    pub fn sql(&self) -> String {
        quote_identifier(&self.name)
    }
}

/// A unique index `INSERT ... ON CONFLICT (columns)` can use as its arbiter: unique, valid,
/// checked at once, on plain columns, over the whole table.
pub struct UniqueKey {
    /// The key columns (attribute numbers, ascending).
    pub columns: Vec<i16>,
    pub index: pg_sys::Oid,
    /// One per index column, in the index's order.
    pub parts: Vec<KeyPart>,
}

/// How one column of a unique key is compared: by the index's own operator class, never by
/// looking an operator up by name (a user's type may live in a schema anyone can write to).
pub struct KeyPart {
    pub attno: i16,
    pub collation: pg_sys::Oid,
    /// The btree equality and comparison (support 1) functions, for an index probe and for
    /// comparing keys in Rust.
    pub equality: pg_sys::RegProcedure,
    pub comparison: pg_sys::RegProcedure,
    /// The default hash opclass's extended hash function (0 when the type has none): equal
    /// values hash alike, whatever their bytes (1.5 and 1.50).
    hash: pg_sys::RegProcedure,
    /// SQL: the cast that gives an operand the operator class's own input type ("" when the
    /// column has it already), and the class's `=`, `>`, `>=` as `OPERATOR(schema.op)`.
    pub cast: String,
    pub eq: String,
    gt: String,
    ge: String,
}

impl KeyPart {
    /// `lhs = rhs` in SQL, by this column's operator class.
    pub fn eq_sql(&self, lhs: &str, rhs: &str) -> String {
        self.compare_sql(lhs, &self.eq, rhs)
    }

    /// `lhs > rhs` in SQL, in the index's order.
    pub fn gt_sql(&self, lhs: &str, rhs: &str) -> String {
        self.compare_sql(lhs, &self.gt, rhs)
    }

    /// `lhs >= rhs` in SQL, in the index's order.
    pub fn ge_sql(&self, lhs: &str, rhs: &str) -> String {
        self.compare_sql(lhs, &self.ge, rhs)
    }

    fn compare_sql(&self, lhs: &str, operator: &str, rhs: &str) -> String {
        // The operands get exactly the operator's argument types, so the qualified name
        // finds exactly that operator: an exact match in its schema, which is unique.
        format!("({lhs}){cast} {operator} ({rhs}){cast}", cast = self.cast)
    }

    /// Compare two values of this column in the index's order (Less, Equal, Greater).
    ///
    /// # Safety
    /// Both datums are values of the column's type.
    pub unsafe fn order(&self, a: pg_sys::Datum, b: pg_sys::Datum) -> std::cmp::Ordering {
        // SAFETY: the opfamily's comparison function for the column's type, as the caller says.
        let result = unsafe {
            pg_sys::OidFunctionCall2Coll(self.comparison, self.collation, a, b).value() as i32
        };
        result.cmp(&0)
    }
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
    /// A one-column integer primary key's own sequence (serial or identity): its column, the
    /// sequence, and whether it is an identity's (drawn from without a privilege check).
    pub key_sequence: Option<(i16, pg_sys::Oid, bool)>,
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
        let columns: Vec<Column> = rel
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
                    typlen: att.attlen,
                    typbyval: att.attbyval,
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
            let parts = in_index_order
                .iter()
                .enumerate()
                .map(|(i, &attno)| {
                    key_part(
                        attno,
                        *index.rd_opfamily.add(i),
                        *index.rd_opcintype.add(i),
                        *index.rd_indcollation.add(i),
                        columns.iter().find(|c: &&Column| c.attno == attno).unwrap().type_oid,
                    )
                })
                .collect();
            let mut columns = in_index_order.to_vec();
            columns.sort_unstable();
            let key = UniqueKey { columns, index: index_oid, parts };
            if form.indisprimary {
                has_primary_key = true;
                unique_keys.insert(0, key);
            } else {
                unique_keys.push(key);
            }
        }
        let key_sequence = match unique_keys.first() {
            Some(key) if has_primary_key && key.columns.len() == 1 => {
                key_sequence(relid, key.columns[0])
            }
            _ => None,
        };
        UserTable {
            name,
            row_type: (*rel.rd_rel).reltype,
            partitioned: kind == pg_sys::RELKIND_PARTITIONED_TABLE,
            columns,
            unique_keys,
            has_primary_key,
            key_sequence,
            stale: Cell::new(false),
            statements: RefCell::new(HashMap::new()),
        }
    }
}

/// Support function numbers of btree (comparison) and hash (extended hash) opfamilies.
const BTORDER_PROC: i16 = 1;
const HASHEXTENDED_PROC: i16 = 2;

/// How index column `attno` (of type `column_type`) is compared: its operator class's
/// operators, written schema-qualified for SQL, and its support functions.
///
/// # Safety
/// The arguments come from an open index's description.
unsafe fn key_part(
    attno: i16,
    opfamily: pg_sys::Oid,
    opcintype: pg_sys::Oid,
    collation: pg_sys::Oid,
    column_type: pg_sys::Oid,
) -> KeyPart {
    // SAFETY: catalog lookups of the opfamily's members, as the planner makes them.
    unsafe {
        let operator = |strategy: u32| {
            pg_sys::get_opfamily_member(opfamily, opcintype, opcintype, strategy as i16)
        };
        let equality = operator(pg_sys::BTEqualStrategyNumber);
        let pseudo = pg_sys::get_typtype(opcintype) as u8 == pg_sys::TYPTYPE_PSEUDO;
        // A polymorphic class (an enum's, an array's) has no type to cast to; its operators
        // are the system's own, in pg_catalog.
        let cast = if pseudo || opcintype == column_type {
            String::new()
        } else {
            format!("::{}", qualified_type(opcintype))
        };
        let hash_class = pg_sys::GetDefaultOpClass(opcintype, pg_sys::HASH_AM_OID);
        let hash = if hash_class == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            let family = pg_sys::get_opclass_family(hash_class);
            let input = pg_sys::get_opclass_input_type(hash_class);
            pg_sys::get_opfamily_proc(family, input, input, HASHEXTENDED_PROC)
        };
        KeyPart {
            attno,
            collation,
            equality: pg_sys::get_opcode(equality),
            comparison: pg_sys::get_opfamily_proc(
                opfamily,
                opcintype,
                opcintype,
                BTORDER_PROC,
            ),
            hash,
            cast,
            eq: operator_sql(equality),
            gt: operator_sql(operator(pg_sys::BTGreaterStrategyNumber)),
            ge: operator_sql(operator(pg_sys::BTGreaterEqualStrategyNumber)),
        }
    }
}

/// `OPERATOR(schema.op)` for operator `oid`.
unsafe fn operator_sql(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup, released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::OPEROID as i32,
            pg_sys::Datum::from(oid),
        );
        assert!(!tuple.is_null(), "operator {oid:?} of an index's operator class is missing");
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_operator>(tuple);
        let schema = CStr::from_ptr(pg_sys::quote_identifier(pg_sys::get_namespace_name(
            (*form).oprnamespace,
        )))
        .to_string_lossy()
        .into_owned();
        let name = CStr::from_ptr((*form).oprname.data.as_ptr()).to_string_lossy().into_owned();
        pg_sys::ReleaseSysCache(tuple);
        format!("OPERATOR({schema}.{name})")
    }
}

/// A type's name for SQL, schema-qualified and quoted where needed.
fn qualified_type(oid: pg_sys::Oid) -> String {
    // SAFETY: a type oid read from the catalogs; the result is a palloc'd C string.
    unsafe { CStr::from_ptr(pg_sys::format_type_be_qualified(oid)) }
        .to_string_lossy()
        .into_owned()
}

/// The sequence a serial or identity column `attno` of `relid` draws from, if it has one.
///
/// # Safety
/// `relid` is an open relation.
unsafe fn key_sequence(relid: pg_sys::Oid, attno: i16) -> Option<(i16, pg_sys::Oid, bool)> {
    // SAFETY: dependency lookups, as pg_get_serial_sequence makes them.
    unsafe {
        let sequences: Vec<pg_sys::Oid> =
            PgList::<pg_sys::Oid>::from_pg(pg_sys::getOwnedSequences(relid)).iter_oid().collect();
        sequences.into_iter().find_map(|sequence| {
            [(pg_sys::DependencyType::DEPENDENCY_INTERNAL, true), (pg_sys::DependencyType::DEPENDENCY_AUTO, false)]
                .into_iter()
                .find_map(|(kind, identity)| {
                    let (mut table, mut column) = (pg_sys::InvalidOid, 0);
                    let owned = pg_sys::sequenceIsOwned(sequence, kind as _, &mut table, &mut column);
                    (owned && table == relid && column == i32::from(attno))
                        .then_some((attno, sequence, identity))
                })
        })
    }
}

impl UniqueKey {
    /// The key's part on column `attno`.
    pub fn part(&self, attno: i16) -> &KeyPart {
        self.parts.iter().find(|p| p.attno == attno).unwrap()
    }

    /// The name of the lock that queues writers of the row with key `values` (in `columns`
    /// order) in table `relid`: equal keys give equal names, whatever their bytes, through
    /// each type's hash function (its stored bytes where it has none).
    ///
    /// # Safety
    /// `values` are non-NULL values of the key columns' types, in `columns` order.
    pub unsafe fn lock_name(&self, table: &UserTable, relid: pg_sys::Oid, values: &[pg_sys::Datum]) -> Vec<u8> {
        let mut name = relid.to_u32().to_le_bytes().to_vec();
        for (part, value) in self.parts.iter().map(|p| {
            (p, values[self.columns.iter().position(|&a| a == p.attno).unwrap()])
        }) {
            if part.hash != pg_sys::InvalidOid {
                // SAFETY: the type's own extended hash function, seed 0.
                let hash = unsafe {
                    pg_sys::OidFunctionCall2Coll(part.hash, part.collation, value, pg_sys::Datum::from(0u64))
                };
                name.extend_from_slice(&(hash.value() as u64).to_le_bytes());
            } else {
                // SAFETY: as the caller says.
                unsafe { push_image(&mut name, table.by_attno(part.attno), value) };
            }
        }
        name
    }

    /// The key's stored form: each part's value as the server stores it (detoasted), with
    /// its length, in index order. Two reads of one row's key give the same bytes whatever
    /// the session's settings; claims record rows by it.
    ///
    /// # Safety
    /// `values` are non-NULL values of the key's parts, in index order.
    pub unsafe fn image(&self, table: &UserTable, values: &[pg_sys::Datum]) -> Vec<u8> {
        let mut image = vec![];
        for (part, &value) in self.parts.iter().zip(values) {
            // SAFETY: as the caller says.
            unsafe { push_image(&mut image, table.by_attno(part.attno), value) };
        }
        image
    }

    /// The values an `image` was made from, as datums in the current memory context, in
    /// index order; None when the bytes do not fit the key's types (a row a superuser
    /// edited by hand, or a key retyped since).
    pub fn values_of_image(&self, table: &UserTable, image: &[u8]) -> Option<Vec<pg_sys::Datum>> {
        let mut rest = image;
        let mut values = vec![];
        for part in &self.parts {
            let column = table.by_attno(part.attno);
            let length = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let bytes = rest.get(4..4 + length)?;
            rest = &rest[4 + length..];
            values.push(datum_of_bytes(column, bytes)?);
        }
        rest.is_empty().then_some(values)
    }
}

/// Append `value`'s stored bytes, after their length, to `image`.
///
/// # Safety
/// `value` is a non-NULL value of `column`'s type.
unsafe fn push_image(image: &mut Vec<u8>, column: &Column, value: pg_sys::Datum) {
    // SAFETY: by the column's storage: by value, fixed length by reference, varlena
    // (detoasted: a 4-byte header and the whole value), or C string.
    let bytes: Vec<u8> = unsafe {
        match column.typlen {
            len if column.typbyval => (value.value() as u64).to_le_bytes()[..len as usize].to_vec(),
            len if len > 0 => std::slice::from_raw_parts(value.cast_mut_ptr::<u8>(), len as usize).to_vec(),
            -1 => {
                let flat = pg_sys::pg_detoast_datum(value.cast_mut_ptr());
                let size = varlena_size(flat.cast());
                std::slice::from_raw_parts(flat.cast::<u8>(), size).to_vec()
            }
            _ => CStr::from_ptr(value.cast_mut_ptr()).to_bytes_with_nul().to_vec(),
        }
    };
    image.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    image.extend_from_slice(&bytes);
}

/// The total size of a varlena with a 4-byte header (VARSIZE).
///
/// # Safety
/// `pointer` points to a detoasted varlena.
unsafe fn varlena_size(pointer: *const u8) -> usize {
    // SAFETY: the first four bytes are the header.
    let header = unsafe { std::ptr::read_unaligned(pointer.cast::<u32>()) };
    if cfg!(target_endian = "little") {
        (header >> 2) as usize
    } else {
        (header & 0x3FFF_FFFF) as usize
    }
}

/// A datum of `column`'s type from bytes `push_image` wrote, or None when they cannot be one.
fn datum_of_bytes(column: &Column, bytes: &[u8]) -> Option<pg_sys::Datum> {
    let len = column.typlen;
    if column.typbyval {
        if bytes.len() != len as usize {
            return None;
        }
        // as fetch_att reads them: signed, widened
        let mut le = [0u8; 8];
        le[..bytes.len()].copy_from_slice(bytes);
        let value = match len {
            1 => i64::from(le[0] as i8),
            2 => i64::from(i16::from_le_bytes([le[0], le[1]])),
            4 => i64::from(i32::from_le_bytes([le[0], le[1], le[2], le[3]])),
            _ => i64::from_le_bytes(le),
        };
        return Some(pg_sys::Datum::from(value));
    }
    let fits = match len {
        len if len > 0 => bytes.len() == len as usize,
        // SAFETY: at least the header's four bytes are there.
        -1 => bytes.len() >= 4 && unsafe { varlena_size(bytes.as_ptr()) } == bytes.len()
            // a plain 4-byte header (VARATT_IS_4B_U): not compressed, not external
            && bytes[0] & if cfg!(target_endian = "little") { 0x03 } else { 0xC0 } == 0,
        _ => bytes.last() == Some(&0) && !bytes[..bytes.len() - 1].contains(&0),
    };
    if !fits {
        return None;
    }
    // SAFETY: a copy in the current memory context, as long as the bytes.
    unsafe {
        let copy = pg_sys::palloc(bytes.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
        Some(pg_sys::Datum::from(copy))
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

/// A `regclass` argument naming the caller's table. The server would open a relation
/// argument for us and fail with an internal error on an OID that names none; `open` says
/// 42P01 instead.
pub struct RelArg(pg_sys::Oid);

impl RelArg {
    /// The relation, opened and locked (AccessShareLock, to the end of the transaction).
    pub fn open(self) -> PgRelation {
        // SAFETY: try_relation_open returns NULL for an OID that names no relation.
        let rel = unsafe { pg_sys::try_relation_open(self.0, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
        if rel.is_null() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("table with OID {} does not exist", self.0.to_u32()),
                "pass the table's name, e.g. 'public.resources'",
            );
        }
        // SAFETY: an open relation, closed when the PgRelation is dropped.
        let rel = unsafe { PgRelation::from_pg_owned(rel) };
        // A caller with no privilege on the table at all learns nothing about it from us (its
        // keys, its columns): the statements would refuse it anyway, with less to say.
        let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT | pg_sys::ACL_UPDATE) as pg_sys::AclMode;
        let any = pg_sys::AclMaskHow::ACLMASK_ANY;
        // SAFETY: privilege lookups for the current user on an open relation.
        let allowed = unsafe {
            let user = pg_sys::GetUserId();
            pg_sys::pg_class_aclmask(self.0, user, wanted, any) != 0
                || pg_sys::pg_attribute_aclcheck_all(self.0, user, wanted, any) == pg_sys::AclResult::ACLCHECK_OK
        };
        if !allowed {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("permission denied for table {}", rel.name()),
                "the caller needs privileges on the table (SELECT, INSERT or UPDATE, as the call does)",
            );
        }
        rel
    }
}

impl FromDatum for RelArg {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        // SAFETY: a regclass datum is an OID.
        (!is_null).then(|| RelArg(unsafe { pg_sys::Oid::from_datum(datum, false) }.unwrap()))
    }
}

// SAFETY: read from the argument's datum like any FromDatum type.
unsafe impl<'fcx> ArgAbi<'fcx> for RelArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(RelArg, arg_only = "regclass");

/// A jsonb value as the server built it, returned as is: no round trip through text.
pub struct RowJson(pub pg_sys::Datum);

impl RowJson {
    /// A copy in `context` of a jsonb datum of an SPI result (SPI's memory ends with the
    /// connection).
    ///
    /// # Safety
    /// `datum` must be a jsonb value.
    pub unsafe fn copy(context: pg_sys::MemoryContext, datum: pg_sys::Datum) -> RowJson {
        RowJson(unsafe { crate::spi_plans::copy_out(context, datum) })
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
