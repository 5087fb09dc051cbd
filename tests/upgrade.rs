//! Upgrades from every released version (their install scripts are kept in sql/released/)
//! to this one give the same extension as a fresh install: the same functions (with their
//! settings and security), tables, columns, indexes, triggers, privileges and dump marks;
//! the data from before is kept and converted, and the functions work on it.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Client, Cluster, NoTls};

/// Put the released install scripts next to this version's in the server's extension
/// directory (as root, or through sudo, as `cargo pgrx install` does).
fn install_released_scripts() {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(pg_config).arg("--sharedir").output().unwrap();
    let extension_dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("extension");
    for version in ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"] {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("sql/released/pg_exactly--{version}.sql"));
        let copied = std::fs::copy(&script, extension_dir.join(script.file_name().unwrap())).is_ok()
            || Command::new("sudo")
                .arg("cp")
                .arg(&script)
                .arg(&extension_dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(copied, "could not copy {} into {}", script.display(), extension_dir.display());
    }
}

/// Everything the extension defines, one line per object, sorted.
fn definitions(client: &mut Client) -> Vec<String> {
    let sql = "
        SELECT 'function ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') '
               || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proparallel::text
               || CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END
               || coalesce(' ' || array_to_string(p.proconfig, ','), '')
               || coalesce(' acl ' || p.proacl::text, '')
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
        SELECT 'acl ' || c.relname || ' ' || coalesce(c.relacl::text, 'default')
        FROM pg_class c WHERE c.relnamespace = 'exactly'::regnamespace AND c.relkind IN ('r', 'S')
        UNION ALL
        SELECT 'schema acl ' || coalesce(n.nspacl::text, 'default') FROM pg_namespace n WHERE n.nspname = 'exactly'
        UNION ALL
        SELECT 'trigger ' || pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'exactly'::regnamespace AND NOT t.tgisinternal
        UNION ALL
        SELECT 'comment ' || c.relname || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
        FROM pg_class c WHERE c.relnamespace = 'exactly'::regnamespace AND c.relkind = 'r'
        UNION ALL
        SELECT 'dumped ' || x::regclass::text
        FROM pg_extension e, unnest(e.extconfig) x WHERE e.extname = 'pg_exactly'
        ORDER BY 1";
    client.query(sql, &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

fn version(client: &mut Client) -> String {
    client
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_exactly'", &[])
        .unwrap()
        .get(0)
}

/// A database `name` in `cluster` with pg_exactly `from` installed, `before` run, then
/// updated to this version.
fn upgraded(cluster: &Cluster, name: &str, from: &str, before: &str) -> Client {
    cluster.connect().batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut config = cluster.config();
    let mut client = config.dbname(name).connect(NoTls).unwrap();
    client
        .batch_execute(&format!("CREATE EXTENSION pg_exactly VERSION '{from}'; {before}"))
        .unwrap();
    client.batch_execute("ALTER EXTENSION pg_exactly UPDATE").unwrap();
    client
}

fn assert_same_as_fresh(fresh: &mut Client, upgraded: &mut Client, from: &str) {
    assert_eq!(version(upgraded), version(fresh), "updating from {from}");
    assert_ne!(version(upgraded), from);
    let (want, got) = (definitions(fresh), definitions(upgraded));
    assert!(want.iter().any(|d| d.starts_with("function grant_usage(")), "{want:#?}");
    assert!(want.iter().any(|d| d.starts_with("trigger ")), "{want:#?}");
    let missing: Vec<_> = want.iter().filter(|d| !got.contains(d)).collect();
    let extra: Vec<_> = got.iter().filter(|d| !want.contains(d)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "from {from}: missing after the upgrade: {missing:#?}\nnot in a fresh install: {extra:#?}"
    );
}

#[test]
fn upgrading_from_every_released_version_gives_the_same_extension_as_installing_this_one() {
    install_released_scripts();
    let cluster = Cluster::start(); // database postgres: a fresh install of this version
    let mut fresh = cluster.connect();
    for from in ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"] {
        let name = format!("from_{}", from.replace('.', "_"));
        // written as the old versions wrote it (their functions run on their own library only)
        let before = "INSERT INTO exactly.accounts (account, balance, entries) VALUES ('before the upgrade', 10, 1);
                      INSERT INTO exactly.payments (account, amount, running_balance) VALUES ('before the upgrade', 10, 10);";
        let mut client = upgraded(&cluster, &name, from, before);
        assert_same_as_fresh(&mut fresh, &mut client, from);
        // the data from before is kept, and the functions work
        client
            .batch_execute(
                "SELECT exactly.append_payment('before the upgrade', 5);
                 CREATE TABLE counters (key text PRIMARY KEY, value int DEFAULT 0);
                 SELECT exactly.increment('counters', '{\"key\": \"k\"}', 'value');
                 SELECT exactly.lock('after the upgrade');",
            )
            .unwrap();
        let balance: String = client
            .query_one("SELECT balance::text FROM exactly.accounts WHERE account = 'before the upgrade'", &[])
            .unwrap()
            .get(0);
        assert_eq!(balance, "15", "from {from}");
        let ok: bool = client.query_one("SELECT bool_and(ok) FROM exactly.verify_ledger()", &[]).unwrap().get(0);
        assert!(ok, "from {from}");
    }
}

