//! Named locks and exactly-once work claims (seed 003) under real concurrency: lock
//! timeouts, killed holders, deadlocks, workers draining a table in parallel, a worker
//! killed mid-batch, stale completions, and the same through a transaction-pooling
//! PgBouncer.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{at_once, at_once_through, sqlstate, wait_until_blocked, Client, Cluster, PgBouncer};
use postgres::SimpleQueryMessage;

/// A table of `rows` pending resources, as in the seed.
fn resources(client: &mut Client, rows: i64) {
    client
        .batch_execute(&format!(
            "CREATE TABLE resources (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                                     name text NOT NULL, synced_at timestamptz);
             CREATE INDEX ON resources (id) WHERE synced_at IS NULL;
             INSERT INTO resources (name) SELECT 'resource ' || i FROM generate_series(1, {rows}) i;"
        ))
        .unwrap();
}

/// The rows of one statement, as text, through the simple query protocol: the extended
/// protocol's named prepared statements do not survive a transaction-pooling PgBouncer
/// (the next statement may run on another server connection), ours must.
fn rows(client: &mut Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .unwrap()
        .into_iter()
        .filter_map(|message| match message {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).unwrap_or("").to_string()).collect())
            }
            _ => None,
        })
        .collect()
}

/// One claimed batch: the claim and the ids of its rows.
fn claim(client: &mut Client, batch: i32, lease: &str) -> Option<(String, Vec<i64>)> {
    let rows = rows(
        client,
        &format!("SELECT claim, data->>'id' FROM exactly.claim_batch('resources', 'synced_at', {batch}, '{lease}')"),
    );
    let claim = rows.first()?[0].clone();
    assert!(rows.iter().all(|r| r[0] == claim), "one claim per call");
    Some((claim, rows.iter().map(|r| r[1].parse().unwrap()).collect()))
}

fn complete(client: &mut Client, claim: &str) -> i64 {
    rows(client, &format!("SELECT exactly.complete_batch('{claim}')"))[0][0].parse().unwrap()
}

fn pending(client: &mut Client) -> i64 {
    rows(client, "SELECT count(*) FROM resources WHERE synced_at IS NULL")[0][0].parse().unwrap()
}

/// Workers claim, "send" (record the ids they were given) and complete until nothing is
/// pending. Returns how often each id was delivered and how many rows the completions
/// marked in total.
fn drain(
    config: postgres::Config,
    workers: usize,
    batch: i32,
) -> (HashMap<i64, usize>, i64) {
    let delivered = Arc::new(Mutex::new(HashMap::new()));
    let seen = delivered.clone();
    let marked: i64 = at_once_through(config, workers, move |_, client| {
        let mut marked = 0;
        loop {
            match claim(client, batch, "5 minutes") {
                Some((claim, ids)) => {
                    {
                        let mut seen = seen.lock().unwrap();
                        for id in &ids {
                            *seen.entry(*id).or_insert(0) += 1;
                        }
                    }
                    marked += complete(client, &claim);
                }
                // others may still hold claims; stop once no row is pending at all
                None if pending(client) == 0 => return marked,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    })
    .into_iter()
    .sum();
    let delivered = delivered.lock().unwrap().clone();
    (delivered, marked)
}

fn assert_each_row_delivered_and_completed_once(
    client: &mut Client,
    rows: i64,
    delivered: &HashMap<i64, usize>,
    marked: i64,
) {
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows delivered more than once: {twice:?}");
    assert_eq!(delivered.len() as i64, rows, "every row delivered");
    assert_eq!(marked, rows, "every row marked done by exactly one completion");
    assert_eq!(pending(client), 0);
    let claims: i64 = client
        .query_one("SELECT count(*) FROM exactly.claims", &[])
        .unwrap()
        .get(0);
    assert_eq!(claims, 0, "completed claims are gone");
}

/// 8 workers drain 20,000 rows in batches of 100: each row is handed to exactly one worker
/// and marked done by exactly one completion.
#[test]
fn eight_workers_drain_twenty_thousand_rows_exactly_once() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    resources(&mut client, 20_000);
    let (delivered, marked) = drain(cluster.config(), 8, 100);
    assert_each_row_delivered_and_completed_once(&mut client, 20_000, &delivered, marked);
}

/// The seed's job without its lock (select pending, send, mark) from 8 workers: rows are
/// sent twice. The check above catches it, so it can fail.
#[test]
fn the_seeds_unlocked_job_sends_rows_twice() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    resources(&mut client, 2_000);
    let delivered = Arc::new(Mutex::new(HashMap::<i64, usize>::new()));
    let seen = delivered.clone();
    at_once(&cluster, 8, move |_, client| loop {
        let ids: Vec<i64> = client
            .query("SELECT id FROM resources WHERE synced_at IS NULL ORDER BY id LIMIT 100", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            return;
        }
        for id in &ids {
            *seen.lock().unwrap().entry(*id).or_insert(0) += 1;
        }
        std::thread::sleep(Duration::from_millis(2)); // the third-party call
        // overlapping batches can even deadlock here; such a job fails and its rows stay pending
        let _ = client.execute("UPDATE resources SET synced_at = now() WHERE id = ANY($1)", &[&ids]);
    });
    let twice = delivered.lock().unwrap().values().filter(|n| **n > 1).count();
    assert!(twice > 0, "the unlocked job should send some rows twice");
}

