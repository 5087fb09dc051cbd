//! Idempotent bounded batch creation (seed 000) under real concurrency: jobs run twice, in
//! parallel and in random order, killed half-way, replayed with the same batch key.

mod common;

use std::sync::Mutex;
use std::thread;

use common::{at_once, sqlstate, Client, Cluster, XorShift};

/// The seed's jobs: 100 of 1000 tickets and one of 500, for a raffle of 100,500.
fn seed_jobs() -> Vec<(String, i32)> {
    let mut jobs: Vec<(String, i32)> = (0..100).map(|i| (format!("job-{i}"), 1000)).collect();
    jobs.push(("job-100".into(), 500));
    jobs
}

fn new_raffle(client: &mut Client, requested: i64, code_length: i32) -> i64 {
    client
        .query_one(
            "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES ($1, $2) RETURNING id",
            &[&requested, &code_length],
        )
        .unwrap()
        .get(0)
}

/// Every job twice, shuffled, taken from one queue by `connections` threads; `call` is the
/// SQL each job runs with ($1 raffle, $2 n, $3 batch key). Returns what the calls returned.
fn run_jobs_twice(
    cluster: &Cluster,
    connections: usize,
    raffle: i64,
    jobs: Vec<(String, i32)>,
    call: &'static str,
) -> Vec<i32> {
    let mut queue: Vec<(String, i32)> = jobs.iter().chain(jobs.iter()).cloned().collect();
    XorShift(0x5eed_0000_0000_0001).shuffle(&mut queue);
    let queue = Mutex::new(queue);
    let results = at_once(cluster, connections, move |_, client| {
        let mut results = Vec::new();
        while let Some((key, n)) = {
            let next = queue.lock().unwrap().pop();
            next
        } {
            results.push(
                client
                    .query_one(call, &[&raffle, &n, &key])
                    .unwrap()
                    .get::<_, i32>(0),
            );
        }
        results
    });
    results.into_iter().flatten().collect()
}

/// What is wrong with the raffle: its ticket count, the counter, or the codes.
fn raffle_faults(client: &mut Client, raffle: i64, requested: i64) -> Vec<String> {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT code), count(*) FILTER (WHERE code !~ '^[0-9A-F]{12}$'),
                    (SELECT tickets_created FROM exactly.raffles WHERE id = $1)
             FROM exactly.tickets WHERE raffle_id = $1",
            &[&raffle],
        )
        .unwrap();
    let (tickets, distinct, malformed, counted): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let mut faults = Vec::new();
    if tickets > requested {
        faults.push(format!(
            "{tickets} tickets, more than the {requested} requested"
        ));
    }
    if tickets < requested {
        faults.push(format!(
            "{tickets} tickets, fewer than the {requested} requested"
        ));
    }
    if distinct != tickets {
        faults.push(format!("{} duplicate codes", tickets - distinct));
    }
    if malformed > 0 {
        faults.push(format!(
            "{malformed} codes are not 12 upper-case hex digits"
        ));
    }
    if counted != tickets {
        faults.push(format!(
            "tickets_created says {counted}, the table holds {tickets}"
        ));
    }
    faults
}

#[test]
fn the_seed_jobs_each_run_twice_from_16_connections_make_exactly_100500_tickets() {
    let cluster = Cluster::start();
    let raffle = new_raffle(&mut cluster.connect(), 100_500, 12);
    let results = run_jobs_twice(
        &cluster,
        16,
        raffle,
        seed_jobs(),
        "SELECT exactly.batch_create_tickets($1, $2, $3)",
    );
    // every repeat of a key answers what its first call created
    assert_eq!(
        results.iter().map(|&r| i64::from(r)).sum::<i64>(),
        2 * 100_500
    );
    let faults = raffle_faults(&mut cluster.connect(), raffle, 100_500);
    assert!(faults.is_empty(), "{faults:?}");
}

#[test]
fn without_batch_keys_the_raffle_still_stops_at_what_was_requested() {
    let cluster = Cluster::start();
    let raffle = new_raffle(&mut cluster.connect(), 100_500, 12);
    let results = run_jobs_twice(
        &cluster,
        16,
        raffle,
        seed_jobs(),
        "SELECT exactly.batch_create_tickets($1, $2) WHERE $3::text IS NOT NULL",
    );
    assert_eq!(results.iter().map(|&r| i64::from(r)).sum::<i64>(), 100_500);
    let faults = raffle_faults(&mut cluster.connect(), raffle, 100_500);
    assert!(faults.is_empty(), "{faults:?}");
}

/// The seed's first attempt: read what is left, insert, count, without locking the raffle
/// (shared with the demo).
const NAIVE_BATCH: &str = include_str!("../demo/tickets_naive.sql");

/// The same jobs and the same check against the seed's unlocked version: the check catches
/// it, so the tests above would fail without the raffle lock.
#[test]
fn the_same_check_catches_the_naive_unlocked_batches() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client.batch_execute(NAIVE_BATCH).unwrap();
    let jobs: Vec<(String, i32)> = (0..20).map(|i| (format!("job-{i}"), 1000)).collect();
    let raffle = new_raffle(&mut client, 20_000, 12);
    run_jobs_twice(
        &cluster,
        16,
        raffle,
        jobs,
        "SELECT naive_batch_create_tickets($1, $2) WHERE $3::text IS NOT NULL",
    );
    let faults = raffle_faults(&mut client, raffle, 20_000);
    assert!(
        faults.iter().any(|f| f.contains("more than")),
        "the naive batches stayed within bounds: {faults:?}"
    );
}

