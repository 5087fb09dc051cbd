//! User tables of any shape (contract point 5), written from the README, DESIGN.md and the
//! 0.3 brief only: find_or_create, increment, claim_batch / complete_batch / extend_claim /
//! release_claim and the two triggers (assign_invoice_number, maintain_running_balance) on
//! tables whose columns are named after every alias, keyword or function generated SQL might
//! use, on odd table and schema names, on every common key type as a single key and as 2-
//! and 3-column composite primary keys, on domains, generated columns, partitioned tables
//! and tables with row-level security (used by their owner).
//!
//! Claim keys must be values of their own type: claimed under one `DateStyle` /
//! `extra_float_digits` / `TimeZone` and completed under another, exactly the claimed rows
//! are marked, and a full drain hands every row out exactly once (also with 8 workers on
//! uuid and composite keys). JSON values for keys: `true`/`false` only for a boolean column,
//! objects and arrays only for json/jsonb columns, otherwise 22023.
//!
//! Most tests check many shapes; each collects every fault it finds (`Faults`) and fails at
//! the end with the whole list, so one run shows everything that is wrong.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use common::{at_once, Client, Cluster};

// ---------------------------------------------------------------------------------------
// helpers

/// Every column name generated SQL might use as an alias, keyword or function name, plus
/// names with spaces, quotes, dots, mixed case, `oid` (a user column since PG 12) and
/// strings that look like format directives or parameters.
const ODD: &[&str] = &[
    "t", "excluded", "data", "created", "key", "k", "o", "picked", "claims", "claim", "rel",
    "now", "to_jsonb", "coalesce", "count", "row_keys", "select", "Mixed Case", "with space",
    "quote\"d", "dot.ted", "oid", "it's", "$1", "%I", "row", "old", "new", "ctid_", "xmin_",
];