/// A worker killed after claiming: its rows come back once the lease runs out, go to
/// another worker, and are completed once; the dead claim counts as a failed attempt.
#[test]
fn a_killed_workers_rows_come_back_after_the_lease() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    resources(&mut client, 1_000);
    let mut doomed = cluster.connect();
    let (dead_claim, dead_ids) = claim(&mut doomed, 100, "1 second").unwrap();
    let pid: i32 = doomed.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    client.execute("SELECT pg_terminate_backend($1)", &[&pid]).unwrap();

    let started = Instant::now();
    let (delivered, marked) = drain(cluster.config(), 4, 50);
    assert!(started.elapsed() >= Duration::from_millis(900), "the dead claim's rows waited for its lease");
    assert_each_row_delivered_and_completed_once(&mut client, 1_000, &delivered, marked);
    assert!(dead_ids.iter().all(|id| delivered[id] == 1), "taken back and delivered again once");
    assert_eq!(complete(&mut client, &dead_claim), 0, "the dead claim completes nothing");
    let failed: Vec<i32> = client
        .query("SELECT failed_attempts FROM exactly.claim_attempts ORDER BY row_key", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(failed, vec![1; 100], "one failed attempt per row of the dead claim");
}

/// A claim whose lease ran out and whose rows went to another worker completes nothing;
/// the new claim completes them.
#[test]
fn a_stale_completion_returns_zero_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut slow = cluster.connect();
    let mut fast = cluster.connect();
    resources(&mut slow, 10);
    let (stale, ids) = claim(&mut slow, 10, "200 milliseconds").unwrap();
    assert!(claim(&mut fast, 10, "5 minutes").is_none(), "held while the lease runs");
    std::thread::sleep(Duration::from_millis(300));
    let (fresh, again) = claim(&mut fast, 10, "5 minutes").unwrap();
    assert_eq!(again, ids);
    assert_eq!(complete(&mut slow, &stale), 0);
    assert_eq!(pending(&mut slow), 10, "the stale completion marked nothing");
    assert_eq!(complete(&mut fast, &fresh), 10);
    assert_eq!(complete(&mut fast, &fresh), 0, "a claim completes once");
}

/// Extending keeps the rows past the first lease; releasing hands them back at once.
#[test]
fn extend_keeps_and_release_gives_back() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    resources(&mut a, 10);
    let (first, _) = claim(&mut a, 10, "300 milliseconds").unwrap();
    let held: i64 = a
        .query_one("SELECT exactly.extend_claim($1::text::uuid, '5 minutes')", &[&first])
        .unwrap()
        .get(0);
    assert_eq!(held, 10);
    std::thread::sleep(Duration::from_millis(400));
    assert!(claim(&mut b, 10, "5 minutes").is_none(), "extended past the first lease");
    let released: i64 = a
        .query_one("SELECT exactly.release_claim($1::text::uuid)", &[&first])
        .unwrap()
        .get(0);
    assert_eq!(released, 10);
    let (second, ids) = claim(&mut b, 10, "5 minutes").unwrap();
    assert_eq!(ids.len(), 10, "released rows are pending again at once");
    assert_eq!(complete(&mut a, &first), 0, "a released claim completes nothing");
    assert_eq!(complete(&mut b, &second), 10);
    let failed: i64 = a
        .query_one("SELECT sum(failed_attempts) FROM exactly.claim_attempts", &[])
        .unwrap()
        .get(0);
    assert_eq!(failed, 10, "a release is a failed attempt of each row");
}