#[test]
fn the_same_batch_key_from_8_connections_at_once_creates_once() {
    let cluster = Cluster::start();
    let raffle = new_raffle(&mut cluster.connect(), 10_000, 12);
    let results = at_once(&cluster, 8, move |_, client| {
        client
            .query_one(
                "SELECT exactly.batch_create_tickets($1, 700, 'the-one-batch')",
                &[&raffle],
            )
            .unwrap()
            .get::<_, i32>(0)
    });
    assert_eq!(
        results,
        vec![700; 8],
        "every replay answers the first call's count"
    );
    let mut client = cluster.connect();
    let tickets: i64 = client
        .query_one(
            "SELECT count(*) FROM exactly.tickets WHERE raffle_id = $1",
            &[&raffle],
        )
        .unwrap()
        .get(0);
    assert_eq!(tickets, 700);
}

#[test]
fn a_backend_killed_in_the_middle_of_a_batch_leaves_no_partial_batch() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    let raffle = new_raffle(&mut admin, 1_000_000, 12);
    let config = cluster.config();
    let big_batch = thread::spawn(move || {
        let mut client = config.connect(common::NoTls).unwrap();
        client.query_one(
            "SELECT exactly.batch_create_tickets($1, 1000000, 'big')",
            &[&raffle],
        )
    });
    // wait until the batch is inserting: its backend has written tickets (in its own,
    // uncommitted transaction) for a while
    let pid: i32 = loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%batch_create_tickets%' AND state = 'active'
                   AND pid <> pg_backend_pid() AND now() - query_start > interval '300 ms'",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        thread::sleep(std::time::Duration::from_millis(20));
    };
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(
        big_batch.join().unwrap().is_err(),
        "the killed batch did not finish"
    );

    let faults = raffle_faults(&mut admin, raffle, 0);
    assert!(
        faults.is_empty(),
        "a killed batch left tickets behind: {faults:?}"
    );
    // its key was never committed: the job's retry creates the batch, whole
    let created: i32 = admin
        .query_one(
            "SELECT exactly.batch_create_tickets($1, 1000000, 'big')",
            &[&raffle],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 1_000_000);
    assert!(raffle_faults(&mut admin, raffle, 1_000_000).is_empty());
}

#[test]
fn a_nearly_exhausted_code_space_fails_cleanly_instead_of_looping() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let raffle = new_raffle(&mut client, 60_000, 4);
    let error = client
        .query_one("SELECT exactly.batch_create_tickets($1, 60000)", &[&raffle])
        .unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code().code(), "54000");
    assert!(
        db.message().contains("possible codes are nearly used up"),
        "{}",
        db.message()
    );
    let tickets: i64 = client
        .query_one("SELECT count(*) FROM exactly.tickets", &[])
        .unwrap()
        .get(0);
    assert_eq!(tickets, 0, "the failed call created nothing");
}

#[test]
fn bad_input_is_refused_with_a_sqlstate_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let raffle = new_raffle(&mut client, 100, 12);
    client
        .query_one(
            "SELECT exactly.batch_create_tickets($1, 10, 'k')",
            &[&raffle],
        )
        .unwrap();
    let state = |client: &mut Client| -> (i64, i64, i64) {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM exactly.tickets), (SELECT sum(tickets_created) FROM exactly.raffles)::bigint,
                        (SELECT count(*) FROM exactly.ticket_batches)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = state(&mut client);
    let unknown = raffle + 1000;
    for (sql, code) in [
        (
            "SELECT exactly.batch_create_tickets(NULL, 10)".to_string(),
            "22004",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({raffle}, NULL)"),
            "22004",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({unknown}, 10)"),
            "P0002",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({raffle}, -1)"),
            "22023",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({raffle}, 1000001)"),
            "22023",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({raffle}, 11, 'k')"),
            "22023",
        ),
        (
            format!("SELECT exactly.batch_create_tickets({unknown}, 10, 'k')"),
            "22023",
        ),
        (
            "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES (10, 3)"
                .to_string(),
            "23514",
        ),
        (
            "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES (10, 33)"
                .to_string(),
            "23514",
        ),
        (
            "INSERT INTO exactly.raffles (tickets_requested) VALUES (-1)".to_string(),
            "23514",
        ),
        (
            "SELECT exactly.purge_ticket_batches(NULL)".to_string(),
            "22004",
        ),
    ] {
        assert_eq!(sqlstate(client.batch_execute(&sql)), code, "{sql}");
    }
    let error = client
        .batch_execute(&format!(
            "SELECT exactly.batch_create_tickets({raffle}, 11, 'k')"
        ))
        .unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.message(), format!("batch key \"k\" was first used for raffle {raffle} with n = 10, not raffle {raffle} with n = 11"));
    assert!(db.hint().is_some());
    assert_eq!(state(&mut client), before, "a refused call changes nothing");
}
