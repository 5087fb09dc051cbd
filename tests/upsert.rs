//! Find-or-create and counters on the user's own tables (seed 002) under real concurrency:
//! many connections racing to create the same keys, increments summing exactly, rows deleted
//! while they are looked for, multi-column keys with defaults and triggers, tables changed
//! under a long-lived connection, and REPEATABLE READ.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{at_once, sqlstate, wait_until_blocked, Client, Cluster, NoTls, XorShift};

/// The kind of table seed 002 keeps its caches in.
const COUNTER_CACHES: &str = "CREATE TABLE counter_caches (id bigserial PRIMARY KEY,
    key text NOT NULL UNIQUE, value int NOT NULL DEFAULT 0, created_at timestamptz DEFAULT now())";

/// One call: (id, created, data->>'key') of the row for key $1 in counter_caches.
const FIND_OR_CREATE: &str = "SELECT (data->>'id')::bigint, created, data->>'key'
    FROM exactly.find_or_create('counter_caches', jsonb_build_object('key', $1::text))";

/// What one find-or-create returned: the row's id, whether this call created it, and the
/// key the returned row holds.
type Found = (i64, bool, String);

/// A way to find or create the row for a key.
type Call = fn(&mut Client, &str) -> Result<Found, postgres::Error>;

fn exactly_call(client: &mut Client, key: &str) -> Result<Found, postgres::Error> {
    let row = client.query_one(FIND_OR_CREATE, &[&key])?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The seed's approach: look the key up, insert it when missing. Between the two
/// statements another connection can insert the same key.
fn naive_call(client: &mut Client, key: &str) -> Result<Found, postgres::Error> {
    if let Some(row) =
        client.query_opt("SELECT id, key FROM counter_caches WHERE key = $1", &[&key])?
    {
        return Ok((row.get(0), false, row.get(1)));
    }
    // the application's round trip between its look-up and its insert: the window the
    // seed's race happens in (without it, one fast connection can create every key before
    // the others look, and the twin collides only by luck)
    std::thread::sleep(std::time::Duration::from_millis(5));
    let row = client.query_one(
        "INSERT INTO counter_caches (key) VALUES ($1) RETURNING id, key",
        &[&key],
    )?;
    Ok((row.get(0), true, row.get(1)))
}

fn code(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// What one connection asked for and got: (key asked, what came back or the SQLSTATE).
type Outcomes = Vec<(String, Result<Found, String>)>;

/// `connections` threads, all starting at once, each calling `call` for the keys
/// `keys(i)` picks for connection `i`, in that order.
fn find_or_create_concurrently(
    cluster: &Cluster,
    connections: usize,
    keys: fn(usize) -> Vec<String>,
    call: Call,
) -> Outcomes {
    at_once(cluster, connections, move |i, client| {
        keys(i)
            .into_iter()
            .map(|key| {
                let outcome = call(client, &key).map_err(|e| code(&e));
                (key, outcome)
            })
            .collect::<Outcomes>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// What is wrong with the outcomes of a find-or-create workload on counter_caches: any
/// error, a returned row for another key, a key created other than exactly once, callers
/// of one key told different rows, or a table that does not hold exactly those rows.
fn find_or_create_faults(client: &mut Client, outcomes: &Outcomes) -> Vec<String> {
    let mut faults = Vec::new();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_key: BTreeMap<&str, (usize, BTreeSet<i64>)> = BTreeMap::new();
    for (key, outcome) in outcomes {
        match outcome {
            Err(state) => *errors.entry(state).or_default() += 1,
            Ok((id, created, returned_key)) => {
                if returned_key != key {
                    faults.push(format!("asked for {key}, got the row of {returned_key}"));
                }
                let entry = per_key.entry(key).or_default();
                entry.0 += *created as usize;
                entry.1.insert(*id);
            }
        }
    }
    for (state, n) in &errors {
        faults.push(format!("{n} calls failed with {state}"));
    }
    for (key, (created, ids)) in &per_key {
        if *created != 1 {
            faults.push(format!("{key} created {created} times"));
        }
        if ids.len() != 1 {
            faults.push(format!("{key}: callers were told different rows {ids:?}"));
        }
    }
    let stored: BTreeMap<String, i64> = client
        .query("SELECT key, id FROM counter_caches", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let told: BTreeMap<String, i64> = per_key
        .iter()
        .filter(|(_, (_, ids))| ids.len() == 1)
        .map(|(key, (_, ids))| (key.to_string(), *ids.first().unwrap()))
        .collect();
    if errors.is_empty() && stored != told {
        faults.push(format!(
            "the table holds {} rows, the callers were told of {} keys",
            stored.len(),
            told.len()
        ));
    }
    faults
}

/// 200 keys drawn from 300, in a different random order per connection.
fn random_keys(i: usize) -> Vec<String> {
    let mut random = XorShift(0xf1d0 ^ ((i as u64 + 1) << 24));
    (0..200)
        .map(|_| format!("key-{}", random.next() % 300))
        .collect()
}

/// The same 50 new keys, in the same order, on every connection: as many races as can be.
fn the_same_fifty_keys(_: usize) -> Vec<String> {
    (0..50).map(|k| format!("fresh-{k}")).collect()
}

fn sequence_value(client: &mut Client) -> i64 {
    client
        .query_one("SELECT last_value FROM counter_caches_id_seq", &[])
        .unwrap()
        .get(0)
}

/// Exactly one of the racing callers creates each key, all of them get that one row, and
/// nobody sees an error; asking again for keys that exist burns no sequence value.
#[test]
fn thirty_two_connections_create_each_key_exactly_once() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client.batch_execute(COUNTER_CACHES).unwrap();
    let outcomes = find_or_create_concurrently(&cluster, 32, random_keys, exactly_call);
    assert_eq!(outcomes.len(), 32 * 200);
    let faults = find_or_create_faults(&mut client, &outcomes);
    assert!(faults.is_empty(), "{faults:?}");

    // The look-up comes first: a key that exists is found without an INSERT, whose column
    // default would draw (and lose) a sequence value every time.
    let existing: BTreeSet<&String> = outcomes.iter().map(|(key, _)| key).collect();
    let before = sequence_value(&mut client);
    for key in &existing {
        let (_, created, _) = exactly_call(&mut client, key).unwrap();
        assert!(!created, "{key} was created again");
    }
    assert_eq!(
        sequence_value(&mut client),
        before,
        "finding {} existing keys advanced the sequence",
        existing.len()
    );
}

/// The same kind of workload and the same check against the seed's look-up-then-insert: the
/// check catches it (a unique violation), so the test above would fail without the upsert.
#[test]
fn the_same_check_catches_the_naive_select_then_insert() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client.batch_execute(COUNTER_CACHES).unwrap();
    let outcomes = find_or_create_concurrently(&cluster, 32, the_same_fifty_keys, naive_call);
    let violations = outcomes
        .iter()
        .filter(|(_, o)| o.as_ref().err().is_some_and(|state| state == "23505"))
        .count();
    assert!(
        violations > 0,
        "the naive look-up-then-insert never collided"
    );
    let faults = find_or_create_faults(&mut client, &outcomes);
    assert!(
        faults.iter().any(|f| f.contains("failed with 23505")),
        "{faults:?}"
    );

    // And the same 50 fresh keys through find_or_create pass the same check.
    client.batch_execute("TRUNCATE counter_caches").unwrap();
    let outcomes = find_or_create_concurrently(&cluster, 32, the_same_fifty_keys, exactly_call);
    let faults = find_or_create_faults(&mut client, &outcomes);
    assert!(faults.is_empty(), "{faults:?}");
}

/// An amount between -10.00 and 10.00, in cents.
fn random_cents(random: &mut XorShift) -> i64 {
    (random.next() % 2001) as i64 - 1000
}

fn cents_text(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// Increments from 32 connections over 20 keys (half of them created by the increments
/// themselves, racing) add up exactly: whole numbers, negative ones included, on an integer
/// column, and cents on a numeric column that starts NULL.
#[test]
fn increments_from_32_connections_sum_exactly() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE TABLE counters (key text PRIMARY KEY, value int NOT NULL DEFAULT 0, amount numeric);
             INSERT INTO counters (key) SELECT 'key-' || k FROM generate_series(0, 9) k;",
        )
        .unwrap();
    let sent = at_once(&cluster, 32, |i, client| {
        let mut random = XorShift(0xc0de ^ ((i as u64 + 1) << 20));
        // per key: (sum of whole numbers sent to value, sum of cents sent to amount)
        let mut sent: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut errors = Vec::new();
        for _ in 0..200 {
            let key = format!("key-{}", random.next() % 20);
            let (column, by, whole, cents) = if random.next() % 2 == 0 {
                let by = (random.next() % 201) as i64 - 100;
                ("value", by.to_string(), by, 0)
            } else {
                let cents = random_cents(&mut random);
                ("amount", cents_text(cents), 0, cents)
            };
            match client.query_one(
                "SELECT exactly.increment('counters', jsonb_build_object('key', $1::text), $2, $3::text::numeric)",
                &[&key, &column, &by],
            ) {
                Ok(_) => {
                    let sums = sent.entry(key).or_default();
                    sums.0 += whole;
                    sums.1 += cents;
                }
                Err(e) => errors.push(format!("{key} {column} += {by}: {}", code(&e))),
            }
        }
        (sent, errors)
    });
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (per_connection, errors) in sent {
        assert!(errors.is_empty(), "{errors:?}");
        for (key, (whole, cents)) in per_connection {
            let sums = expected.entry(key).or_default();
            sums.0 += whole;
            sums.1 += cents;
        }
    }
    assert_eq!(expected.len(), 20, "every key was incremented");
    let stored: BTreeMap<String, (i64, i64)> = client
        .query(
            "SELECT key, value::bigint, (coalesce(amount, 0) * 100)::bigint FROM counters",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(stored, expected, "per key: the sums the clients sent");
}

/// A row deleted again and again by other connections while find_or_create looks for it:
/// every call still returns exactly the one row for the key, and none fails.
#[test]
fn a_row_deleted_under_find_or_create_never_makes_it_fail() {
    const DELETERS: usize = 4;
    const FINDERS: usize = 12;
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client.batch_execute(COUNTER_CACHES).unwrap();
    let finders_left = Arc::new(AtomicUsize::new(FINDERS));
    let results = at_once(&cluster, DELETERS + FINDERS, move |i, client| {
        // (rows deleted, calls that created the row, failures)
        let mut tally = (0u64, 0usize, Vec::new());
        if i < DELETERS {
            while finders_left.load(Ordering::SeqCst) > 0 {
                tally.0 += client
                    .execute("DELETE FROM counter_caches WHERE key = 'k'", &[])
                    .unwrap();
            }
            return tally;
        }
        for _ in 0..150 {
            match client.query(
                "SELECT data->>'key', created FROM exactly.find_or_create('counter_caches', '{\"key\": \"k\"}')",
                &[],
            ) {
                Ok(rows) if rows.len() == 1 && rows[0].get::<_, String>(0) == "k" => {
                    tally.1 += rows[0].get::<_, bool>(1) as usize
                }
                Ok(rows) => tally.2.push(format!("{} rows returned", rows.len())),
                Err(e) => tally.2.push(code(&e)),
            }
        }
        finders_left.fetch_sub(1, Ordering::SeqCst);
        tally
    });
    let failures: Vec<&String> = results.iter().flat_map(|t| &t.2).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let deleted: u64 = results.iter().map(|t| t.0).sum();
    let created: usize = results.iter().map(|t| t.1).sum();
    assert!(
        deleted > 0 && created > 1,
        "the deletions raced with the calls: {deleted} rows deleted, {created} created"
    );
}

/// Run `sql` on a connection of its own in a thread; returns its backend pid and the thread.
fn call_in_thread(
    cluster: &Cluster,
    sql: &'static str,
) -> (i32, thread::JoinHandle<Result<Found, String>>) {
    let config = cluster.config();
    let (pid_tx, pid_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut client = config.connect(NoTls).unwrap();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        pid_tx.send(pid).unwrap();
        let row = client.query_one(sql, &[]).map_err(|e| code(&e))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    });
    (pid_rx.recv().unwrap(), handle)
}

/// Until backend `pid` waits on a lock or `call` has returned, whichever comes first.
fn wait_until_blocked_or_done<T>(client: &mut Client, pid: i32, call: &thread::JoinHandle<T>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !call.is_finished() {
        // no row: the call returned and its connection has closed since we looked
        let blocked_or_gone = client
            .query_opt(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .map_or(true, |row| row.get::<_, bool>(0));
        if blocked_or_gone {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} neither returned nor waited"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn id_of(client: &mut Client, key: &str) -> Option<i64> {
    client
        .query_opt("SELECT id FROM counter_caches WHERE key = $1", &[&key])
        .unwrap()
        .map(|r| r.get(0))
}

/// A row deleted by a transaction that commits while find_or_create runs: the call returns
/// a row for the key (the old one, which it saw, or a new one it created) and never fails.
/// A row inserted by a transaction still open: the call waits for it, and then finds it
/// (commit) or creates the row itself (rollback).
#[test]
fn a_row_deleted_or_inserted_by_an_open_transaction_is_waited_for_or_seen() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin.batch_execute(COUNTER_CACHES).unwrap();
    let old = exactly_call(&mut admin, "k").unwrap().0;

    let mut deleter = cluster.connect();
    deleter
        .batch_execute("BEGIN; DELETE FROM counter_caches WHERE key = 'k'")
        .unwrap();
    let (pid, call) = call_in_thread(&cluster, FIND_OR_CREATE_K);
    wait_until_blocked_or_done(&mut admin, pid, &call);
    deleter.batch_execute("COMMIT").unwrap();
    let (id, created, key) = call.join().unwrap().expect("find_or_create failed");
    assert_eq!(key, "k");
    if created {
        assert_ne!(id, old, "created, yet the old row was returned");
        assert_eq!(
            id_of(&mut admin, "k"),
            Some(id),
            "the new row is in the table"
        );
    } else {
        assert_eq!(id, old, "not created, so it is the row that was deleted");
        eprintln!("the call returned the row being deleted, as it saw it");
    }

    // An insert left open: the call waits on it, then finds the committed row...
    admin.batch_execute("DELETE FROM counter_caches").unwrap();
    let mut inserter = cluster.connect();
    let inserted: i64 = {
        inserter.batch_execute("BEGIN").unwrap();
        inserter
            .query_one(
                "INSERT INTO counter_caches (key) VALUES ('k') RETURNING id",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let (pid, call) = call_in_thread(&cluster, FIND_OR_CREATE_K);
    wait_until_blocked(&mut admin, pid);
    inserter.batch_execute("COMMIT").unwrap();
    assert_eq!(call.join().unwrap(), Ok((inserted, false, "k".into())));

    // ...or, when that insert is rolled back, creates the row itself.
    admin.batch_execute("DELETE FROM counter_caches").unwrap();
    inserter
        .batch_execute("BEGIN; INSERT INTO counter_caches (key) VALUES ('k')")
        .unwrap();
    let (pid, call) = call_in_thread(&cluster, FIND_OR_CREATE_K);
    wait_until_blocked(&mut admin, pid);
    inserter.batch_execute("ROLLBACK").unwrap();
    let (id, created, key) = call.join().unwrap().expect("find_or_create failed");
    assert!(created && key == "k");
    assert_eq!(id_of(&mut admin, "k"), Some(id));
}

const FIND_OR_CREATE_K: &str = "SELECT (data->>'id')::bigint, created, data->>'key'
    FROM exactly.find_or_create('counter_caches', '{\"key\": \"k\"}')";

/// What find_or_create returned for a member.
struct Member {
    data: String,
    role: String,
    score: i32,
    plan: String,
    slug: String,
    tenant: i32,
    name: String,
}

/// A key of two columns, column defaults, defaults passed by the caller and a BEFORE INSERT
/// trigger: of 16 connections racing on the same 20 keys one creates each row, with all of
/// those applied, and every caller gets that same row. Each connection passes a different
/// `score` default, so the row shows that only the creating call's defaults were used.
#[test]
fn racing_on_two_column_keys_with_defaults_and_a_trigger_creates_each_row_once() {
    let cluster = Cluster::start();
    cluster
        .connect()
        .batch_execute(
            "CREATE TABLE members (id bigserial PRIMARY KEY, tenant int NOT NULL, name text NOT NULL,
                                   role text NOT NULL DEFAULT 'member', plan text NOT NULL DEFAULT 'free',
                                   score int, slug text, UNIQUE (tenant, name));
             CREATE FUNCTION members_slug() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.slug := NEW.tenant || '/' || lower(NEW.name); RETURN NEW; END $$;
             CREATE TRIGGER members_slug BEFORE INSERT ON members FOR EACH ROW EXECUTE FUNCTION members_slug();",
        )
        .unwrap();
    let results = at_once(&cluster, 16, |i, client| {
        let mut keys: Vec<i32> = (0..20).collect();
        XorShift(0x7e4a47 ^ ((i as u64 + 1) << 16)).shuffle(&mut keys);
        keys.into_iter()
            .map(|k| {
                let row = client
                    .query_one(
                        "SELECT data::text, created, data->>'role', (data->>'score')::int,
                                data->>'plan', data->>'slug', (data->>'tenant')::int, data->>'name'
                         FROM exactly.find_or_create('members',
                                jsonb_build_object('tenant', $1::int, 'name', $2::text),
                                jsonb_build_object('role', 'owner', 'score', $3::int))",
                        &[&(k % 4), &format!("User {k}"), &(i as i32)],
                    )
                    .unwrap();
                let member = Member {
                    data: row.get(0),
                    role: row.get(2),
                    score: row.get(3),
                    plan: row.get(4),
                    slug: row.get(5),
                    tenant: row.get(6),
                    name: row.get(7),
                };
                (k, i as i32, row.get::<_, bool>(1), member)
            })
            .collect::<Vec<_>>()
    });
    // per key: the connections that created it, and every (score, data) returned for it
    let mut per_key: BTreeMap<i32, (Vec<i32>, BTreeSet<(i32, String)>)> = BTreeMap::new();
    for (k, connection, created, m) in results.into_iter().flatten() {
        assert_eq!(
            (m.tenant, m.name.as_str()),
            (k % 4, format!("User {k}").as_str())
        );
        assert_eq!(
            (m.role.as_str(), m.plan.as_str()),
            ("owner", "free"),
            "{}",
            m.data
        );
        assert_eq!(
            m.slug,
            format!("{}/user {k}", k % 4),
            "the trigger ran: {}",
            m.data
        );
        let entry = per_key.entry(k).or_default();
        if created {
            entry.0.push(connection);
        }
        entry.1.insert((m.score, m.data));
    }
    assert_eq!(per_key.len(), 20);
    for (k, (creators, datas)) in &per_key {
        assert_eq!(creators.len(), 1, "key {k} created by {creators:?}");
        assert_eq!(
            datas.len(),
            1,
            "key {k}: callers got different rows {datas:?}"
        );
        assert_eq!(
            datas.first().unwrap().0,
            creators[0],
            "key {k}: score is the creating call's default"
        );
    }
    let rows: i64 = cluster
        .connect()
        .query_one("SELECT count(*) FROM members", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 20);
}

/// Every kind of bad input is refused with its SQLSTATE before anything is written; a key
/// that tries to smuggle SQL in is just an unknown column.
#[test]
fn bad_input_is_refused_with_a_sqlstate_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(&format!(
            "{COUNTER_CACHES};
             CREATE TABLE x (id int);
             CREATE VIEW counter_view AS SELECT * FROM counter_caches;
             SELECT exactly.find_or_create('counter_caches', '{{\"key\": \"a\"}}', '{{\"value\": 3}}');"
        ))
        .unwrap();
    let state = |client: &mut Client| -> (i64, i64, i64) {
        let row = client
            .query_one(
                "SELECT count(*), sum(value)::bigint, (SELECT last_value FROM counter_caches_id_seq)
                 FROM counter_caches",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = state(&mut client);
    let f = "SELECT * FROM exactly.find_or_create";
    let inc = "SELECT exactly.increment";
    for (call, code) in [
        (format!("{f}(NULL, '{{\"key\": \"b\"}}')"), "22004"),
        (format!("{f}('counter_caches', NULL)"), "22004"),
        (
            format!("{f}('counter_caches', '{{\"key\": \"b\"}}', NULL)"),
            "22004",
        ),
        (format!("{f}('counter_caches', '[\"b\"]')"), "22023"),
        (format!("{f}('counter_caches', '\"b\"')"), "22023"),
        (format!("{f}('counter_caches', 'null')"), "22023"),
        (format!("{f}('counter_caches', '{{}}')"), "22023"),
        (
            format!("{f}('counter_caches', '{{\"key\": \"b\"}}', '[1]')"),
            "22023",
        ),
        (
            format!("{f}('counter_caches', '{{\"nope\": \"b\"}}')"),
            "42703",
        ),
        (
            format!("{f}('counter_caches', '{{\"key; drop table x; --\": 1}}')"),
            "42703",
        ),
        (
            format!("{f}('counter_caches', '{{\"key\": \"b\"}}', '{{\"nope\": 1}}')"),
            "42703",
        ),
        (
            format!("{f}('counter_caches', '{{\"value\": 1}}')"),
            "42P10",
        ),
        (
            format!("{f}('counter_caches', '{{\"key\": \"b\", \"value\": 1}}')"),
            "42P10",
        ),
        (
            format!("{f}('counter_caches', '{{\"key\": null}}')"),
            "22004",
        ),
        (
            format!("{f}('counter_caches', '{{\"key\": \"b\"}}', '{{\"key\": \"c\"}}')"),
            "22023",
        ),
        (
            format!("{f}('counter_view', '{{\"key\": \"b\"}}')"),
            "42809",
        ),
        (
            format!("{inc}(NULL, '{{\"key\": \"b\"}}', 'value')"),
            "22004",
        ),
        (format!("{inc}('counter_caches', NULL, 'value')"), "22004"),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', NULL)"),
            "22004",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', 'value', NULL)"),
            "22004",
        ),
        (format!("{inc}('counter_caches', '[1]', 'value')"), "22023"),
        (format!("{inc}('counter_caches', '{{}}', 'value')"), "22023"),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', 'nope')"),
            "42703",
        ),
        (
            format!("{inc}('counter_caches', '{{\"nope\": \"b\"}}', 'value')"),
            "42703",
        ),
        (
            format!("{inc}('counter_caches', '{{\"value\": 1}}', 'id')"),
            "42P10",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": null}}', 'value')"),
            "22004",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', 'created_at')"),
            "42804",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', 'key')"),
            "22023",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"b\"}}', 'value', 0.5)"),
            "22023",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"a\"}}', 'value', -1.25)"),
            "22023",
        ),
        (
            format!("{inc}('counter_view', '{{\"key\": \"b\"}}', 'value')"),
            "42809",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"a\"}}', 'value', 'NaN')"),
            "22023",
        ),
        (
            format!("{inc}('counter_caches', '{{\"key\": \"a\"}}', 'value', '-Infinity')"),
            "22023",
        ),
    ] {
        assert_eq!(sqlstate(client.batch_execute(&call)), code, "{call}");
    }
    let e = client
        .batch_execute(&format!("{f}('counter_caches', '{{\"value\": 1}}')"))
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().hint().is_some(),
        "a refusal carries a hint"
    );
    assert_eq!(state(&mut client), before, "a refused call changes nothing");
    let x: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE oid = 'x'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(x, 1, "table x is still there");
}

