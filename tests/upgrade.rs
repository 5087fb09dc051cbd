//! The upgrade from the released 0.1.0 (its install script is kept in sql/released/) to
//! this version gives the same extension as a fresh install: the same functions, tables,
//! columns, indexes and dump marks, and the new functions work.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Client, Cluster};

/// Put the released 0.1.0 install script next to this version's in the server's extension
/// directory (as root, or through sudo, as `cargo pgrx install` does).
fn install_released_script() {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(pg_config).arg("--sharedir").output().unwrap();
    let extension_dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("extension");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql/released/pg_exactly--0.1.0.sql");
    let copied = std::fs::copy(&script, extension_dir.join("pg_exactly--0.1.0.sql")).is_ok()
        || Command::new("sudo")
            .arg("cp")
            .arg(&script)
            .arg(&extension_dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    assert!(copied, "could not copy {} into {}", script.display(), extension_dir.display());
}

/// Everything the extension defines, one line per object, sorted.
fn definitions(client: &mut Client) -> Vec<String> {
    let sql = "
        SELECT 'function ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') '
               || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proparallel::text
        FROM pg_proc p WHERE p.pronamespace = 'exactly'::regnamespace
        UNION ALL
        SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'exactly'::regnamespace AND c.relkind = 'r'
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'exactly'::regnamespace
        UNION ALL
        SELECT 'reloptions ' || c.relname || ' ' || array_to_string(c.reloptions, ',')
        FROM pg_class c WHERE c.relnamespace = 'exactly'::regnamespace AND c.reloptions IS NOT NULL
        UNION ALL
        SELECT 'dumped ' || x::regclass::text
        FROM pg_extension e, unnest(e.extconfig) x WHERE e.extname = 'pg_exactly'
        ORDER BY 1";
    client.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

#[test]
fn upgrading_from_0_1_0_gives_the_same_extension_as_installing_this_version() {
    install_released_script();
    let cluster = Cluster::start(); // database postgres: a fresh install of this version
    let mut fresh = cluster.connect();
    fresh.batch_execute("CREATE DATABASE upgraded").unwrap();
    let mut config = cluster.config();
    let mut upgraded = config.dbname("upgraded").connect(common::NoTls).unwrap();
    upgraded
        .batch_execute(
            "CREATE EXTENSION pg_exactly VERSION '0.1.0';
             SELECT exactly.append_payment('before the upgrade', 10);
             ALTER EXTENSION pg_exactly UPDATE;",
        )
        .unwrap();
    let version: String = upgraded
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_exactly'", &[])
        .unwrap()
        .get(0);
    let fresh_version: String = fresh
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_exactly'", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, fresh_version);
    assert_ne!(version, "0.1.0");
    let (want, got) = (definitions(&mut fresh), definitions(&mut upgraded));
    assert!(want.iter().any(|d| d.starts_with("function find_or_create(")), "{want:#?}");
    assert!(want.iter().any(|d| d.starts_with("column claims.claim ")), "{want:#?}");
    let missing: Vec<_> = want.iter().filter(|d| !got.contains(d)).collect();
    let extra: Vec<_> = got.iter().filter(|d| !want.contains(d)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing after the upgrade: {missing:#?}\nnot in a fresh install: {extra:#?}");
    // the data from before is kept, and the new functions work
    upgraded
        .batch_execute(
            "SELECT exactly.append_payment('before the upgrade', 5);
             CREATE TABLE counters (key text PRIMARY KEY, value int DEFAULT 0);
             SELECT exactly.increment('counters', '{\"key\": \"k\"}', 'value');
             SELECT exactly.lock('after the upgrade');",
        )
        .unwrap();
    let balance: String = upgraded
        .query_one("SELECT balance::text FROM exactly.accounts WHERE account = 'before the upgrade'", &[])
        .unwrap()
        .get(0);
    assert_eq!(balance, "15");
}
