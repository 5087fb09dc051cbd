//! `exactly.early_lock_release = on`: hot-row locks are released once the commit record is
//! written, and the client hears COMMIT only once it is durable (and confirmed by the
//! synchronous standbys `synchronous_commit` asks for). Crashes under this setting are in
//! tests/crash.rs; here: the order of commits in the log, a synchronous standby that stops
//! receiving, and the edges of PostgreSQL's transaction machinery.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{at_once, sqlstate, Client, Cluster};

const ON: &str = "-c exactly.early_lock_release=on";

/// How often the server has fsynced the log so far: `pg_stat_wal.wal_sync`, which
/// PostgreSQL 18 moved to `pg_stat_io` (object `wal`).
fn wal_syncs(client: &mut Client) -> i64 {
    client.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    let version: i32 = client.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
    let query = if version >= 180000 {
        "SELECT coalesce(sum(fsyncs), 0)::bigint FROM pg_stat_io WHERE object = 'wal'"
    } else {
        "SELECT wal_sync FROM pg_stat_wal"
    };
    client.query_one(query, &[]).unwrap().get(0)
}

/// Per transaction id, the LSN of its commit record, from `pg_waldump` of the cluster's log
/// from `start`.
fn commit_lsns(cluster: &Cluster, start: &str) -> BTreeMap<i64, u64> {
    let out = Command::new(cluster.bin().join("pg_waldump"))
        .args(["--rmgr=Transaction", "--start", start, "--path"])
        .arg(cluster.dir().join("data/pg_wal"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut commits = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("desc: COMMIT")) {
        let field = |name: &str| line.split(name).nth(1).unwrap().split(',').next().unwrap().trim().to_string();
        let xid: i64 = field("tx:").parse().unwrap();
        let (high, low) = field("lsn:").split_once('/').map(|(h, l)| (h.to_string(), l.to_string())).unwrap();
        let lsn = (u64::from_str_radix(&high, 16).unwrap() << 32) | u64::from_str_radix(&low, 16).unwrap();
        commits.insert(xid, lsn);
    }
    commits
}

/// With the locks released before the flush, the log still orders commits as the hot rows
/// did: a tenant's numbers and an account's entries were committed in the log in the order
/// they were handed out.
#[test]
fn commit_records_follow_invoice_numbers_and_ledger_order() {
    let cluster = Cluster::start_with(ON);
    let mut admin = cluster.connect();
    let start: String = admin.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let drawn = at_once(&cluster, 32, |i, client| {
        (0..30)
            .map(|_| {
                let mut tx = client.transaction().unwrap();
                let number: String = tx.query_one("SELECT exactly.next_invoice_number('hot')", &[]).unwrap().get(0);
                let entry: i64 = tx
                    .query_one("SELECT id FROM exactly.append_payment('hot', $1::int)", &[&((i % 7) as i32 - 3)])
                    .unwrap()
                    .get(0);
                let xid: i64 = tx.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).unwrap().get(0);
                tx.commit().unwrap();
                (number, entry, xid)
            })
            .collect::<Vec<_>>()
    });
    admin.batch_execute("SELECT pg_switch_wal()").unwrap();
    let lsns = commit_lsns(&cluster, &start);
    let mut by_number: Vec<(String, i64)> = drawn.iter().flatten().map(|(n, _, x)| (n.clone(), *x)).collect();
    by_number.sort();
    let mut by_entry: Vec<(i64, i64)> = drawn.iter().flatten().map(|(_, e, x)| (*e, *x)).collect();
    by_entry.sort();
    assert_eq!(by_number.len(), 960);
    let in_log = |xids: Vec<i64>| -> Vec<u64> {
        xids.iter().map(|x| *lsns.get(x).unwrap_or_else(|| panic!("no commit record for {x}"))).collect()
    };
    let numbers = in_log(by_number.iter().map(|(_, x)| *x).collect());
    let entries = in_log(by_entry.iter().map(|(_, x)| *x).collect());
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "commit records out of invoice-number order");
    assert!(entries.windows(2).all(|w| w[0] < w[1]), "commit records out of ledger order");
    let ok: bool = admin.query_one("SELECT bool_and(ok) FROM exactly.verify_ledger()", &[]).unwrap().get(0);
    assert!(ok);
}

/// A cluster started with `options` and a streaming standby that it then waits for on every
/// commit (named only once it runs: the extension's own creation would wait for it).
fn with_synchronous_standby(options: &str) -> (Cluster, Cluster) {
    let cluster = Cluster::start_with(options);
    let standby = cluster.start_standby();
    let mut admin = cluster.connect();
    admin.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'walreceiver'").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin
        .query_one("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'", &[])
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the standby never became synchronous");
        std::thread::sleep(Duration::from_millis(50));
    }
    (cluster, standby)
}