/// A SQL identifier, quoted.
fn qi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
fn ql(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A JSON string.
fn js(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object from (column, JSON value) pairs.
fn obj(pairs: &[(&str, String)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{}: {}", js(k), v)).collect();
    format!("{{{}}}", inner.join(", "))
}

fn code(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| "no SQLSTATE".into())
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
        None => format!("{e}"),
    }
}

/// Every fault a test finds, reported together at the end.
#[derive(Default)]
struct Faults(Vec<String>);

impl Faults {
    fn fail(&mut self, msg: String) {
        if self.0.len() < 300 {
            self.0.push(msg);
        }
    }

    fn ok<T>(&mut self, what: &str, r: Result<T, postgres::Error>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(format!("{what}: {}", describe(&e)));
                None
            }
        }
    }

    fn expect_code<T: Debug>(&mut self, what: &str, r: Result<T, postgres::Error>, want: &str) {
        match r {
            Ok(v) => self.fail(format!("{what}: expected SQLSTATE {want}, but it succeeded: {v:?}")),
            Err(e) if code(&e) == want => {}
            Err(e) => self.fail(format!("{what}: expected SQLSTATE {want}, got {}", describe(&e))),
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    fn check(&mut self, what: &str, cond: bool) {
        if !cond {
            self.fail(what.to_string());
        }
    }

    fn done(self) {
        assert!(
            self.0.is_empty(),
            "{} fault(s):\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

fn setup(client: &mut Client, sql: &str) {
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("setup failed: {}\n{sql}", describe(&e)));
}

fn text1(client: &mut Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

fn int1(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

/// `exactly.find_or_create(rel, key, defaults)`: (data as text, created).
fn foc(
    client: &mut Client,
    rel: &str,
    key: &str,
    defaults: &str,
) -> Result<(String, bool), postgres::Error> {
    let rows = client.query(
        "SELECT data::text, created FROM exactly.find_or_create($1::text::regclass, \
         $2::text::jsonb, $3::text::jsonb)",
        &[&rel, &key, &defaults],
    )?;
    assert_eq!(rows.len(), 1, "find_or_create({rel}, {key}) returned {} rows", rows.len());
    Ok((rows[0].get(0), rows[0].get(1)))
}

/// `exactly.increment(rel, key, col, by)` as text.
fn incr(
    client: &mut Client,
    rel: &str,
    key: &str,
    col: &str,
    by: &str,
) -> Result<String, postgres::Error> {
    let row = client.query_one(
        "SELECT exactly.increment($1::text::regclass, $2::text::jsonb, $3, $4::text::numeric)::text",
        &[&rel, &key, &col, &by],
    )?;
    Ok(row.get(0))
}

/// How many rows of `rel` have exactly `data` as their `to_jsonb(row)`.
fn rows_with_json(client: &mut Client, rel: &str, data: &str) -> i64 {
    int1_p(
        client,
        &format!("SELECT count(*) FROM {rel} AS zz_row WHERE to_jsonb(zz_row) = $1::text::jsonb"),
        data,
    )
}

fn int1_p(client: &mut Client, sql: &str, p: &str) -> i64 {
    client
        .query_one(sql, &[&p])
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

fn json_contains(client: &mut Client, outer: &str, inner: &str) -> bool {
    client
        .query_one("SELECT $1::text::jsonb @> $2::text::jsonb", &[&outer, &inner])
        .unwrap()
        .get(0)
}

fn json_eq(client: &mut Client, a: &str, b: &str) -> bool {
    client
        .query_one("SELECT $1::text::jsonb = $2::text::jsonb", &[&a, &b])
        .unwrap()
        .get(0)
}

fn json_field(client: &mut Client, data: &str, field: &str) -> String {
    client
        .query_one("SELECT ($1::text::jsonb -> $2)::text", &[&data, &field])
        .unwrap()
        .get::<_, Option<String>>(0)
        .unwrap_or_else(|| "<absent>".into())
}

/// One claim: (claim id, rids of the rows, data of each row).
type Claimed = (Option<String>, Vec<i32>, Vec<String>);

fn claim(
    client: &mut Client,
    rel: &str,
    done: &str,
    batch: i32,
    lease: &str,
) -> Result<Claimed, postgres::Error> {
    let rows = client.query(
        "SELECT claim::text, data::text, (data->>'rid')::int FROM exactly.claim_batch(\
         $1::text::regclass, $2, $3, $4::text::interval)",
        &[&rel, &done, &batch, &lease],
    )?;
    let ids: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert!(ids.len() <= 1, "one claim per call, got {ids:?}");
    Ok((
        ids.into_iter().next(),
        rows.iter().map(|r| r.get::<_, Option<i32>>(2).unwrap_or(-1)).collect(),
        rows.iter().map(|r| r.get(1)).collect(),
    ))
}

fn claim_call(client: &mut Client, function: &str, claim: &str) -> Result<i64, postgres::Error> {
    let row = client.query_one(
        &format!("SELECT exactly.{function}($1::text::uuid)"),
        &[&claim],
    )?;
    Ok(row.get(0))
}

fn done_rids(client: &mut Client, rel: &str, done: &str) -> BTreeSet<i32> {
    client
        .query(&format!("SELECT rid FROM {rel} WHERE {} IS NOT NULL", qi(done)), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn pending(client: &mut Client, rel: &str, done: &str) -> i64 {
    int1(client, &format!("SELECT count(*) FROM {rel} WHERE {} IS NULL", qi(done)))
}

/// The full claim life cycle on `rel` (which has an int column `rid` naming each row and a
/// primary key ordered by `order_by`): two claims in key order, disjoint; a completion
/// marks exactly its rows, a second completion nothing; extend and release; released rows
/// come back; a last claim takes everything left; no live claim remains; the release is
/// recorded as a failed attempt.
fn claim_cycle(client: &mut Client, f: &mut Faults, rel: &str, done: &str, order_by: &str) {
    let order: Vec<i32> = client
        .query(&format!("SELECT rid FROM {rel} ORDER BY {order_by}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let n = order.len();
    assert!(n >= 2, "{rel}: claim_cycle needs two rows");
    let a_size = (n / 3).max(1);
    let b_size = (n / 3).max(1);
    let what = |step: &str| format!("{rel} (done column {done:?}): {step}");

    let Some((a, a_rids, a_data)) = f.ok(&what("first claim_batch"), claim(client, rel, done, a_size as i32, "5 minutes")) else { return };
    let Some(a) = a else {
        f.fail(what("first claim_batch returned no rows"));
        return;
    };
    f.eq(&what("first claim gets the first rows in primary-key order"), sorted(&a_rids), sorted(&order[..a_size]));
    check_claim_data(client, f, rel, &what("first claim"), &a_data);
    let Some((b, b_rids, _)) = f.ok(&what("second claim_batch"), claim(client, rel, done, b_size as i32, "5 minutes")) else { return };
    let Some(b) = b else {
        f.fail(what("second claim_batch returned no rows"));
        return;
    };
    f.check(&what("two claims get two claim ids"), a != b);
    f.eq(&what("second claim gets the next rows in key order"), sorted(&b_rids), sorted(&order[a_size..a_size + b_size]));

    if let Some(marked) = f.ok(&what("complete_batch"), claim_call(client, "complete_batch", &a)) {
        f.eq(&what("complete_batch returns how many it marked"), marked, a_size as i64);
    }
    f.eq(&what("exactly the first claim's rows are done"), done_rids(client, rel, done), sorted(&a_rids).into_iter().collect());
    if let Some(again) = f.ok(&what("second complete_batch"), claim_call(client, "complete_batch", &a)) {
        f.eq(&what("a completed claim completes nothing"), again, 0);
    }
    match client.query_one("SELECT exactly.extend_claim($1::text::uuid, '10 minutes')", &[&b]) {
        Ok(row) => f.eq(&what("extend_claim returns the rows held"), row.get::<_, i64>(0), b_size as i64),
        Err(e) => f.fail(what(&format!("extend_claim: {}", describe(&e)))),
    }
    if let Some(released) = f.ok(&what("release_claim"), claim_call(client, "release_claim", &b)) {
        f.eq(&what("release_claim returns the rows given back"), released, b_size as i64);
    }
    if let Some(stale) = f.ok(&what("extend after release"), claim_call(client, "extend_claim", &b)) {
        f.eq(&what("a released claim is stale"), stale, 0);
    }
    if let Some(stale) = f.ok(&what("complete after release"), claim_call(client, "complete_batch", &b)) {
        f.eq(&what("a released claim completes nothing"), stale, 0);
    }
    f.eq(&what("nothing more is done"), done_rids(client, rel, done).len(), a_size);

    let Some((c, c_rids, c_data)) = f.ok(&what("last claim_batch"), claim(client, rel, done, 100, "5 minutes")) else { return };
    f.eq(&what("the last claim takes every row left, released ones included"), sorted(&c_rids), sorted(&order[a_size..]));
    check_claim_data(client, f, rel, &what("last claim"), &c_data);
    if let Some(c) = c {
        if let Some(marked) = f.ok(&what("last complete_batch"), claim_call(client, "complete_batch", &c)) {
            f.eq(&what("last complete_batch marks the rest"), marked, (n - a_size) as i64);
        }
    }
    f.eq(&what("nothing pending at the end"), pending(client, rel, done), 0);
    let empty = f.ok(&what("claim on an empty queue"), claim(client, rel, done, 10, "5 minutes"));
    if let Some((none, rids, _)) = empty {
        f.check(&what("no claim when nothing is pending"), none.is_none() && rids.is_empty());
    }
    let live = client
        .query_one(
            "SELECT count(*) FROM exactly.claims WHERE rel::text::regclass = $1::text::regclass",
            &[&rel],
        )
        .map(|r| r.get::<_, i64>(0));
    if let Some(live) = f.ok(&what("count live claims"), live) {
        f.eq(&what("no live claim left"), live, 0);
    }
    let attempts = client
        .query_one(
            "SELECT coalesce(sum(failed_attempts), 0)::bigint FROM exactly.claim_attempts \
             WHERE rel::text::regclass = $1::text::regclass",
            &[&rel],
        )
        .map(|r| r.get::<_, i64>(0));
    if let Some(attempts) = f.ok(&what("read claim_attempts"), attempts) {
        f.eq(&what("the release counts one failed attempt per released row"), attempts, b_size as i64);
    }
}

/// Every `data` a claim returned is `to_jsonb` of exactly one row of `rel` (one fault line
/// for all that are not).
fn check_claim_data(client: &mut Client, f: &mut Faults, rel: &str, what: &str, datas: &[String]) {
    let wrong: Vec<&String> = datas.iter().filter(|d| rows_with_json(client, rel, d) != 1).collect();
    if let Some(first) = wrong.first() {
        f.fail(format!("{what}: {} of {} data values are not to_jsonb of a row, e.g. {first}", wrong.len(), datas.len()));
    }
}

fn sorted(rids: &[i32]) -> Vec<i32> {
    let mut v = rids.to_vec();
    v.sort();
    v
}

/// find_or_create then find again, checking `created` and that `data` is the row's JSON
/// and holds the key. Returns the data.
fn create_then_find(
    client: &mut Client,
    f: &mut Faults,
    what: &str,
    rel: &str,
    key: &str,
    defaults: &str,
) -> Option<String> {
    create_then_find_spelled(client, f, what, rel, key, defaults, true)
}

/// `create_then_find`; `canonical` says the key is spelled as to_jsonb prints it (so the
/// data must contain it literally).
fn create_then_find_spelled(
    client: &mut Client,
    f: &mut Faults,
    what: &str,
    rel: &str,
    key: &str,
    defaults: &str,
    canonical: bool,
) -> Option<String> {
    let (data, created) = f.ok(&format!("{what}: find_or_create {key} (create)"), foc(client, rel, key, defaults))?;
    f.check(&format!("{what}: first find_or_create {key} says created"), created);
    f.eq(&format!("{what}: data {data} is to_jsonb of exactly one row"), rows_with_json(client, rel, &data), 1);
    if canonical {
        f.check(&format!("{what}: data {data} holds the key {key}"), json_contains(client, &data, key));
    }
    if defaults != "{}" {
        f.check(&format!("{what}: data {data} holds the defaults {defaults}"), json_contains(client, &data, defaults));
    }
    let (again, created) = f.ok(&format!("{what}: find_or_create {key} (find)"), foc(client, rel, key, "{}"))?;
    f.check(&format!("{what}: second find_or_create {key} says not created"), !created);
    f.check(&format!("{what}: the found row {again} is the created one {data}"), json_eq(client, &again, &data));
    Some(data)
}

fn row_count(client: &mut Client, rel: &str) -> i64 {
    int1(client, &format!("SELECT count(*) FROM {rel}"))
}

// ---------------------------------------------------------------------------------------
// odd column names

/// Every odd name as a unique text key column of one table (primary key `t`, identity by
/// default), plus two composite unique keys of odd names: find_or_create creates and finds,
/// data is the row, defaults fill odd columns, increment adds.
#[test]
fn odd_column_names_as_keys_for_find_or_create_and_increment() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    // with a primary key named `t`, and (so that one shadowed alias does not hide the
    // others) with a primary key `pk` and no column `t`
    odd_keys(&mut c, &mut f, "oddk", "t");
    odd_keys(&mut c, &mut f, "oddk_without_t", "pk");
    f.done();
}

fn odd_keys(c: &mut Client, f: &mut Faults, rel: &str, pk: &str) {
    let mut cols = vec![format!("{} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", qi(pk))];
    let names: Vec<&str> = ODD.iter().copied().filter(|n| *n != "t").collect();
    for name in &names {
        cols.push(format!("{} text UNIQUE", qi(name)));
    }
    cols.push("n bigint".into());
    cols.push("UNIQUE (\"select\", \"Mixed Case\")".into());
    cols.push("UNIQUE (excluded, k, o)".into());
    setup(c, &format!("CREATE TABLE {rel} ({})", cols.join(",\n")));

    let mut rows = 0;
    for name in &names {
        let what = format!("{rel}: key column {name:?}");
        let key = obj(&[(name, js(&format!("v-{name}")))]);
        let defaults = obj(&[("n", "7".into())]);
        if create_then_find(c, f, &what, rel, &key, &defaults).is_some() {
            rows += 1;
        }
        if let Some(v) = f.ok(&format!("{what}: increment existing"), incr(c, rel, &key, "n", "1")) {
            f.eq(&format!("{what}: increment of an existing row"), v, "8".into());
        }
        let fresh = obj(&[(name, js(&format!("w-{name}")))]);
        if let Some(v) = f.ok(&format!("{what}: increment creating"), incr(c, rel, &fresh, "n", "3")) {
            f.eq(&format!("{what}: increment creating the row"), v, "3".into());
            rows += 1;
        }
        match foc(c, rel, &fresh, "{}") {
            Ok((data, created)) => {
                f.check(&format!("{what}: row made by increment is found"), !created);
                f.eq(&format!("{what}: its n"), json_field(c, &data, "n"), "3".into());
            }
            Err(e) => f.fail(format!("{what}: find after increment: {}", describe(&e))),
        }
    }
    // the identity primary key as the key
    let key = obj(&[(pk, "100000".into())]);
    if create_then_find(c, f, &format!("{rel}: key column {pk:?}"), rel, &key, "{}").is_some() {
        rows += 1;
    }
    if let Some(v) = f.ok(&format!("{rel}: increment by {pk}"), incr(c, rel, &key, "n", "5")) {
        f.eq(&format!("{rel}: increment by {pk} (n was NULL)"), v, "5".into());
    }
    // composite unique keys of odd names
    for (i, key) in [
        obj(&[("select", js("s")), ("Mixed Case", js("m"))]),
        obj(&[("excluded", js("e")), ("k", js("k")), ("o", js("o"))]),
    ]
    .iter()
    .enumerate()
    {
        let what = format!("{rel}: composite key {i}");
        if create_then_find(c, f, &what, rel, key, "{\"n\": 1}").is_some() {
            rows += 1;
        }
        if let Some(v) = f.ok(&format!("{what}: increment"), incr(c, rel, key, "n", "41")) {
            f.eq(&format!("{what}: increment"), v, "42".into());
        }
    }
    // defaults naming every odd column at once
    let mut defaults = vec![("n", "0".to_string())];
    for name in names.iter().filter(|n| **n != "key") {
        defaults.push((name, js(&format!("d-{name}"))));
    }
    let key = obj(&[("key", js("all"))]);
    if create_then_find(c, f, &format!("{rel}: defaults in every odd column"), rel, &key, &obj(&defaults)).is_some() {
        rows += 1;
    }
    f.eq(&format!("{rel}: one row per key"), row_count(c, rel), rows);
}

/// Counters named after every odd name (of every number type) on a table keyed by `key`,
/// and on a table keyed by `excluded` with counters named `key`, `count`, `data`, `t`:
/// increment creates, treats NULL as 0, adds, and returns the new value.
#[test]
fn odd_column_names_as_counters_for_increment() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    let types = ["smallint", "integer", "bigint", "numeric", "real", "double precision"];
    let counters: Vec<&str> = ODD.iter().copied().filter(|n| *n != "key").collect();
    let mut cols = vec!["\"key\" text PRIMARY KEY".to_string()];
    for (i, name) in counters.iter().enumerate() {
        cols.push(format!("{} {}", qi(name), types[i % types.len()]));
    }
    setup(&mut c, &format!("CREATE TABLE oddn ({})", cols.join(", ")));
    setup(
        &mut c,
        "CREATE TABLE oddn2 (excluded text PRIMARY KEY, \"key\" int, \"count\" bigint DEFAULT 10,
                            data numeric, \"t\" smallint, \"EXCLUDED\" int)",
    );
    for (i, name) in counters.iter().enumerate() {
        let what = format!("counter {name:?} ({})", types[i % types.len()]);
        // the first counter creates the row; the others find it with a NULL counter
        let key = obj(&[("key", js("k1"))]);
        if let Some(v) = f.ok(&what, incr(&mut c, "oddn", &key, name, "2")) {
            f.eq(&format!("{what}: first increment"), v.parse::<f64>().ok(), Some(2.0));
        }
        if let Some(v) = f.ok(&what, incr(&mut c, "oddn", &key, name, "3")) {
            f.eq(&format!("{what}: second increment"), v.parse::<f64>().ok(), Some(5.0));
        }
        let fresh = obj(&[("key", js(&format!("new-{i}")))]);
        if let Some(v) = f.ok(&what, incr(&mut c, "oddn", &fresh, name, "-4")) {
            f.eq(&format!("{what}: increment creating a row"), v.parse::<f64>().ok(), Some(-4.0));
        }
    }
    let stored = text1(&mut c, "SELECT to_jsonb(r)::text FROM oddn r WHERE key = 'k1'");
    for name in &counters {
        f.eq(&format!("stored counter {name:?}"), json_field(&mut c, &stored, name).parse::<f64>().ok(), Some(5.0));
    }
    f.eq("oddn rows", row_count(&mut c, "oddn"), counters.len() as i64 + 1);
    for (col, first, second) in [("key", "1", "3"), ("count", "1", "3"), ("data", "1", "3"), ("t", "1", "3"), ("EXCLUDED", "1", "3")] {
        let key = obj(&[("excluded", js(&format!("x-{col}")))]);
        if let Some(v) = f.ok(&format!("oddn2 counter {col}"), incr(&mut c, "oddn2", &key, col, "1")) {
            f.eq(&format!("oddn2 counter {col:?} created"), v, first.into());
        }
        if let Some(v) = f.ok(&format!("oddn2 counter {col}"), incr(&mut c, "oddn2", &key, col, "2")) {
            f.eq(&format!("oddn2 counter {col:?} added"), v, second.into());
        }
    }
    f.eq("oddn2 rows", row_count(&mut c, "oddn2"), 5);
    f.done();
}

/// Claims on tables whose primary key and done column carry odd names, with every other
/// odd name as a column too.
#[test]
fn odd_column_names_for_claims() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    let shapes: &[(&str, &str, &str, &str)] = &[
        // (primary key column, its type, done column, its type)
        ("claims", "int", "now", "timestamptz"),
        ("row_keys", "text", "picked", "timestamp"),
        ("quote\"d", "bigint", "with space", "date"),
        ("key", "int", "Mixed Case", "timestamptz"),
        ("rel", "int", "dot.ted", "timestamptz"),
        ("data", "int", "created", "timestamptz"),
        ("t", "int", "excluded", "timestamptz"),
        ("select", "int", "count", "timestamptz"),
        ("oid", "int", "claim", "timestamptz"),
        ("k", "int", "o", "timestamptz"),
        ("$1", "int", "%I", "timestamptz"),
        ("it's", "text", "to_jsonb", "timestamptz"),
    ];
    // each shape with every other odd name as a column, and (so that one shadowed alias
    // does not hide the others) without a column `t`
    for (i, (with_t, (pk, pk_type, done, done_type))) in
        [true, false].iter().flat_map(|t| shapes.iter().map(move |s| (*t, s))).enumerate()
    {
        if !with_t && (*pk == "t" || *done == "t") {
            continue;
        }
        let rel = format!("claimq{i}{}", if with_t { "" } else { "_without_t" });
        let mut cols = vec![format!("{} {pk_type} PRIMARY KEY", qi(pk)), format!("{} {done_type}", qi(done))];
        cols.push("rid int UNIQUE NOT NULL".into());
        for name in ODD.iter().filter(|n| *n != pk && *n != done && (with_t || **n != "t")) {
            cols.push(format!("{} text DEFAULT {}", qi(name), ql(&format!("junk {name}"))));
        }
        setup(&mut c, &format!("CREATE TABLE {rel} ({})", cols.join(", ")));
        let key_value = if *pk_type == "text" { "'k' || lpad(g::text, 3, '0')" } else { "g * 7 % 13" };
        setup(
            &mut c,
            &format!(
                "INSERT INTO {rel} ({}, rid) SELECT {key_value}, g FROM generate_series(1, 12) g",
                qi(pk)
            ),
        );
        claim_cycle(&mut c, &mut f, &rel, done, &qi(pk));
    }
    f.done();
}

// ---------------------------------------------------------------------------------------
// odd table and schema names

const ODD_TABLES: &[(&str, &str)] = &[
    ("My Schema", "Table \"Q\"."),
    ("public", "select"),
    ("public", "claims"),
    ("public", "payments"),
    ("sch.ema", "dot.ted"),
    ("ÜnÏ", "tâble"),
    ("public", "it's $1 %s"),
    ("exactly \"x\"", "t"),
    ("public", "EXCLUDED"),
];

/// find_or_create, increment and the claim life cycle on tables with odd names in odd
/// schemas (one of them named like pg_exactly's own `claims` and `payments`).
#[test]
fn odd_table_and_schema_names() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    for (schema, table) in ODD_TABLES {
        let rel = format!("{}.{}", qi(schema), qi(table));
        if *schema != "public" {
            setup(&mut c, &format!("CREATE SCHEMA IF NOT EXISTS {}", qi(schema)));
        }
        setup(
            &mut c,
            &format!(
                "CREATE TABLE {rel} (\"key\" text PRIMARY KEY, rid serial UNIQUE, n int, done timestamptz);
                 INSERT INTO {rel} (\"key\") SELECT 'q' || lpad(g::text, 2, '0') FROM generate_series(1, 9) g;"
            ),
        );
        let what = format!("table {rel}");
        create_then_find(&mut c, &mut f, &what, &rel, "{\"key\": \"a\"}", "{\"n\": 1}");
        if let Some(v) = f.ok(&format!("{what}: increment"), incr(&mut c, &rel, "{\"key\": \"a\"}", "n", "1")) {
            f.eq(&format!("{what}: increment"), v, "2".into());
        }
        if let Some(v) = f.ok(&format!("{what}: increment creating"), incr(&mut c, &rel, "{\"key\": \"b\"}", "n", "1")) {
            f.eq(&format!("{what}: increment creating"), v, "1".into());
        }
        f.eq(&format!("{what}: rows"), row_count(&mut c, &rel), 11);
        claim_cycle(&mut c, &mut f, &rel, "done", "\"key\"");
    }
    // the unqualified name `claims` resolves to public.claims, never to exactly.claims
    create_then_find(&mut c, &mut f, "unqualified claims", "claims", "{\"key\": \"c\"}", "{}");
    f.eq("public.claims rows", row_count(&mut c, "public.claims"), 12);
    f.done();
}

// ---------------------------------------------------------------------------------------
// key types

/// (name, SQL type, JSON values, in the form to_jsonb gives them back)
type KeyType = (&'static str, &'static str, &'static [&'static str]);

const KEY_TYPES: &[KeyType] = &[
    ("int2", "int2", &["9", "10", "-5", "-32768", "32767"]),
    ("int4", "int4", &["9", "10", "-5", "-2147483648", "2147483647"]),
    ("int8", "int8", &["9", "10", "-5", "-9223372036854775808", "9223372036854775807"]),
    ("numeric", "numeric", &["1.50", "-0.000001", "10", "9", "123456789012345678901234567890.123"]),
    ("text", "text", &["\"a\"", "\"\"", "\"quote'd \\\"x\\\"\"", "\"ünï €\"", "\"with\\nnewline\"", "\"10\"", "\"9\""]),
    ("varchar", "varchar(20)", &["\"x\"", "\"y z\"", "\"10\"", "\"9\""]),
    ("lower_text", "lower_text", &["\"abc\"", "\"d e\"", "\"10\"", "\"9\""]),
    ("pos_int", "pos_int", &["9", "10", "1", "2147483647"]),
    ("uuid", "uuid", &["\"00000000-0000-0000-0000-000000000000\"", "\"ffffffff-ffff-ffff-ffff-ffffffffffff\"", "\"0b9c1f6e-0000-4000-8000-000000000001\""]),
    ("date", "date", &["\"2026-01-02\"", "\"2026-02-01\"", "\"1999-12-31\"", "\"2000-02-29\"", "\"infinity\"", "\"-infinity\""]),
    ("timestamptz", "timestamptz", &["\"2026-01-02T03:04:05.123456+00:00\"", "\"2026-02-01T03:04:05+00:00\"", "\"1999-12-31T23:59:59.999999+00:00\""]),
    ("timestamp", "timestamp", &["\"2026-01-02T03:04:05.123456\"", "\"2026-02-01T03:04:05\"", "\"1999-12-31T23:59:59.999999\""]),
    ("float8", "float8", &["1.5", "-0.1", "0.3", "0.30000000000000004", "1e+300", "10", "9"]),
    ("bytea", "bytea", &["\"\\\\x00ff\"", "\"\\\\x\"", "\"\\\\x0a\"", "\"\\\\x09\""]),
    ("bool", "bool", &["true", "false"]),
    ("mood", "mood", &["\"sad\"", "\"happy\"", "\"ok\""]),
    ("inet", "inet", &["\"10.0.0.1\"", "\"::1\"", "\"192.168.0.0/24\"", "\"9.0.0.1\""]),
];

/// Other spellings of a value that must find the same row: (type, index of the value,
/// another JSON spelling).
const ALTERNATIVE_SPELLINGS: &[(&str, usize, &str)] = &[
    ("int2", 0, "\"9\""),
    ("int4", 3, "\"-2147483648\""),
    ("int8", 4, "\"9223372036854775807\""),
    ("numeric", 0, "1.5"),
    ("numeric", 0, "\"1.500\""),
    ("numeric", 2, "1e1"),
    ("uuid", 2, "\"0B9C1F6E-0000-4000-8000-000000000001\""),
    ("uuid", 2, "\"{0b9c1f6e-0000-4000-8000-000000000001}\""),
    ("date", 0, "\"20260102\""),
    ("timestamptz", 0, "\"2026-01-02 04:04:05.123456+01\""),
    ("timestamptz", 1, "\"2026-02-01T03:04:05Z\""),
    ("timestamp", 1, "\"2026-02-01 03:04:05.000\""),
    ("float8", 0, "1.50"),
    ("float8", 0, "\"1.5e0\""),
    ("float8", 4, "1e300"),
    ("bytea", 0, "\"\\\\x00FF\""),
    ("inet", 1, "\"0:0:0:0:0:0:0:1\""),
    ("pos_int", 0, "\"9\""),
];

const TYPES_SETUP: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN lower_text AS text CHECK (VALUE = lower(VALUE));
    CREATE DOMAIN pos_int AS int CHECK (VALUE > 0);
    SET TimeZone = 'UTC';";

/// Every common key type as a single primary key: find_or_create creates each value once
/// (data is the row, keyed by the value as to_jsonb prints it), finds it again, also by
/// another spelling of the same value (1.5 = 1.50, uuid in braces, ...), increment
/// creates and adds. A value its domain refuses gets the domain's 23514.
#[test]
fn every_key_type_as_a_single_key_for_find_or_create_and_increment() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, TYPES_SETUP);
    for (name, sql_type, values) in KEY_TYPES {
        let rel = format!("k_{name}");
        setup(&mut c, &format!("CREATE TABLE {rel} (\"key\" {sql_type} PRIMARY KEY, n bigint, payload text)"));
        let mut datas = Vec::new();
        // the first value through increment (create path), the others through find_or_create
        let first = obj(&[("key", values[0].to_string())]);
        if let Some(v) = f.ok(&format!("{rel}: increment creating {first}"), incr(&mut c, &rel, &first, "n", "1")) {
            f.eq(&format!("{rel}: increment creating {first}"), v, "1".into());
        }
        match foc(&mut c, &rel, &first, "{}") {
            Ok((data, created)) => {
                f.check(&format!("{rel}: row made by increment is found, not created"), !created);
                f.check(&format!("{rel}: data {data} holds {first}"), json_contains(&mut c, &data, &first));
                datas.push(Some(data));
            }
            Err(e) => {
                f.fail(format!("{rel}: find_or_create {first}: {}", describe(&e)));
                datas.push(None);
            }
        }
        for value in &values[1..] {
            let key = obj(&[("key", value.to_string())]);
            datas.push(create_then_find(&mut c, &mut f, &rel, &rel, &key, "{\"payload\": \"p\"}"));
        }
        if let Some(v) = f.ok(&format!("{rel}: increment existing"), incr(&mut c, &rel, &first, "n", "41")) {
            f.eq(&format!("{rel}: increment existing {first}"), v, "42".into());
        }
        for (ty, index, spelling) in ALTERNATIVE_SPELLINGS.iter().filter(|a| a.0 == *name) {
            let key = obj(&[("key", spelling.to_string())]);
            match foc(&mut c, &rel, &key, "{}") {
                Ok((data, created)) => {
                    f.check(&format!("{ty}: {spelling} is the same value as {}: not created", values[*index]), !created);
                    if let Some(Some(want)) = datas.get(*index) {
                        let (want, got) = (json_field(&mut c, want, "key"), json_field(&mut c, &data, "key"));
                        f.check(&format!("{ty}: {spelling} finds the row of {} ({got} vs {want})", values[*index]), json_eq(&mut c, &got, &want));
                    }
                }
                Err(e) => f.fail(format!("{ty}: find_or_create {key}: {}", describe(&e))),
            }
        }
        f.eq(&format!("{rel}: one row per value"), row_count(&mut c, &rel), values.len() as i64);
    }
    f.expect_code("a value its domain refuses", foc(&mut c, "k_lower_text", "{\"key\": \"ABC\"}", "{}"), "23514");
    f.expect_code("a value its domain refuses", foc(&mut c, "k_pos_int", "{\"key\": 0}", "{}"), "23514");
    f.expect_code("an enum value that does not exist", foc(&mut c, "k_mood", "{\"key\": \"meh\"}", "{}"), "22P02");
    f.eq("refused values create nothing", row_count(&mut c, "k_pos_int"), 4);
    f.done();
}

/// Every common key type as a single primary key of a claims queue: the full claim life
/// cycle, rows in the type's own order (9 before 10 for numbers, not as text).
#[test]
fn every_key_type_as_a_single_key_for_claims() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, TYPES_SETUP);
    for (name, sql_type, values) in KEY_TYPES {
        let rel = format!("q_{name}");
        setup(
            &mut c,
            &format!(
                "CREATE TABLE {rel} (\"key\" {sql_type} PRIMARY KEY, rid serial UNIQUE, payload text DEFAULT 'p',
                                     done timestamptz)"
            ),
        );
        for value in values.iter() {
            let row = obj(&[("key", value.to_string())]);
            c.execute(
                &format!("INSERT INTO {rel} (\"key\") SELECT \"key\" FROM jsonb_populate_record(NULL::{rel}, $1::text::jsonb)"),
                &[&row],
            )
            .unwrap_or_else(|e| panic!("insert {row} into {rel}: {}", describe(&e)));
        }
        claim_cycle(&mut c, &mut f, &rel, "done", "\"key\"");
    }
    f.done();
}

/// Composite primary keys of 2 and 3 columns of mixed types.
const COMPOSITES: &[(&str, &[(&str, &str)], &[&[&str]])] = &[
    ("int_text", &[("a", "int4"), ("b", "text")], &[&["1", "\"x\""], &["1", "\"y\""], &["2", "\"x\""], &["10", "\"a\""], &["9", "\"z\""]]),
    ("uuid_date", &[("u", "uuid"), ("d", "date")], &[
        &["\"00000000-0000-0000-0000-000000000001\"", "\"2026-01-02\""],
        &["\"00000000-0000-0000-0000-000000000001\"", "\"2026-02-01\""],
        &["\"00000000-0000-0000-0000-000000000002\"", "\"2026-01-02\""],
    ]),
    ("text_int8_tstz", &[("key", "text"), ("count", "int8"), ("now", "timestamptz")], &[
        &["\"a\"", "1", "\"2026-01-02T03:04:05+00:00\""],
        &["\"a\"", "1", "\"2026-01-02T03:04:06+00:00\""],
        &["\"a\"", "2", "\"2026-01-02T03:04:05+00:00\""],
        &["\"b\"", "-9223372036854775808", "\"1999-12-31T23:59:59.999999+00:00\""],
    ]),
    ("bool_enum_numeric", &[("t", "bool"), ("excluded", "mood"), ("data", "numeric")], &[
        &["true", "\"sad\"", "1.5"],
        &["true", "\"sad\"", "10"],
        &["true", "\"sad\"", "9"],
        &["false", "\"happy\"", "-0.001"],
        &["true", "\"ok\"", "1.5"],
    ]),
    ("bytea_inet", &[("select", "bytea"), ("Mixed Case", "inet")], &[
        &["\"\\\\x00\"", "\"10.0.0.1\""],
        &["\"\\\\x00\"", "\"::1\""],
        &["\"\\\\xff\"", "\"10.0.0.1\""],
    ]),
    ("float_varchar_ts", &[("quote\"d", "float8"), ("with space", "varchar(10)"), ("dot.ted", "timestamp")], &[
        &["0.1", "\"a\"", "\"2026-01-02T03:04:05\""],
        &["0.30000000000000004", "\"a\"", "\"2026-01-02T03:04:05\""],
        &["0.3", "\"a\"", "\"2026-01-02T03:04:05\""],
        &["0.3", "\"b\"", "\"2026-01-02T03:04:05\""],
    ]),
    ("domain_int2_date", &[("k", "lower_text"), ("o", "int2"), ("rel", "date")], &[
        &["\"x\"", "1", "\"2026-01-02\""],
        &["\"x\"", "2", "\"2026-01-02\""],
        &["\"y\"", "1", "\"2026-02-01\""],
    ]),
];

fn composite_table(c: &mut Client, name: &str, cols: &[(&str, &str)], extra: &str) -> String {
    let rel = format!("c_{name}");
    let defs: Vec<String> = cols.iter().map(|(n, t)| format!("{} {t}", qi(n))).collect();
    let pk: Vec<String> = cols.iter().map(|(n, _)| qi(n)).collect();
    setup(
        c,
        &format!("CREATE TABLE {rel} ({}, {extra}, PRIMARY KEY ({}))", defs.join(", "), pk.join(", ")),
    );
    rel
}

fn composite_key(cols: &[(&str, &str)], values: &[&str]) -> String {
    let pairs: Vec<(&str, String)> = cols.iter().zip(values).map(|((n, _), v)| (*n, v.to_string())).collect();
    obj(&pairs)
}

/// Composite primary keys (2 and 3 columns of mixed types, odd column names):
/// find_or_create creates each key once, a key differing in one column is another row,
/// increment creates and adds; a key missing one of the columns gets 42P10.
#[test]
fn composite_keys_for_find_or_create_and_increment() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, TYPES_SETUP);
    for (name, cols, rows) in COMPOSITES {
        let rel = composite_table(&mut c, name, cols, "n int, payload text");
        let first = composite_key(cols, rows[0]);
        if let Some(v) = f.ok(&format!("{rel}: increment creating"), incr(&mut c, &rel, &first, "n", "2")) {
            f.eq(&format!("{rel}: increment creating {first}"), v, "2".into());
        }
        for values in &rows[1..] {
            let key = composite_key(cols, values);
            create_then_find(&mut c, &mut f, &rel, &rel, &key, "{\"payload\": \"p\"}");
        }
        if let Some(v) = f.ok(&format!("{rel}: increment existing"), incr(&mut c, &rel, &first, "n", "3")) {
            f.eq(&format!("{rel}: increment existing {first}"), v, "5".into());
        }
        match foc(&mut c, &rel, &first, "{}") {
            Ok((data, created)) => {
                f.check(&format!("{rel}: {first} exists"), !created);
                f.eq(&format!("{rel}: {first} n"), json_field(&mut c, &data, "n"), "5".into());
            }
            Err(e) => f.fail(format!("{rel}: find {first}: {}", describe(&e))),
        }
        f.eq(&format!("{rel}: one row per key"), row_count(&mut c, &rel), rows.len() as i64);
        let partial = composite_key(&cols[..1], &rows[0][..1]);
        f.expect_code(&format!("{rel}: a key with only {partial}"), foc(&mut c, &rel, &partial, "{}"), "42P10");
    }
    f.done();
}

