//! Every `examples/NAME.sql` is run through psql and its output compared with
//! `examples/NAME.sql.out`, so the README's examples cannot rot.
//! After a deliberate change, `EXACTLY_BLESS=1 cargo pgrx test ...` rewrites the .out files.

mod common;

use std::path::PathBuf;

#[test]
fn examples_print_their_recorded_output() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut sql_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    sql_files.sort();
    assert!(!sql_files.is_empty(), "no examples in {}", dir.display());
    let mut failures = Vec::new();
    for sql in &sql_files {
        // a cluster per example: each starts from a freshly created extension
        let actual = common::Cluster::start().psql_file(sql);
        let expected_path = sql.with_extension("sql.out");
        if std::env::var_os("EXACTLY_BLESS").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!("{}:\n{}", sql.display(), diff(&expected, &actual)));
        }
    }
    assert!(
        failures.is_empty(),
        "examples differ from their .out files:\n{}",
        failures.join("\n")
    );
}

/// The first differing lines, enough to see what changed.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let first = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let show = |lines: &[&str]| {
        lines
            .iter()
            .skip(first)
            .take(5)
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "  from line {}:\n  expected:\n{}\n  actual:\n{}",
        first + 1,
        show(&e),
        show(&a)
    )
}