/// Run `sql` on a connection of its own in a thread; the receiver gets its outcome.
fn in_thread(cluster: &Cluster, sql: &'static str) -> (i32, mpsc::Receiver<Result<(), String>>) {
    let mut client = cluster.connect();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = client.batch_execute(sql).map_err(|e| e.to_string());
        let _ = send.send(outcome);
    });
    (pid, receive)
}

/// What backend `pid` waits for (`wait_event`), once it waits for `wanted` (within 30 s).
fn waits_for(client: &mut Client, pid: i32, wanted: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let event: Option<String> = client
            .query_one("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        if event.as_deref() == Some(wanted) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// With a synchronous standby that stops receiving, commits wait for it — and, with the
/// setting on, wait without the hot row: the next transaction draws the next number at once
/// (and waits for the standby in its turn). Without the setting, it waits for the row. Once
/// the standby receives again, every acknowledged number is on it. (The run without the
/// setting is the twin that shows the check can fail.)
#[test]
fn a_stopped_synchronous_standby_holds_commits_but_not_the_hot_row() {
    for early_release in [true, false] {
        let (cluster, standby) = with_synchronous_standby("");
        let mut admin = cluster.connect();
        let setting = if early_release { "on" } else { "off" };
        admin.batch_execute(&format!("ALTER DATABASE postgres SET exactly.early_lock_release = {setting}")).unwrap();
        admin.batch_execute("SELECT exactly.next_invoice_number('hot')").unwrap(); // the tenant, replicated
        let receiver: i32 = standby
            .connect()
            .query_one("SELECT pid FROM pg_stat_wal_receiver", &[])
            .unwrap()
            .get(0);
        // only processes of the clusters this test started, by pid
        assert!(Command::new("kill").args(["-STOP", &receiver.to_string()]).status().unwrap().success());
        let (first, first_done) = in_thread(&cluster, "SELECT exactly.next_invoice_number('hot')");
        assert!(waits_for(&mut admin, first, "SyncRep"), "the first commit waits for the standby");
        let (second, second_done) = in_thread(&cluster, "SELECT exactly.next_invoice_number('hot')");
        // without the setting, the first still holds the tenant's queue lock (an advisory lock)
        let second_waits_for = if early_release { "SyncRep" } else { "advisory" };
        let waited = waits_for(&mut admin, second, second_waits_for);
        assert!(Command::new("kill").args(["-CONT", &receiver.to_string()]).status().unwrap().success());
        assert!(waited, "early_lock_release = {setting}: the second draw should wait in {second_waits_for}");
        for done in [first_done, second_done] {
            done.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
        }
        // acknowledged: numbers 2 and 3; the standby has them (synchronous_commit = on)
        let next: i64 = standby
            .connect()
            .query_one("SELECT next_value FROM exactly.invoice_sequences WHERE tenant = 'hot'", &[])
            .unwrap()
            .get(0);
        assert_eq!(next, 4, "early_lock_release = {setting}");
    }
}

/// A user who already commits asynchronously gets no extra flush from us; after a released
/// commit, the next plain commit flushes as before, and SHOW never sees a change.
#[test]
fn the_users_synchronous_commit_is_kept() {
    let cluster = Cluster::start_with(&format!("{ON} -c wal_writer_delay=10000ms -c fsync=on"));
    let mut client = cluster.connect();
    client.batch_execute("CREATE TABLE plain (n int)").unwrap();
    // SHOW inside and after a transaction that used a hot row
    client.batch_execute("BEGIN; SELECT exactly.next_invoice_number('t')").unwrap();
    let inside: String = client.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    client.batch_execute("COMMIT").unwrap();
    let after: String = client.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    assert_eq!((inside.as_str(), after.as_str()), ("on", "on"));
    // released commits still flush (after the release), one each
    let before = wal_syncs(&mut client);
    for _ in 0..20 {
        client.batch_execute("SELECT exactly.next_invoice_number('t')").unwrap();
    }
    let released = wal_syncs(&mut client) - before;
    assert!(released >= 20, "20 released commits flushed {released} times");
    // plain commits after them flush as before: synchronous_commit was put back
    let before = wal_syncs(&mut client);
    for n in 0..20 {
        client.execute("INSERT INTO plain VALUES ($1)", &[&n]).unwrap();
    }
    let plain = wal_syncs(&mut client) - before;
    assert!(plain >= 20, "20 plain commits after released ones flushed {plain} times");
    // a session already at synchronous_commit = off: no flush from us
    client.batch_execute("SET synchronous_commit = off").unwrap();
    let before = wal_syncs(&mut client);
    for _ in 0..20 {
        client.batch_execute("SELECT exactly.next_invoice_number('t')").unwrap();
    }
    let asynchronous = wal_syncs(&mut client) - before;
    assert!(asynchronous < 5, "20 asynchronous commits flushed {asynchronous} times");
}

/// The edges of the transaction machinery, each with numbers that must stay gapless: PREPARE
/// and COMMIT PREPARED (2PC keeps its normal path), savepoints, PL/pgSQL exception blocks, a
/// function with its own SET clause, a procedure that commits, commit_delay, and a backend
/// terminated while its released commit waits for a standby.
#[test]
fn prepared_transactions_savepoints_exceptions_set_clauses_procedures_and_commit_delay() {
    let cluster = Cluster::start_with(&format!("{ON} -c max_prepared_transactions=4 -c commit_delay=200 -c commit_siblings=0"));
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE FUNCTION draw_async() RETURNS text LANGUAGE sql SET synchronous_commit = off
                 AS $$ SELECT exactly.next_invoice_number('e') $$;
             CREATE PROCEDURE draw_each_committed(n int) LANGUAGE plpgsql AS $$
             BEGIN
                 FOR i IN 1..n LOOP
                     PERFORM exactly.next_invoice_number('e');
                     COMMIT;
                 END LOOP;
             END $$;",
        )
        .unwrap();
    client.batch_execute("BEGIN; SELECT exactly.next_invoice_number('e'); PREPARE TRANSACTION 'p1'").unwrap();
    let mut other = cluster.connect();
    let (waiter, done) = in_thread(&cluster, "SELECT exactly.next_invoice_number('e')");
    assert!(waits_for(&mut other, waiter, "advisory"), "a prepared draw holds the tenant");
    client.batch_execute("COMMIT PREPARED 'p1'").unwrap();
    done.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    client
        .batch_execute(
            "BEGIN;
             SAVEPOINT s; SELECT exactly.next_invoice_number('e'); ROLLBACK TO SAVEPOINT s;
             SELECT exactly.next_invoice_number('e');
             COMMIT;
             DO $$ BEGIN
                 PERFORM exactly.next_invoice_number('e');
                 RAISE EXCEPTION 'undo it';
             EXCEPTION WHEN OTHERS THEN
                 PERFORM exactly.next_invoice_number('e');
             END $$;
             SELECT draw_async();",
        )
        .unwrap();
    // a procedure's COMMITs need a statement of their own (not a multi-statement string)
    client.batch_execute("CALL draw_each_committed(5)").unwrap();
    let next: i64 = client
        .query_one("SELECT next_value FROM exactly.invoice_sequences WHERE tenant = 'e'", &[])
        .unwrap()
        .get(0);
    // 1 prepared, 1 waiter, 1 after the savepoint, 1 after the exception, 1 async, 5 in the procedure
    assert_eq!(next, 11);
    let setting: String = client.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
    assert_eq!(setting, "on");
}

/// A backend terminated while its released commit waits for a stopped synchronous standby:
/// as in PostgreSQL itself, the commit stands locally (the client is not told), the
/// connection ends, the tenant's numbering goes on without a gap, and the server is fine.
#[test]
fn a_backend_terminated_while_its_released_commit_waits_for_a_standby() {
    let (cluster, standby) = with_synchronous_standby(ON);
    let mut admin = cluster.connect();
    admin.batch_execute("SELECT exactly.next_invoice_number('t')").unwrap();
    let receiver: i32 = standby.connect().query_one("SELECT pid FROM pg_stat_wal_receiver", &[]).unwrap().get(0);
    assert!(Command::new("kill").args(["-STOP", &receiver.to_string()]).status().unwrap().success());
    let (pid, done) = in_thread(&cluster, "SELECT exactly.next_invoice_number('t')");
    let waited = waits_for(&mut admin, pid, "SyncRep");
    admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();
    let outcome = done.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(Command::new("kill").args(["-CONT", &receiver.to_string()]).status().unwrap().success());
    assert!(waited, "the commit should have waited for the standby");
    assert!(outcome.is_err(), "the terminated client must not hear COMMIT");
    let next: String = admin.query_one("SELECT exactly.next_invoice_number('t')", &[]).unwrap().get(0);
    assert_eq!(next, "t-00000003", "the terminated commit stands locally, as in core");
    assert_eq!(sqlstate(admin.query("SELECT exactly.next_invoice_numbers('t', 0)", &[])), "22023");
}