/// Claims, completions and named locks behind PgBouncer in transaction mode, where
/// consecutive statements of one client run on different server connections.
#[test]
fn claims_and_locks_work_behind_a_transaction_pooling_pgbouncer() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    resources(&mut client, 5_000);
    let bouncer = PgBouncer::start(&cluster, "transaction", 3);
    let (delivered, marked) = drain(bouncer.config(), 8, 50);
    assert_each_row_delivered_and_completed_once(&mut client, 5_000, &delivered, marked);

    let mut holder = bouncer.config().connect(common::NoTls).unwrap();
    let mut other = bouncer.config().connect(common::NoTls).unwrap();
    holder.batch_execute("BEGIN; SELECT exactly.lock('sync')").unwrap();
    let try_lock = |client: &mut Client| rows(client, "SELECT exactly.try_lock('sync')")[0][0] == "t";
    assert!(!try_lock(&mut other), "held by the other client's transaction");
    holder.batch_execute("COMMIT").unwrap();
    assert!(try_lock(&mut other), "released at its commit, not kept by a pooled session");
}

/// The lock's timeout raises 55P03 after about the time asked for, and leaves the
/// session's lock_timeout as it was.
#[test]
fn a_lock_timeout_raises_55p03_on_time() {
    let cluster = Cluster::start();
    let mut holder = cluster.connect();
    let mut waiter = cluster.connect();
    holder.batch_execute("BEGIN; SELECT exactly.lock('sync')").unwrap();
    let started = Instant::now();
    assert_eq!(sqlstate(waiter.execute("SELECT exactly.lock('sync', '300 milliseconds')", &[])), "55P03");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
        "gave up after {waited:?}"
    );
    let setting: String = waiter.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
    assert_eq!(setting, "0", "the session's lock_timeout is back");
    assert_eq!(sqlstate(waiter.execute("SELECT exactly.lock('sync', '0')", &[])), "55P03");
    holder.batch_execute("COMMIT").unwrap();
    waiter.execute("SELECT exactly.lock('sync', '1 second')", &[]).unwrap();
}

/// try_lock says false while another transaction holds the name and true once it ended;
/// the name never meets the application's own advisory lock keys.
#[test]
fn try_lock_while_held_and_after_release() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    a.batch_execute("BEGIN; SELECT exactly.lock('sync')").unwrap();
    let try_lock = |c: &mut Client| -> bool {
        c.query_one("SELECT exactly.try_lock('sync')", &[]).unwrap().get(0)
    };
    assert!(!try_lock(&mut b));
    // the same hash halves as the application's two-int advisory key: another lock space
    let (hi, lo): (i64, i64) = a
        .query_one(
            "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 110",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let free: bool = b
        .query_one("SELECT pg_try_advisory_xact_lock($1::bigint::bit(32)::int, $2::bigint::bit(32)::int)", &[&hi, &lo])
        .unwrap()
        .get(0);
    assert!(free, "the application's advisory keys never collide with named locks");
    a.batch_execute("COMMIT").unwrap();
    assert!(try_lock(&mut b));
}

/// A holder terminated with pg_terminate_backend frees the lock for the waiter in line.
#[test]
fn a_terminated_holder_releases_its_lock() {
    let cluster = Cluster::start();
    let mut holder = cluster.connect();
    let mut admin = cluster.connect();
    holder.batch_execute("BEGIN; SELECT exactly.lock('sync')").unwrap();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let config = cluster.config();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut client = config.connect(common::NoTls).unwrap();
        pid_tx.send(client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0)).unwrap();
        client.batch_execute("BEGIN; SELECT exactly.lock('sync'); COMMIT").unwrap();
    });
    let waiter_pid = pid_rx.recv().unwrap();
    wait_until_blocked(&mut admin, waiter_pid);
    let status: Vec<(i32, bool)> = admin
        .query("SELECT pid, granted FROM exactly.lock_status('sync')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(status, vec![(holder_pid, true), (waiter_pid, false)]);
    admin.execute("SELECT pg_terminate_backend($1)", &[&holder_pid]).unwrap();
    waiter.join().unwrap();
}

/// Under the lock, 16 connections doing read-then-write increments lose none; without it
/// they do (so the check can fail): one transaction at a time holds a name.
#[test]
fn a_named_lock_is_held_by_one_transaction_at_a_time() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)")
        .unwrap();
    let run = |locked: bool| -> i32 {
        at_once(&cluster, 16, move |_, client| {
            for _ in 0..50 {
                let mut tx = client.transaction().unwrap();
                if locked {
                    tx.execute("SELECT exactly.lock('counter')", &[]).unwrap();
                }
                let n: i32 = tx.query_one("SELECT n FROM counter", &[]).unwrap().get(0);
                tx.execute("UPDATE counter SET n = $1", &[&(n + 1)]).unwrap();
                tx.commit().unwrap();
            }
        });
        let mut client = cluster.connect();
        let n = client.query_one("SELECT n FROM counter", &[]).unwrap().get(0);
        client.execute("UPDATE counter SET n = 0", &[]).unwrap();
        n
    };
    assert_eq!(run(true), 800);
    assert!(run(false) < 800, "without the lock, increments are lost");
}