/// A database in use under 0.2.0 — invoice counters, an application role with the 0.2.0
/// README's grants, a live claim and failure records keyed by text (written as 0.2.0 wrote
/// them: its functions cannot run on this version's library) — keeps working after the
/// update: numbering goes on where it was, the role's write access is gone until
/// grant_usage gives it what it needs, and the claim completes exactly its rows.
#[test]
fn a_database_in_use_under_0_2_0_keeps_its_state_and_claims_after_the_update() {
    install_released_scripts();
    let cluster = Cluster::start();
    let mut client = upgraded(
        &cluster,
        "in_use",
        "0.2.0",
        "CREATE ROLE app LOGIN;
         GRANT USAGE ON SCHEMA exactly TO app;
         GRANT SELECT, INSERT, UPDATE ON exactly.invoice_sequences TO app;
         GRANT SELECT, INSERT, UPDATE ON exactly.accounts, exactly.payments, exactly.table_balances TO app;
         GRANT SELECT, INSERT, UPDATE, DELETE ON exactly.claims, exactly.claim_attempts TO app;
         INSERT INTO exactly.invoice_sequences (tenant, prefix, next_value) VALUES ('11', '11', 4);
         SET DateStyle = 'SQL, DMY';
         CREATE TABLE jobs (day date PRIMARY KEY, done_at timestamptz);
         INSERT INTO jobs SELECT d::date FROM generate_series('2026-01-01'::date, '2026-01-10', '1 day') d;
         -- 0.2.0 kept keys as the key's text under the claimer's settings: 1 to 4 January
         INSERT INTO exactly.claims (claim, rel, done_column, row_keys, leased_until)
         VALUES ('00000000-0000-0000-0000-000000000001', 'jobs', 'done_at',
                 '{01/01/2026,02/01/2026,03/01/2026,04/01/2026}', now() + interval '1 hour');
         INSERT INTO exactly.claim_attempts (rel, row_key, failed_attempts, last_failed_at)
         VALUES ('jobs', '05/01/2026', 1, now()), ('jobs', '06/01/2026', 2, now()),
                ('jobs', 'not a date', 1, now());",
    );
    // the counter continues at the same next number
    let next: String = client.query_one("SELECT exactly.next_invoice_number('11')", &[]).unwrap().get(0);
    assert_eq!(next, "11-00000004");
    // and the numberings added in 0.3.0 work on the updated tables
    client
        .batch_execute("SELECT exactly.define_invoice_sequence('acme', 'INV', 4, '{prefix}-{yyyy}-{number}', 'yearly')")
        .unwrap();
    let dated: String = client
        .query_one("SELECT exactly.next_invoice_number('acme', '2026-05-01')", &[])
        .unwrap()
        .get(0);
    assert_eq!(dated, "INV-2026-0001");
    // the failure records now name their rows by key; one that no longer reads back is gone
    let attempts: Vec<String> = client
        .query("SELECT key::text || ' ' || failed_attempts FROM exactly.claim_attempts ORDER BY key::text", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts, ["{\"day\": \"05/01/2026\"} 1", "{\"day\": \"06/01/2026\"} 2"]);
    // the live claim from 0.2.0 holds its rows and completes exactly them, under any DateStyle
    client.batch_execute("SET DateStyle = 'SQL, MDY'").unwrap();
    let claimed: i64 = client
        .query_one("SELECT count(*) FROM exactly.claim_batch('jobs', 'done_at', 100)", &[])
        .unwrap()
        .get(0);
    assert_eq!(claimed, 6, "the live claim's four rows are not handed out again");
    let marked: i64 = client
        .query_one("SELECT exactly.complete_batch('00000000-0000-0000-0000-000000000001')", &[])
        .unwrap()
        .get(0);
    assert_eq!(marked, 4);
    let done: Vec<String> = client
        .query("SELECT to_char(day, 'YYYY-MM-DD') FROM jobs WHERE done_at IS NOT NULL ORDER BY day", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(done, ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]);
    // the role's 0.2.0 write access is gone; grant_usage gives it what 0.3.0 documents
    let mut config = cluster.config();
    let mut app = config.dbname("in_use").user("app").connect(NoTls).unwrap();
    let refused = app.execute("UPDATE exactly.invoice_sequences SET next_value = 1", &[]);
    assert_eq!(common::sqlstate(refused), "42501");
    assert_eq!(common::sqlstate(app.query("SELECT exactly.next_invoice_number('11')", &[])), "42501");
    client.batch_execute("SELECT exactly.grant_usage('app')").unwrap();
    let next: String = app.query_one("SELECT exactly.next_invoice_number('11')", &[]).unwrap().get(0);
    assert_eq!(next, "11-00000005");
    assert_eq!(common::sqlstate(app.execute("UPDATE exactly.invoice_sequences SET next_value = 1", &[])), "42501");
}