/// The SQL written and prepared for a table on first use follows the table when another
/// connection changes it: a column added shows up in the rows returned, a new unique index
/// makes its column usable as a key, and a dropped column is unknown again.
#[test]
fn a_long_lived_connection_follows_changes_made_to_the_table_elsewhere() {
    let cluster = Cluster::start();
    let (mut user, mut ddl) = (cluster.connect(), cluster.connect());
    ddl.batch_execute(
        "CREATE TABLE items (id serial PRIMARY KEY, key text NOT NULL UNIQUE, code text, hits int)",
    )
    .unwrap();
    // (data as text, created) for `key`; a key that is not `key` itself gets a `key` default
    let find = |client: &mut Client, key: &str| -> Result<(String, bool), postgres::Error> {
        let row = client.query_one(
            "SELECT data::text, created FROM exactly.find_or_create('items', $1::text::jsonb,
                    CASE WHEN $1::text::jsonb ? 'key' THEN '{}' ELSE '{\"key\": \"by-code\"}' END::jsonb)",
            &[&key],
        )?;
        Ok((row.get(0), row.get(1)))
    };
    let a = r#"{"key": "a"}"#;
    let by_code = r#"{"code": "c-1"}"#;
    assert_eq!(
        find(&mut user, a).unwrap(),
        (
            r#"{"id": 1, "key": "a", "code": null, "hits": null}"#.into(),
            true
        )
    );
    user.batch_execute("SELECT exactly.increment('items', '{\"key\": \"a\"}', 'hits')")
        .unwrap();
    assert_eq!(sqlstate(find(&mut user, by_code)), "42P10");

    ddl.batch_execute("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")
        .unwrap();
    assert_eq!(
        find(&mut user, a).unwrap(),
        (
            r#"{"id": 1, "key": "a", "code": null, "hits": 1, "extra": 7}"#.into(),
            false
        )
    );
    let (b, created) = find(&mut user, r#"{"key": "b"}"#).unwrap();
    assert!(created && b.contains(r#""extra": 7"#), "{b}");
    let extra: String = user
        .query_one(
            "SELECT exactly.increment('items', '{\"key\": \"a\"}', 'extra', 3)::text",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(extra, "10", "the new column can be incremented");

    ddl.batch_execute("CREATE UNIQUE INDEX items_code ON items (code)")
        .unwrap();
    let (row, created) = find(&mut user, by_code).unwrap();
    assert!(
        created && row.contains(r#""code": "c-1""#) && row.contains(r#""key": "by-code""#),
        "{row}"
    );
    assert_eq!(find(&mut user, by_code).unwrap(), (row, false));

    ddl.batch_execute("ALTER TABLE items DROP COLUMN code")
        .unwrap();
    assert_eq!(sqlstate(find(&mut user, by_code)), "42703");
    let (row, _) = find(&mut user, a).unwrap();
    assert!(!row.contains("code"), "the dropped column is gone: {row}");
}

/// What pg_exactly knows of a table is the server's current view of it, not the view of a
/// REPEATABLE READ snapshot taken before the table changed: a connection whose first call
/// after the change comes from such a transaction still sees the new column and index, in
/// that transaction and after it.
#[test]
fn a_table_changed_after_a_repeatable_read_snapshot_is_seen_as_it_is_now() {
    let cluster = Cluster::start();
    let (mut user, mut ddl) = (cluster.connect(), cluster.connect());
    ddl.batch_execute("CREATE TABLE r (id serial PRIMARY KEY, key text UNIQUE, old int)")
        .unwrap();
    repeatable_read_snapshot(&mut user);
    ddl.batch_execute(
        "ALTER TABLE r ADD COLUMN code text; CREATE UNIQUE INDEX ON r (code); ALTER TABLE r DROP COLUMN old",
    )
    .unwrap();
    user.batch_execute("SELECT * FROM exactly.find_or_create('r', '{\"key\": \"a\"}'); COMMIT")
        .unwrap();
    let created: bool = user
        .query_one("SELECT created FROM exactly.find_or_create('r', '{\"code\": \"x\"}')", &[])
        .unwrap()
        .get(0);
    assert!(created, "the index created after the snapshot is usable");
    assert_eq!(
        sqlstate(user.batch_execute("SELECT * FROM exactly.find_or_create('r', '{\"key\": \"c\"}', '{\"old\": 9}')")),
        "42703",
        "the dropped column is refused by pg_exactly, by name"
    );
}

/// Begin a REPEATABLE READ transaction and take its snapshot now.
fn repeatable_read_snapshot(client: &mut Client) {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
}

/// At REPEATABLE READ a key created (and committed) by another transaction after our
/// snapshot was taken is either found or refused with 40001: never created a second time,
/// never reported as created by us. The same whether the other transaction committed before
/// our call or while our call waited on it; and for increment.
#[test]
fn at_repeatable_read_a_key_created_after_our_snapshot_is_found_or_refused() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin
        .batch_execute(&format!(
            "{COUNTER_CACHES};
             CREATE TABLE counters (key text PRIMARY KEY, value int NOT NULL DEFAULT 0);"
        ))
        .unwrap();
    let accept = |what: &str, outcome: Result<Found, String>, theirs: i64| -> &'static str {
        match outcome {
            Ok((id, created, _)) => {
                assert!(!created, "{what}: created again at REPEATABLE READ");
                assert_eq!(id, theirs, "{what}: another row than the committed one");
                "found"
            }
            Err(state) => {
                assert_eq!(state, "40001", "{what}");
                "40001"
            }
        }
    };
    let call = |client: &mut Client, key: &str| exactly_call(client, key).map_err(|e| code(&e));

    // The other transaction committed before our call.
    let (mut a, mut b) = (cluster.connect(), cluster.connect());
    repeatable_read_snapshot(&mut a);
    repeatable_read_snapshot(&mut b);
    let (theirs, created, _) = call(&mut a, "late").unwrap();
    assert!(created);
    a.batch_execute("COMMIT").unwrap();
    let committed_before = accept("committed before", call(&mut b, "late"), theirs);
    b.batch_execute("ROLLBACK").unwrap();

    // The other transaction commits while our call waits for it.
    let config = cluster.config();
    let (pid_tx, pid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let waiter = thread::spawn(move || {
        let mut b = config.connect(NoTls).unwrap();
        repeatable_read_snapshot(&mut b);
        let pid = b
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get::<_, i32>(0);
        pid_tx.send(pid).unwrap();
        go_rx.recv().unwrap(); // once the other transaction has inserted the key
        exactly_call(&mut b, "later").map_err(|e| code(&e))
    });
    let pid = pid_rx.recv().unwrap();
    repeatable_read_snapshot(&mut a);
    let (theirs_later, created, _) = call(&mut a, "later").unwrap();
    assert!(created);
    go_tx.send(()).unwrap();
    wait_until_blocked_or_done(&mut admin, pid, &waiter);
    a.batch_execute("COMMIT").unwrap();
    let committed_while_waiting = accept(
        "committed while waiting",
        waiter.join().unwrap(),
        theirs_later,
    );

    let rows: Vec<(String, i64)> = admin
        .query(
            "SELECT key, count(*) FROM counter_caches GROUP BY key ORDER BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("late".to_string(), 1), ("later".to_string(), 1)]);

    // increment: adds to the committed row, or refuses; never a second row.
    repeatable_read_snapshot(&mut a);
    repeatable_read_snapshot(&mut b);
    let increment =
        "SELECT exactly.increment('counters', '{\"key\": \"rr\"}', 'value', $1::int)::int";
    let first: i32 = a.query_one(increment, &[&5]).unwrap().get(0);
    assert_eq!(first, 5);
    a.batch_execute("COMMIT").unwrap();
    let incremented = match b.query_one(increment, &[&7]) {
        Ok(row) => {
            assert_eq!(row.get::<_, i32>(0), 12, "added to the committed row");
            b.batch_execute("COMMIT").unwrap();
            "added"
        }
        Err(e) => {
            assert_eq!(code(&e), "40001");
            b.batch_execute("ROLLBACK").unwrap();
            "40001"
        }
    };
    let value: i32 = admin
        .query_one("SELECT value FROM counters WHERE key = 'rr'", &[])
        .unwrap()
        .get(0);
    assert_eq!(value, if incremented == "added" { 12 } else { 5 });
    eprintln!(
        "at REPEATABLE READ: find_or_create after their commit: {committed_before}; \
         while waiting on them: {committed_while_waiting}; increment: {incremented}"
    );
}

/// The caller's own code on its table — a trigger written as most are, with unqualified
/// names, resolved through the caller's search_path — works when pg_exactly's functions
/// write the table: they resolve nothing by name themselves, so they leave the caller's
/// search_path as it is for the caller's code.
#[test]
fn the_tables_own_triggers_see_the_callers_search_path() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE SCHEMA app;
             SET search_path = app, public;
             CREATE TABLE audit (what text);
             CREATE TABLE items (key text PRIMARY KEY, n int NOT NULL DEFAULT 0, done_at timestamptz);
             CREATE FUNCTION audited() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO audit VALUES (TG_OP || ' ' || NEW.key);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER audited AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION audited();",
        )
        .unwrap();
    client
        .batch_execute(
            "SELECT * FROM exactly.find_or_create('items', '{\"key\": \"a\"}');
             SELECT exactly.increment('items', '{\"key\": \"a\"}', 'n');
             SELECT exactly.increment('items', '{\"key\": \"b\"}', 'n');
             SELECT exactly.complete_batch(claim) FROM (SELECT DISTINCT claim FROM exactly.claim_batch('items', 'done_at')) c;",
        )
        .unwrap();
    let audit: Vec<String> = client
        .query("SELECT what FROM app.audit ORDER BY what", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audit, ["INSERT a", "INSERT b", "UPDATE a", "UPDATE a", "UPDATE b"]);
}
