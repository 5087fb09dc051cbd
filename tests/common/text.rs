//! Statements through the simple query protocol, values as text: for suites that check
//! many statements and collect every fault they find rather than stop at the first.

use postgres::{Client, SimpleQueryMessage};

pub type Rows = Vec<Vec<Option<String>>>;

pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

pub fn raw(c: &mut Client, sql: &str) -> Result<Rows, postgres::Error> {
    let mut out = Vec::new();
    for message in c.simple_query(sql)? {
        if let SimpleQueryMessage::Row(row) = message {
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            );
        }
    }
    Ok(out)
}

pub fn run(c: &mut Client, sql: &str) -> Result<Rows, String> {
    raw(c, sql).map_err(|e| format!("`{sql}` failed: {}", describe(&e)))
}

pub fn col(c: &mut Client, sql: &str) -> Result<Vec<String>, String> {
    Ok(run(c, sql)?
        .into_iter()
        .map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .unwrap_or_else(|| "NULL".into())
        })
        .collect())
}

pub fn one(c: &mut Client, sql: &str) -> Result<String, String> {
    let values = col(c, sql)?;
    if values.len() != 1 {
        return Err(format!(
            "`{sql}` returned {} rows, expected 1: {values:?}",
            values.len()
        ));
    }
    Ok(values.into_iter().next().unwrap())
}

/// The statement must fail with `state`.
pub fn refused(c: &mut Client, sql: &str, state: &str) -> Result<(), String> {
    match raw(c, sql) {
        Ok(rows) => Err(format!(
            "`{sql}` succeeded ({rows:?}), expected SQLSTATE {state}"
        )),
        Err(e) if e.code().map(|c| c.code()) == Some(state) => Ok(()),
        Err(e) => Err(format!(
            "`{sql}`: expected SQLSTATE {state}, got {}",
            describe(&e)
        )),
    }
}

/// `refused`, inside a transaction that is rolled back either way (a statement that wrongly
/// succeeds changes nothing the next check looks at).
pub fn refused_in_txn(c: &mut Client, sql: &str, state: &str) -> Result<(), String> {
    c.batch_execute("BEGIN").map_err(|e| describe(&e))?;
    let result = refused(c, sql, state);
    c.batch_execute("ROLLBACK").map_err(|e| describe(&e))?;
    result
}

pub fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

pub fn json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON ({e}): {s}"))
}