/// Composite primary keys as claims queues: the full claim life cycle, in key order.
#[test]
fn composite_keys_for_claims() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, TYPES_SETUP);
    for (name, cols, rows) in COMPOSITES {
        let rel = composite_table(&mut c, name, cols, "rid serial UNIQUE, done timestamptz");
        let names: Vec<String> = cols.iter().map(|(n, _)| qi(n)).collect();
        for values in rows.iter() {
            let row = composite_key(cols, values);
            c.execute(
                &format!(
                    "INSERT INTO {rel} ({0}) SELECT {0} FROM jsonb_populate_record(NULL::{rel}, $1::text::jsonb)",
                    names.join(", ")
                ),
                &[&row],
            )
            .unwrap_or_else(|e| panic!("insert {row} into {rel}: {}", describe(&e)));
        }
        claim_cycle(&mut c, &mut f, &rel, "done", &names.join(", "));
    }
    f.done();
}

// ---------------------------------------------------------------------------------------
// domains, generated columns, partitioned tables, row-level security

const SPECIAL_TABLES: &str = "
    CREATE DOMAIN code_text AS text CHECK (VALUE ~ '^[a-z0-9-]+$');
    CREATE DOMAIN counter_int AS bigint DEFAULT 0 CHECK (VALUE >= 0);
    -- a domain key, a domain counter
    CREATE TABLE dom (\"key\" code_text PRIMARY KEY, rid serial UNIQUE, n counter_int, done timestamptz);
    -- generated columns that depend on the key and on the counter
    CREATE TABLE gen (\"key\" text PRIMARY KEY, rid serial UNIQUE, n int DEFAULT 0,
                      label text GENERATED ALWAYS AS (\"key\" || ':' || n) STORED,
                      \"data\" text GENERATED ALWAYS AS (upper(\"key\")) STORED,
                      done timestamptz);
    -- partitioned by range of the single-column key
    CREATE TABLE part (\"key\" int PRIMARY KEY, rid serial, n int, done timestamptz) PARTITION BY RANGE (\"key\");
    CREATE TABLE part_low PARTITION OF part FOR VALUES FROM (MINVALUE) TO (100);
    CREATE TABLE part_high PARTITION OF part FOR VALUES FROM (100) TO (MAXVALUE);
    -- partitioned by list, a two-column key including the partition key
    CREATE TABLE part2 (region text, \"key\" text, rid serial, n int, done timestamptz,
                        PRIMARY KEY (region, \"key\"), UNIQUE (region, rid)) PARTITION BY LIST (region);
    CREATE TABLE part2_eu PARTITION OF part2 FOR VALUES IN ('eu');
    CREATE TABLE part2_us PARTITION OF part2 FOR VALUES IN ('us');
    -- row-level security enabled (and forced) with a policy that hides everything from
    -- others: its owner (here a superuser) sees and writes every row
    CREATE TABLE rls (\"key\" text PRIMARY KEY, rid serial UNIQUE, n int, done timestamptz,
                      \"t\" text, excluded text, \"select\" text);
    ALTER TABLE rls ENABLE ROW LEVEL SECURITY;
    CREATE POLICY nobody ON rls USING (false) WITH CHECK (false);
    CREATE TABLE rls_forced (\"key\" text PRIMARY KEY, rid serial UNIQUE, n int, done timestamptz);
    ALTER TABLE rls_forced ENABLE ROW LEVEL SECURITY;
    ALTER TABLE rls_forced FORCE ROW LEVEL SECURITY;
    CREATE POLICY everyone ON rls_forced USING (true) WITH CHECK (true);
";

/// find_or_create and increment on a domain-keyed table (with a domain counter),
/// generated columns (returned in data, recomputed after increment), partitioned tables
/// (rows routed to partitions, found again), tables with row-level security used by their
/// owner.
#[test]
fn domains_generated_columns_partitions_and_rls_for_find_or_create_and_increment() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, SPECIAL_TABLES);

    create_then_find(&mut c, &mut f, "dom", "dom", "{\"key\": \"a-1\"}", "{}");
    if let Some(v) = f.ok("dom: increment", incr(&mut c, "dom", "{\"key\": \"a-1\"}", "n", "4")) {
        f.eq("dom: increment of a domain counter with a default", v, "4".into());
    }
    f.expect_code("dom: increment below the domain's check", incr(&mut c, "dom", "{\"key\": \"a-1\"}", "n", "-5"), "23514");
    f.expect_code("dom: a key its domain refuses", foc(&mut c, "dom", "{\"key\": \"A 1\"}", "{}"), "23514");
    f.eq("dom rows", row_count(&mut c, "dom"), 1);

    if let Some(data) = create_then_find(&mut c, &mut f, "gen", "gen", "{\"key\": \"g\"}", "{\"n\": 2}") {
        f.eq("gen: generated label in data", json_field(&mut c, &data, "label"), "\"g:2\"".into());
        f.eq("gen: generated column named data", json_field(&mut c, &data, "data"), "\"G\"".into());
    }
    if let Some(v) = f.ok("gen: increment", incr(&mut c, "gen", "{\"key\": \"g\"}", "n", "5")) {
        f.eq("gen: increment", v, "7".into());
    }
    if let Some((data, _)) = f.ok("gen: find", foc(&mut c, "gen", "{\"key\": \"g\"}", "{}")) {
        f.eq("gen: label recomputed after increment", json_field(&mut c, &data, "label"), "\"g:7\"".into());
    }
    f.expect_code("gen: a default for a generated column", foc(&mut c, "gen", "{\"key\": \"h\"}", "{\"label\": \"x\"}"), "428C9");
    f.expect_code("gen: increment of a generated column", incr(&mut c, "gen", "{\"key\": \"g\"}", "label", "1"), "42804");

    for key in ["5", "500", "-7"] {
        let key = format!("{{\"key\": {key}}}");
        create_then_find(&mut c, &mut f, "part", "part", &key, "{\"n\": 1}");
        if let Some(v) = f.ok("part: increment", incr(&mut c, "part", &key, "n", "1")) {
            f.eq(&format!("part: increment {key}"), v, "2".into());
        }
    }
    if let Some(v) = f.ok("part: increment creating", incr(&mut c, "part", "{\"key\": 150}", "n", "9")) {
        f.eq("part: increment creating in a partition", v, "9".into());
    }
    f.eq("part rows", row_count(&mut c, "part"), 4);
    f.eq("part_high rows", row_count(&mut c, "part_high"), 2);
    for region in ["eu", "us"] {
        let key = format!("{{\"region\": \"{region}\", \"key\": \"x\"}}");
        create_then_find(&mut c, &mut f, "part2", "part2", &key, "{}");
        if let Some(v) = f.ok("part2: increment", incr(&mut c, "part2", &key, "n", "3")) {
            f.eq(&format!("part2: increment {key}"), v, "3".into());
        }
    }
    f.expect_code("part2: a region without a partition", foc(&mut c, "part2", "{\"region\": \"mars\", \"key\": \"x\"}", "{}"), "23514");
    f.eq("part2 rows", row_count(&mut c, "part2"), 2);

    for rel in ["rls", "rls_forced"] {
        create_then_find(&mut c, &mut f, rel, rel, "{\"key\": \"r\"}", "{\"n\": 1}");
        if let Some(v) = f.ok(&format!("{rel}: increment"), incr(&mut c, rel, "{\"key\": \"r\"}", "n", "1")) {
            f.eq(&format!("{rel}: increment"), v, "2".into());
        }
        if let Some(v) = f.ok(&format!("{rel}: increment creating"), incr(&mut c, rel, "{\"key\": \"s\"}", "n", "1")) {
            f.eq(&format!("{rel}: increment creating"), v, "1".into());
        }
        f.eq(&format!("{rel} rows"), row_count(&mut c, rel), 2);
    }
    f.done();
}

/// The claim life cycle on the same kinds of tables.
#[test]
fn domains_generated_columns_partitions_and_rls_for_claims() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(&mut c, SPECIAL_TABLES);
    setup(
        &mut c,
        "INSERT INTO dom (\"key\") SELECT 'd-' || lpad(g::text, 2, '0') FROM generate_series(1, 9) g;
         INSERT INTO gen (\"key\", n) SELECT 'g' || g, g FROM generate_series(1, 9) g;
         INSERT INTO part (\"key\") SELECT g * 37 - 100 FROM generate_series(1, 9) g;
         INSERT INTO rls (\"key\") SELECT 'r' || g FROM generate_series(1, 9) g;
         INSERT INTO rls_forced (\"key\") SELECT 'r' || g FROM generate_series(1, 9) g;",
    );
    for rel in ["dom", "gen", "part", "rls", "rls_forced"] {
        claim_cycle(&mut c, &mut f, rel, "done", "\"key\"");
    }
    setup(&mut c, "INSERT INTO part2 (region, \"key\") SELECT r, 'k' || g FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 5) g");
    claim_cycle(&mut c, &mut f, "part2", "done", "region, \"key\"");
    f.done();
}

// ---------------------------------------------------------------------------------------
// claim keys are values of their type, whatever the session's settings

/// Claims and completions on one connection whose DateStyle changes between calls: the
/// second claim never takes the first claim's rows, a completion marks exactly its own
/// rows, extend/release find their rows, and a drain with the style changing on every call
/// hands out every row exactly once. For a date key and a timestamp key, with days 1..12
/// (ambiguous between DMY and MDY).
#[test]
fn date_and_timestamp_keys_claimed_under_dmy_and_completed_under_mdy() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(
        &mut c,
        "CREATE TABLE dk (\"key\" date PRIMARY KEY, rid int UNIQUE NOT NULL, done timestamptz);
         INSERT INTO dk SELECT DATE '2026-01-01' + i, i + 1 FROM generate_series(0, 19) i;
         CREATE TABLE tsk (\"key\" timestamp PRIMARY KEY, rid int UNIQUE NOT NULL, done date);
         INSERT INTO tsk SELECT TIMESTAMP '2026-01-01 10:00:00.123456' + make_interval(days => i), i + 1
           FROM generate_series(0, 19) i;",
    );
    for rel in ["dk", "tsk"] {
        let style = |c: &mut Client, s: &str| c.batch_execute(&format!("SET DateStyle = '{s}'")).unwrap();
        let what = |s: &str| format!("{rel}: {s}");
        style(&mut c, "SQL, DMY");
        let Some((Some(c1), r1, _)) = f.ok(&what("claim under DMY"), claim(&mut c, rel, "done", 4, "5 minutes")) else {
            f.fail(what("no first claim"));
            continue;
        };
        f.eq(&what("first claim, in key order"), sorted(&r1), vec![1, 2, 3, 4]);
        style(&mut c, "SQL, MDY");
        let Some((Some(c2), r2, _)) = f.ok(&what("claim under MDY"), claim(&mut c, rel, "done", 4, "5 minutes")) else {
            f.fail(what("no second claim"));
            continue;
        };
        f.eq(&what("second claim under another DateStyle takes the next rows, none of the first's"), sorted(&r2), vec![5, 6, 7, 8]);
        if let Some(n) = f.ok(&what("complete under MDY"), claim_call(&mut c, "complete_batch", &c1)) {
            f.eq(&what("completion under MDY of a DMY claim marks its rows"), n, 4);
        }
        f.eq(&what("exactly the DMY claim's rows are done"), done_rids(&mut c, rel, "done"), [1, 2, 3, 4].into());
        style(&mut c, "SQL, DMY");
        if let Some((Some(c3), r3, _)) = f.ok(&what("third claim under DMY"), claim(&mut c, rel, "done", 4, "5 minutes")) {
            f.eq(&what("third claim"), sorted(&r3), vec![9, 10, 11, 12]);
            style(&mut c, "Postgres, MDY");
            if let Some(n) = f.ok(&what("extend under Postgres, MDY"), claim_call(&mut c, "extend_claim", &c3)) {
                f.eq(&what("extend under another DateStyle counts the claim's rows"), n, 4);
            }
            style(&mut c, "German");
            if let Some(n) = f.ok(&what("release under German"), claim_call(&mut c, "release_claim", &c3)) {
                f.eq(&what("release under another DateStyle gives back the claim's rows"), n, 4);
            }
        } else {
            f.fail(what("no third claim"));
        }
        style(&mut c, "ISO, YMD");
        if let Some(n) = f.ok(&what("complete under ISO"), claim_call(&mut c, "complete_batch", &c2)) {
            f.eq(&what("completion under ISO of an MDY claim"), n, 4);
        }
        f.eq(&what("exactly the first two claims' rows are done"), done_rids(&mut c, rel, "done"), (1..=8).collect());
        // drain, changing the DateStyle before every call
        let styles = ["SQL, DMY", "SQL, MDY", "Postgres, DMY", "German", "ISO, MDY"];
        let mut delivered: BTreeMap<i32, usize> = BTreeMap::new();
        let mut marked = 0;
        for round in 0..40 {
            style(&mut c, styles[round % styles.len()]);
            let Some((claim_id, rids, _)) = f.ok(&what("drain claim"), claim(&mut c, rel, "done", 3, "5 minutes")) else { break };
            let Some(claim_id) = claim_id else { break };
            for rid in rids {
                *delivered.entry(rid).or_default() += 1;
            }
            style(&mut c, styles[(round + 2) % styles.len()]);
            if let Some(n) = f.ok(&what("drain complete"), claim_call(&mut c, "complete_batch", &claim_id)) {
                marked += n;
            }
        }
        f.eq(&what("the drain hands out each remaining row once"), delivered.clone(), (9..=20).map(|r| (r, 1)).collect());
        f.eq(&what("the drain's completions mark each remaining row once"), marked, 12);
        f.eq(&what("nothing pending"), pending(&mut c, rel, "done"), 0);
    }
    f.done();
}

/// float8 keys whose display text collides under `extra_float_digits = -15` (1.00 .. 1.59
/// all print as 1 or 2; 0.3 and 0.1 + 0.2 both as 0.3): four workers in that setting drain
/// the queue and every row is claimed and completed exactly once.
#[test]
fn float8_keys_under_extra_float_digits_minus_15_are_claimed_once() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    setup(
        &mut c,
        "CREATE TABLE fk (\"key\" float8 PRIMARY KEY, rid int UNIQUE NOT NULL, done timestamptz);
         INSERT INTO fk SELECT 1 + i / 100.0::float8, i + 1 FROM generate_series(0, 59) i;
         INSERT INTO fk VALUES (0.3, 61), (0.1::float8 + 0.2::float8, 62), (1e-300, 63), (1.0000000000000002, 64);",
    );
    let rows = int1(&mut c, "SELECT count(*) FROM fk");
    assert_eq!(rows, 64, "setup: 64 distinct float8 keys");
    let outcomes = at_once(&cluster, 4, |_, c| {
        c.batch_execute("SET extra_float_digits = -15").unwrap();
        let mut delivered = Vec::new();
        let mut marked = 0i64;
        let mut errors = Vec::new();
        for _ in 0..200 {
            match claim(c, "fk", "done", 3, "5 minutes") {
                Ok((Some(claim_id), rids, _)) => {
                    delivered.extend(rids);
                    match claim_call(c, "complete_batch", &claim_id) {
                        Ok(n) => marked += n,
                        Err(e) => {
                            errors.push(describe(&e));
                            break;
                        }
                    }
                }
                Ok((None, _, _)) => {
                    if pending(c, "fk", "done") == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    errors.push(describe(&e));
                    break;
                }
            }
        }
        (delivered, marked, errors)
    });
    let mut f = Faults::default();
    let mut delivered: BTreeMap<i32, usize> = BTreeMap::new();
    let mut marked = 0;
    for (rids, m, errors) in outcomes {
        for e in errors {
            f.fail(format!("worker error: {e}"));
        }
        for rid in rids {
            *delivered.entry(rid).or_default() += 1;
        }
        marked += m;
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    f.check(&format!("rows claimed more than once: {twice:?}"), twice.is_empty());
    f.eq("rows delivered", delivered.len(), 64);
    f.eq("rows marked by completions", marked, 64);
    f.eq("nothing pending", pending(&mut c, "fk", "done"), 0);
    f.done();
}

/// timestamptz keys around a daylight-saving change, claimed under one TimeZone and
/// extended, released and completed under others (and another DateStyle): exactly the
/// claimed rows, every row once over a full drain.
#[test]
fn timestamptz_keys_across_time_zone_changes() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(
        &mut c,
        "CREATE TABLE tk (\"key\" timestamptz PRIMARY KEY, rid int UNIQUE NOT NULL, done timestamptz);
         INSERT INTO tk SELECT TIMESTAMPTZ '2025-10-26 00:00:00+00' + i * interval '10 minutes'
                               + i * interval '0.000123 seconds', i + 1
           FROM generate_series(0, 23) i;",
    );
    let zone = |c: &mut Client, z: &str| c.batch_execute(&format!("SET TimeZone = '{z}'")).unwrap();
    zone(&mut c, "Europe/London");
    let c1 = f.ok("claim under Europe/London", claim(&mut c, "tk", "done", 5, "5 minutes"));
    zone(&mut c, "Pacific/Chatham");
    let c2 = f.ok("claim under Pacific/Chatham", claim(&mut c, "tk", "done", 5, "5 minutes"));
    if let (Some((Some(c1), r1, _)), Some((Some(c2), r2, _))) = (c1, c2) {
        f.eq("first claim", sorted(&r1), vec![1, 2, 3, 4, 5]);
        f.eq("second claim under another zone takes none of the first's rows", sorted(&r2), vec![6, 7, 8, 9, 10]);
        zone(&mut c, "America/St_Johns");
        if let Some(n) = f.ok("complete under America/St_Johns", claim_call(&mut c, "complete_batch", &c1)) {
            f.eq("completion under another zone marks the claim's rows", n, 5);
        }
        f.eq("exactly the first claim's rows are done", done_rids(&mut c, "tk", "done"), (1..=5).collect());
        c.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'Postgres, DMY'").unwrap();
        if let Some(n) = f.ok("extend under UTC / Postgres", claim_call(&mut c, "extend_claim", &c2)) {
            f.eq("extend under another zone counts the claim's rows", n, 5);
        }
        zone(&mut c, "Asia/Kathmandu");
        if let Some(n) = f.ok("complete under Asia/Kathmandu", claim_call(&mut c, "complete_batch", &c2)) {
            f.eq("completion under a third zone", n, 5);
        }
        f.eq("exactly the two claims' rows are done", done_rids(&mut c, "tk", "done"), (1..=10).collect());
    } else {
        f.fail("no claims".into());
    }
    let zones = ["Europe/London", "Pacific/Chatham", "America/St_Johns", "UTC", "Asia/Kathmandu", "Pacific/Kiritimati"];
    let mut delivered: BTreeMap<i32, usize> = BTreeMap::new();
    let mut marked = 0;
    for round in 0..40 {
        zone(&mut c, zones[round % zones.len()]);
        let Some((claim_id, rids, _)) = f.ok("drain claim", claim(&mut c, "tk", "done", 3, "5 minutes")) else { break };
        let Some(claim_id) = claim_id else { break };
        for rid in rids {
            *delivered.entry(rid).or_default() += 1;
        }
        zone(&mut c, zones[(round + 3) % zones.len()]);
        if let Some(n) = f.ok("drain complete", claim_call(&mut c, "complete_batch", &claim_id)) {
            marked += n;
        }
    }
    f.eq("the drain hands out each remaining row once", delivered, (11..=24).map(|r| (r, 1)).collect());
    f.eq("the drain's completions mark each remaining row once", marked, 14);
    f.eq("nothing pending", pending(&mut c, "tk", "done"), 0);
    f.done();
}

/// 8 workers drain `rel` (3000 rows, batches of 25): every row delivered to exactly one
/// worker and marked by exactly one completion.
fn eight_workers_drain(cluster: &Cluster, rel: &'static str) {
    let mut c = cluster.connect();
    let rows = row_count(&mut c, rel);
    let started = Instant::now();
    let outcomes = at_once(cluster, 8, move |_, c| {
        let mut delivered = Vec::new();
        let mut marked = 0i64;
        let mut errors = Vec::new();
        for _ in 0..2000 {
            match claim(c, rel, "done", 25, "5 minutes") {
                Ok((Some(claim_id), rids, _)) => {
                    delivered.extend(rids);
                    match claim_call(c, "complete_batch", &claim_id) {
                        Ok(n) => marked += n,
                        Err(e) => {
                            errors.push(describe(&e));
                            break;
                        }
                    }
                }
                Ok((None, _, _)) => {
                    if pending(c, rel, "done") == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    errors.push(describe(&e));
                    break;
                }
            }
        }
        (delivered, marked, errors)
    });
    let mut f = Faults::default();
    let mut delivered: BTreeMap<i32, usize> = BTreeMap::new();
    let mut marked = 0;
    let mut errors = BTreeSet::new();
    for (rids, m, e) in outcomes {
        errors.extend(e);
        for rid in rids {
            *delivered.entry(rid).or_default() += 1;
        }
        marked += m;
    }
    for e in errors {
        f.fail(format!("worker error: {e}"));
    }
    let twice = delivered.values().filter(|n| **n > 1).count();
    f.eq("rows delivered more than once", twice, 0);
    f.eq("rows delivered", delivered.len() as i64, rows);
    f.eq("rows marked by completions", marked, rows);
    f.eq("nothing pending", pending(&mut c, rel, "done"), 0);
    f.check("the drain finishes within 120 s", started.elapsed() < Duration::from_secs(120));
    f.done();
}

/// uuid primary keys (random order, unlike insertion order), drained by 8 workers.
#[test]
fn uuid_keys_drained_by_eight_workers_exactly_once() {
    let cluster = Cluster::start();
    setup(
        &mut cluster.connect(),
        "CREATE TABLE uq (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), rid serial UNIQUE, done timestamptz);
         INSERT INTO uq (rid) SELECT g FROM generate_series(1, 3000) g;",
    );
    eight_workers_drain(&cluster, "uq");
}

/// Three-column composite keys (int, date, text with odd names) drained by 8 workers.
#[test]
fn composite_keys_drained_by_eight_workers_exactly_once() {
    let cluster = Cluster::start();
    setup(
        &mut cluster.connect(),
        "CREATE TABLE cq (\"t\" int, \"excluded\" date, \"key\" text, rid serial UNIQUE, done timestamptz,
                          PRIMARY KEY (\"t\", \"excluded\", \"key\"));
         INSERT INTO cq (\"t\", \"excluded\", \"key\")
           SELECT g % 7, DATE '2026-01-01' + (g % 11), 'k' || (g % 13) || '-' || g FROM generate_series(1, 3000) g;",
    );
    eight_workers_drain(&cluster, "cq");
}

// ---------------------------------------------------------------------------------------
// JSON values for keys

/// A JSON `true`/`false` is a key value only for a boolean column, a JSON object or array
/// only for a json/jsonb column; for text, int and int[] keys they get 22023 and create
/// nothing. For bool and jsonb keys (and bool/jsonb/json defaults) they are accepted.
#[test]
fn json_values_for_keys() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    setup(
        &mut c,
        "CREATE TABLE jt (\"key\" text PRIMARY KEY, n int, flag bool, doc jsonb, j json);
         CREATE TABLE ji (\"key\" int PRIMARY KEY, n int);
         CREATE TABLE ja (\"key\" int[] PRIMARY KEY, n int);
         CREATE TABLE jb (\"key\" bool PRIMARY KEY, n int);
         CREATE TABLE jj (\"key\" jsonb PRIMARY KEY, n int);",
    );
    for rel in ["jt", "ji", "ja"] {
        for bad in ["true", "false", "{\"a\": 1}", "[1, 2]", "{}", "[]"] {
            let key = format!("{{\"key\": {bad}}}");
            f.expect_code(&format!("{rel}: find_or_create {key}"), foc(&mut c, rel, &key, "{}"), "22023");
            f.expect_code(&format!("{rel}: increment {key}"), incr(&mut c, rel, &key, "n", "1"), "22023");
        }
        f.eq(&format!("{rel}: refused keys create nothing"), row_count(&mut c, rel), 0);
    }
    // a string is read by the column type's input function
    create_then_find(&mut c, &mut f, "jt", "jt", "{\"key\": \"true\"}", "{}");
    create_then_find_spelled(&mut c, &mut f, "ji", "ji", "{\"key\": \"12\"}", "{}", false);
    create_then_find_spelled(&mut c, &mut f, "ja", "ja", "{\"key\": \"{1,2}\"}", "{}", false);
    if let Some((data, _)) = f.ok("ja: find", foc(&mut c, "ja", "{\"key\": \"{1,2}\"}", "{}")) {
        f.eq("ja: the array key in data", json_field(&mut c, &data, "key"), "[1, 2]".into());
    }
    // booleans for a boolean key
    for value in ["true", "false"] {
        let key = format!("{{\"key\": {value}}}");
        create_then_find(&mut c, &mut f, "jb", "jb", &key, "{}");
        if let Some(v) = f.ok("jb: increment", incr(&mut c, "jb", &key, "n", "2")) {
            f.eq(&format!("jb: increment {key}"), v, "2".into());
        }
    }
    f.eq("jb rows", row_count(&mut c, "jb"), 2);
    // any JSON value for a jsonb key, compared as jsonb
    for value in ["{\"a\": [1, 2]}", "[1, 2, 3]", "\"str\"", "true", "1.50"] {
        let key = format!("{{\"key\": {value}}}");
        if let Some(data) = create_then_find(&mut c, &mut f, "jj", "jj", &key, "{}") {
            let got = json_field(&mut c, &data, "key");
            f.check(&format!("jj: the jsonb key {value} comes back as {got}"), json_eq(&mut c, &got, value));
        }
    }
    match foc(&mut c, "jj", "{\"key\": {\"a\": [1, 2]}}", "{}") {
        Ok((_, created)) => f.check("jj: the same object again is found", !created),
        Err(e) => f.fail(format!("jj: find object again: {}", describe(&e))),
    }
    match foc(&mut c, "jj", "{\"key\": 1.5}", "{}") {
        Ok((_, created)) => f.check("jj: 1.5 equals jsonb 1.50", !created),
        Err(e) => f.fail(format!("jj: find 1.5: {}", describe(&e))),
    }
    f.eq("jj rows", row_count(&mut c, "jj"), 5);
    // bool, jsonb and json defaults
    if let Some(data) = create_then_find(
        &mut c,
        &mut f,
        "jt defaults",
        "jt",
        "{\"key\": \"d\"}",
        "{\"flag\": true, \"doc\": {\"x\": [1, {\"y\": null}]}}",
    ) {
        f.eq("jt: bool default", json_field(&mut c, &data, "flag"), "true".into());
    }
    match foc(&mut c, "jt", "{\"key\": \"e\"}", "{\"j\": [1, {\"y\": 2}], \"flag\": false}") {
        Ok((data, created)) => {
            f.check("jt: created with a json default", created);
            let j = json_field(&mut c, &data, "j");
            f.check(&format!("jt: json default comes back as {j}"), json_eq(&mut c, &j, "[1, {\"y\": 2}]"));
        }
        Err(e) => f.fail(format!("jt: json default: {}", describe(&e))),
    }
    f.done();
}

// ---------------------------------------------------------------------------------------
// the triggers on odd tables

/// A table in an odd schema with every odd column name, numbered by assign_invoice_number
/// from a tenant column named `select` into a varchar column named `quote"d`; tenant
/// columns of other types (int, uuid, enum); a partitioned table; a table with a generated
/// column made from the number; a table with forced row-level security. Per tenant the
/// numbers are 1..N and next_invoice_number continues from them.
#[test]
fn invoice_trigger_on_odd_tables() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    let schema = qi("Odd \"Sch\".ema");
    let mut cols = vec!["\"t\" bigserial PRIMARY KEY".to_string()];
    for name in ODD.iter().filter(|n| **n != "t" && **n != "select" && **n != "quote\"d") {
        cols.push(format!("{} text DEFAULT 'junk'", qi(name)));
    }
    cols.push("\"select\" text".into());
    cols.push("\"quote\"\"d\" varchar(60)".into());
    setup(
        &mut c,
        &format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.\"In voice.s\" ({});
             CREATE TRIGGER \"number it\" BEFORE INSERT ON {schema}.\"In voice.s\" FOR EACH ROW
               EXECUTE FUNCTION exactly.assign_invoice_number('select', 'quote\"d');",
            cols.join(", ")
        ),
    );
    let odd_rel = format!("{schema}.\"In voice.s\"");
    let tenants = ["ten a", "Ten'B", "x.y", "ünï"];
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..12 {
        let tenant = tenants[i % tenants.len()];
        let got = c.query_one(
            &format!("INSERT INTO {odd_rel} (\"select\") VALUES ($1) RETURNING \"quote\"\"d\"::text"),
            &[&tenant],
        );
        let n = expected.entry(tenant.to_string()).or_default();
        *n += 1;
        if let Some(row) = f.ok(&format!("insert for tenant {tenant:?}"), got) {
            f.eq(&format!("number for tenant {tenant:?}"), row.get::<_, String>(0), format!("{tenant}-{:08}", *n));
        }
    }
    // a number given in the insert is kept and draws nothing
    if let Some(row) = f.ok(
        "insert with a number",
        c.query_one(&format!("INSERT INTO {odd_rel} (\"select\", \"quote\"\"d\") VALUES ('ten a', 'manual') RETURNING \"quote\"\"d\"::text"), &[]),
    ) {
        f.eq("a given number is kept", row.get::<_, String>(0), "manual".into());
    }
    for (tenant, n) in &expected {
        if let Some(row) = f.ok("next_invoice_number", c.query_one("SELECT exactly.next_invoice_number($1)", &[tenant])) {
            f.eq(&format!("next_invoice_number continues the trigger's numbers for {tenant:?}"), row.get::<_, String>(0), format!("{tenant}-{:08}", n + 1));
        }
    }

    setup(
        &mut c,
        "CREATE TYPE region AS ENUM ('eu', 'us');
         CREATE TABLE inv_int (id serial PRIMARY KEY, \"t\" int, \"data\" text);
         CREATE TABLE inv_uuid (id serial PRIMARY KEY, excluded uuid, \"key\" text);
         CREATE TABLE inv_enum (id serial PRIMARY KEY, \"now\" region, \"count\" varchar(30));
         CREATE TABLE inv_part (region text, id serial, num text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE inv_part_eu PARTITION OF inv_part FOR VALUES IN ('p-eu');
         CREATE TABLE inv_part_us PARTITION OF inv_part FOR VALUES IN ('p-us');
         CREATE TABLE inv_gen (id serial PRIMARY KEY, tenant text, num text,
                               label text GENERATED ALWAYS AS ('#' || num) STORED);
         CREATE TABLE inv_rls (id serial PRIMARY KEY, tenant text, num text);
         ALTER TABLE inv_rls ENABLE ROW LEVEL SECURITY;
         ALTER TABLE inv_rls FORCE ROW LEVEL SECURITY;
         CREATE POLICY everyone ON inv_rls USING (true) WITH CHECK (true);
         CREATE TRIGGER n BEFORE INSERT ON inv_int FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('t', 'data');
         CREATE TRIGGER n BEFORE INSERT ON inv_uuid FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('excluded', 'key');
         CREATE TRIGGER n BEFORE INSERT ON inv_enum FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('now', 'count');
         CREATE TRIGGER n BEFORE INSERT ON inv_part FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('region', 'num');
         CREATE TRIGGER n BEFORE INSERT ON inv_gen FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'num');
         CREATE TRIGGER n BEFORE INSERT ON inv_rls FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'num');",
    );
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("inv_int", "\"t\"", "\"data\"", &["7", "-3", "7", "0"]),
        ("inv_uuid", "excluded", "\"key\"", &["0b9c1f6e-0000-4000-8000-000000000001", "0b9c1f6e-0000-4000-8000-000000000001"]),
        ("inv_enum", "\"now\"", "\"count\"", &["eu", "us", "eu"]),
        ("inv_part", "region", "num", &["p-eu", "p-us", "p-eu", "p-eu"]),
        ("inv_gen", "tenant", "num", &["g", "g"]),
        ("inv_rls", "tenant", "num", &["r", "r", "s"]),
    ];
    for (rel, tenant_col, num_col, tenants) in cases {
        let mut count: BTreeMap<&str, i64> = BTreeMap::new();
        for tenant in tenants.iter() {
            let n = count.entry(tenant).or_default();
            *n += 1;
            let got = c.query_one(
                &format!(
                    "INSERT INTO {rel} ({tenant_col}) SELECT {tenant_col} FROM json_populate_record(NULL::{rel}, json_build_object($1::text, $2::text)) RETURNING {num_col}::text"
                ),
                &[&tenant_col.trim_matches('"'), tenant],
            );
            if let Some(row) = f.ok(&format!("{rel}: insert for {tenant}"), got) {
                f.eq(&format!("{rel}: number for tenant {tenant}"), row.get::<_, String>(0), format!("{tenant}-{:08}", *n));
            }
        }
    }
    if let Some(row) = f.ok("inv_gen label", c.query_one("SELECT string_agg(label, ',' ORDER BY id) FROM inv_gen", &[])) {
        f.eq("generated column from the trigger's number", row.get::<_, Option<String>>(0), Some("#g-00000001,#g-00000002".into()));
    }
    f.eq("inv_part_eu rows", row_count(&mut c, "inv_part_eu"), 3);
    f.done();
}

/// maintain_running_balance on a table in an odd schema with every odd column name
/// (amount `Mixed Case`, running balance `with space`, account `select`), with accounts
/// of other types (int, uuid), without an account column, on a partitioned table, with a
/// generated column made from the running balance, with forced row-level security: per
/// account in key order each running balance is the previous one plus the amount; changes
/// and deletes get 23001.
#[test]
fn running_balance_trigger_on_odd_tables() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut f = Faults::default();
    let schema = qi("Led \"ger\".s");
    let mut cols = vec!["\"t\" bigserial PRIMARY KEY".to_string()];
    let special = ["t", "select", "Mixed Case", "with space"];
    for name in ODD.iter().filter(|n| !special.contains(n)) {
        cols.push(format!("{} text DEFAULT 'junk'", qi(name)));
    }
    cols.push("\"select\" text".into());
    cols.push("\"Mixed Case\" numeric".into());
    cols.push("\"with space\" numeric".into());
    setup(
        &mut c,
        &format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.\"pay.ments\" ({});
             CREATE TRIGGER \"keep it\" BEFORE INSERT OR UPDATE OR DELETE ON {schema}.\"pay.ments\" FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('Mixed Case', 'with space', 'select');
             CREATE TABLE led_int (id bigserial PRIMARY KEY, \"data\" int, \"excluded\" numeric, \"t\" numeric);
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_int FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('excluded', 't', 'data');
             CREATE TABLE led_uuid (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \"key\" uuid, amount numeric, \"count\" numeric);
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_uuid FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'count', 'key');
             CREATE TABLE led_one (id bigserial PRIMARY KEY, \"now\" numeric, \"coalesce\" numeric);
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_one FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('now', 'coalesce');
             CREATE TABLE led_part (account text, id bigserial, amount numeric, rb numeric, PRIMARY KEY (account, id))
               PARTITION BY LIST (account);
             CREATE TABLE led_part_a PARTITION OF led_part FOR VALUES IN ('a');
             CREATE TABLE led_part_b PARTITION OF led_part FOR VALUES IN ('b');
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_part FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');
             CREATE TABLE led_gen (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric,
                                   doubled numeric GENERATED ALWAYS AS (rb * 2) STORED);
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_gen FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');
             CREATE TABLE led_rls (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric);
             ALTER TABLE led_rls ENABLE ROW LEVEL SECURITY;
             ALTER TABLE led_rls FORCE ROW LEVEL SECURITY;
             CREATE POLICY everyone ON led_rls USING (true) WITH CHECK (true);
             CREATE TRIGGER k BEFORE INSERT OR UPDATE OR DELETE ON led_rls FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');",
            cols.join(", ")
        ),
    );
    let odd_rel = format!("{schema}.\"pay.ments\"");
    // (table, account column, amount column, running balance column, key order, accounts)
    let cases: Vec<(String, &str, &str, &str, &str, Vec<&str>)> = vec![
        (odd_rel.clone(), "\"select\"", "\"Mixed Case\"", "\"with space\"", "\"t\"", vec!["a'b", "x.y", "ÜN", "a'b"]),
        ("led_int".into(), "\"data\"", "\"excluded\"", "\"t\"", "id", vec!["1", "-2", "1"]),
        ("led_uuid".into(), "\"key\"", "amount", "\"count\"", "id", vec!["0b9c1f6e-0000-4000-8000-000000000001", "0b9c1f6e-0000-4000-8000-000000000002"]),
        ("led_one".into(), "", "\"now\"", "\"coalesce\"", "id", vec![""]),
        ("led_part".into(), "account", "amount", "rb", "id", vec!["a", "b"]),
        ("led_gen".into(), "account", "amount", "rb", "id", vec!["g", "h"]),
        ("led_rls".into(), "account", "amount", "rb", "id", vec!["r", "s"]),
    ];
    let amounts = ["100", "-30.5", "0", "0.0001", "-69.5001", "1e20", "-1e20", "12.30"];
    for (rel, account_col, amount_col, rb_col, order, accounts) in &cases {
        let mut balances: BTreeMap<String, String> = BTreeMap::new();
        for (i, amount) in amounts.iter().enumerate() {
            let account = accounts[i % accounts.len()];
            let sql = if account_col.is_empty() {
                format!("INSERT INTO {rel} ({amount_col}) VALUES ($1::text::numeric) RETURNING {rb_col}::text")
            } else {
                format!(
                    "INSERT INTO {rel} ({account_col}, {amount_col})
                     SELECT {account_col}, $2::text::numeric FROM json_populate_record(NULL::{rel}, json_build_object($3::text, $1::text))
                     RETURNING {rb_col}::text"
                )
            };
            let got = if account_col.is_empty() {
                c.query_one(&sql, &[amount])
            } else {
                c.query_one(&sql, &[&account, amount, &account_col.trim_matches('"')])
            };
            let previous = balances.get(account).cloned().unwrap_or_else(|| "0".into());
            let balance: String = c
                .query_one("SELECT ($1::text::numeric + $2::text::numeric)::text", &[&previous, amount])
                .unwrap()
                .get(0);
            balances.insert(account.to_string(), balance.clone());
            if let Some(row) = f.ok(&format!("{rel}: insert {amount} for {account:?}"), got) {
                let rb: Option<String> = row.get(0);
                let same: bool = c
                    .query_one("SELECT $1::text::numeric IS NOT DISTINCT FROM $2::text::numeric", &[&rb, &balance])
                    .unwrap()
                    .get(0);
                f.check(&format!("{rel}: running balance returned for {account:?} after {amount}: {rb:?}, expected {balance}"), same);
            }
        }
        // every running balance is the previous one (in key order, per account) plus the amount
        let partition = if account_col.is_empty() { "".to_string() } else { format!("PARTITION BY {account_col}") };
        let wrong = c.query_one(
            &format!(
                "SELECT count(*) FROM (SELECT {rb_col} AS rb_, sum({amount_col}) OVER (
                     {partition} ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS expected_
                   FROM {rel}) x WHERE rb_ IS DISTINCT FROM expected_"
            ),
            &[],
        );
        if let Some(row) = f.ok(&format!("{rel}: check running balances"), wrong) {
            f.eq(&format!("{rel}: wrong running balances"), row.get::<_, i64>(0), 0);
        }
        f.expect_code(
            &format!("{rel}: changing an amount"),
            c.execute(&format!("UPDATE {rel} SET {amount_col} = {amount_col} + 1 WHERE {rb_col} IS NOT NULL"), &[]),
            "23001",
        );
        f.expect_code(&format!("{rel}: deleting an entry"), c.execute(&format!("DELETE FROM {rel}"), &[]), "23001");
        f.eq(&format!("{rel}: rows"), row_count(&mut c, rel), amounts.len() as i64);
    }
    if let Some(row) = f.ok("led_gen doubled", c.query_one("SELECT count(*) FROM led_gen WHERE doubled IS DISTINCT FROM rb * 2", &[])) {
        f.eq("led_gen: generated column from the running balance", row.get::<_, i64>(0), 0);
    }
    if let Some(rows) = f.ok("verify_ledger", c.query("SELECT account, ok, detail FROM exactly.verify_ledger()", &[])) {
        for row in rows {
            f.check(
                &format!("verify_ledger: {:?} {:?}", row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(2)),
                row.get::<_, Option<bool>>(1) == Some(true),
            );
        }
    }
    f.done();
}