/// Two transactions taking two names in opposite orders: the server detects the deadlock
/// (40P01) and the other transaction goes on.
#[test]
fn opposite_lock_orders_are_detected_as_a_deadlock() {
    let cluster = Cluster::start();
    let results = at_once(&cluster, 2, |i, client| {
        let (first, second) = if i == 0 { ("a", "b") } else { ("b", "a") };
        let mut tx = client.transaction().unwrap();
        tx.execute("SELECT exactly.lock($1)", &[&first]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let outcome = tx.execute("SELECT exactly.lock($1)", &[&second]).map(|_| "ok".to_string());
        let outcome = match outcome {
            Ok(ok) => ok,
            Err(e) => e.code().unwrap().code().to_string(),
        };
        let _ = tx.rollback();
        outcome
    });
    let mut sorted = results.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["40P01", "ok"], "{results:?}");
}

/// Bad input is refused with its SQLSTATE and changes nothing.
#[test]
fn bad_input_is_refused() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    resources(&mut client, 10);
    client
        .batch_execute("CREATE TABLE no_key (id int, done timestamptz); CREATE TABLE stamped (at timestamptz PRIMARY KEY)")
        .unwrap();
    let cases = [
        ("SELECT * FROM exactly.claim_batch('nope', 'synced_at')", "42P01"),
        ("SELECT * FROM exactly.claim_batch('resources', 'nope')", "42703"),
        ("SELECT * FROM exactly.claim_batch('resources', 'name')", "42804"),
        ("SELECT * FROM exactly.claim_batch('no_key', 'done')", "55000"),
        ("SELECT * FROM exactly.claim_batch('stamped', 'at')", "22023"),
        ("SELECT * FROM exactly.claim_batch('resources', 'synced_at', 0)", "22023"),
        ("SELECT * FROM exactly.claim_batch('resources', 'synced_at', -5)", "22023"),
        ("SELECT * FROM exactly.claim_batch('resources', 'synced_at', 10, '-1 minute')", "22023"),
        ("SELECT * FROM exactly.claim_batch('resources', NULL)", "22004"),
        ("SELECT exactly.complete_batch(NULL)", "22004"),
        ("SELECT exactly.extend_claim(NULL)", "22004"),
        ("SELECT exactly.release_claim(NULL)", "22004"),
        ("SELECT exactly.lock(NULL)", "22004"),
        ("SELECT exactly.lock('')", "22023"),
        ("SELECT exactly.lock('x', '-1 second')", "22023"),
        ("SELECT exactly.try_lock(NULL)", "22004"),
    ];
    for (sql, code) in cases {
        assert_eq!(sqlstate(client.execute(sql, &[])), code, "{sql}");
    }
    let unknown: i64 = client
        .query_one("SELECT exactly.complete_batch(gen_random_uuid())", &[])
        .unwrap()
        .get(0);
    assert_eq!(unknown, 0, "an unknown claim completes nothing");
    assert_eq!(pending(&mut client), 10);
    let claims: i64 = client.query_one("SELECT count(*) FROM exactly.claims", &[]).unwrap().get(0);
    assert_eq!(claims, 0);
}

/// Rows given back below the newest live claim (here: released while a later claim still
/// runs) come back within a few claims, even while the queue after it never runs dry.
#[test]
fn rows_given_back_behind_a_live_claim_come_back_soon() {
    let cluster = Cluster::start();
    let (mut a, mut b, mut c) = (cluster.connect(), cluster.connect(), cluster.connect());
    resources(&mut a, 1_000);
    let (first, ids) = claim(&mut a, 10, "5 minutes").unwrap();
    assert_eq!(ids, (1..=10).collect::<Vec<i64>>());
    let (_later, _) = claim(&mut b, 10, "5 minutes").unwrap();
    rows(&mut a, &format!("SELECT exactly.release_claim('{first}')"));
    let mut claims_until_back = None;
    for n in 1..=20 {
        let (claim_id, ids) = claim(&mut c, 10, "5 minutes").unwrap();
        complete(&mut c, &claim_id);
        if ids.contains(&1) {
            claims_until_back = Some(n);
            break;
        }
    }
    let n = claims_until_back.expect("the released rows came back within 20 claims");
    assert!(n <= 17, "came back after {n} claims");
}