/// A database in use under 0.3.0 — accounts with balances and limits, an application role
/// given usage by 0.3.0's grant_usage — after the update: balances and limits are kept, no
/// account has anything pending, the role reads the new tables and moves money at once,
/// and verify_ledger is clean.
#[test]
fn a_ledger_in_use_under_0_3_0_takes_transfers_and_holds_after_the_update() {
    install_released_scripts();
    let cluster = Cluster::start();
    let mut client = upgraded(
        &cluster,
        "ledger_in_use",
        "0.3.0",
        "CREATE ROLE app LOGIN;
         SELECT exactly.grant_usage('app');
         -- as 0.3.0 wrote them (its functions run on its own library only)
         INSERT INTO exactly.accounts (account, min_balance, balance, entries) VALUES ('alice', 0, 100, 1);
         INSERT INTO exactly.accounts (account, balance, entries) VALUES ('bob', 30, 2);
         INSERT INTO exactly.payments (account, amount, running_balance)
         VALUES ('alice', 100, 100), ('bob', 10, 10), ('bob', 20, 30);",
    );
    let mut config = cluster.config();
    let mut app = config.dbname("ledger_in_use").user("app").connect(NoTls).unwrap();
    let moved: String = app
        .query_one("SELECT amount::text FROM exactly.transfer('alice', 'bob', 40)", &[])
        .unwrap()
        .get(0);
    assert_eq!(moved, "40");
    let held: i64 = app.query_one("SELECT id FROM exactly.hold('alice', 'bob', 50)", &[]).unwrap().get(0);
    // the limit kept from 0.3.0 counts the hold: 100 - 40 - 50 leaves 10
    assert_eq!(common::sqlstate(app.query("SELECT exactly.transfer('alice', 'bob', 11)", &[])), "23514");
    app.query("SELECT exactly.post_hold($1, 30)", &[&held]).unwrap();
    let balances: Vec<String> = app
        .query("SELECT account || ' ' || balance || ' ' || pending_debits || ' ' || pending_credits \
                FROM exactly.accounts ORDER BY account", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(balances, ["alice 30 0 0", "bob 100 0 0"]);
    let transfers: i64 = app.query_one("SELECT count(*) FROM exactly.transfers", &[]).unwrap().get(0);
    assert_eq!(transfers, 2);
    assert_eq!(common::sqlstate(app.execute("DELETE FROM exactly.holds", &[])), "42501");
    app.execute("INSERT INTO exactly.accounts (account, currency, max_balance) VALUES ('eur', 'EUR', 5)", &[])
        .unwrap();
    let ok: bool = client.query_one("SELECT bool_and(ok) FROM exactly.verify_ledger()", &[]).unwrap().get(0);
    assert!(ok);
}

/// A queue in use under 0.4.0 — a live claim and a row that failed once, an application
/// role given usage by 0.4.0's grant_usage — after the update: the claim completes by part
/// with complete_rows, the failed row keeps its count and fails on to be given up under
/// max_attempts, and the role takes leases and slots at once.
#[test]
fn a_queue_in_use_under_0_4_0_takes_leases_and_gives_up_rows_after_the_update() {
    install_released_scripts();
    let cluster = Cluster::start();
    let mut client = upgraded(
        &cluster,
        "queue_in_use",
        "0.4.0",
        "CREATE ROLE app LOGIN;
         SELECT exactly.grant_usage('app');
         CREATE TABLE jobs (id int PRIMARY KEY, done timestamptz);
         GRANT SELECT, UPDATE ON jobs TO app;
         INSERT INTO jobs SELECT i, NULL FROM generate_series(1, 3) i;
         -- as 0.4.0 wrote them (its functions run on its own library only)
         INSERT INTO exactly.claims (claim, rel, done_column, row_keys, keys, key_types, leased_until)
         VALUES ('00000000-0000-0000-0000-000000000001', 'jobs', 'done',
                 ARRAY['\\x0400000001000000', '\\x0400000002000000']::bytea[],
                 ARRAY['{\"id\": 1}', '{\"id\": 2}']::jsonb[], ARRAY['int4'::regtype::oid],
                 now() + interval '1 hour');
         INSERT INTO exactly.claim_attempts (rel, row_key, key, failed_attempts, last_failed_at)
         VALUES ('jobs', '\\x0400000003000000', '{\"id\": 3}', 1, now());",
    );
    let mut config = cluster.config();
    let mut app = config.dbname("queue_in_use").user("app").connect(NoTls).unwrap();
    let done: i64 = app
        .query_one("SELECT exactly.complete_rows('00000000-0000-0000-0000-000000000001', '[2]')", &[])
        .unwrap()
        .get(0);
    assert_eq!(done, 1);
    let claimed: Vec<String> = app
        .query("SELECT claim::text FROM exactly.claim_batch('jobs', 'done', 10, max_attempts => 2)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(claimed.len(), 1, "row 3 only: row 1 is still in the 0.4.0 claim");
    let failed: i64 = app
        .query_one("SELECT exactly.fail_rows($1::text::uuid, '[3]', 'boom')", &[&claimed[0]])
        .unwrap()
        .get(0);
    assert_eq!(failed, 1);
    let row: (i32, bool) = client
        .query_one("SELECT failed_attempts, given_up_at IS NOT NULL FROM exactly.claim_attempts", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(row, (2, true), "the count kept from 0.4.0 plus this failure reaches max_attempts");
    let fence: i64 = app.query_one("SELECT fence FROM exactly.acquire_lease('sync', '1 minute')", &[]).unwrap().get(0);
    assert_eq!(fence, 1);
    app.query_one("SELECT exactly.acquire_slot('sync', 1, '1 minute')", &[]).unwrap();
}
