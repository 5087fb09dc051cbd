//! Gapless per-tenant invoice numbers under real concurrency: many connections, each its
//! own backend, with rollbacks and killed backends.

mod common;

use std::collections::BTreeMap;
use std::thread;

use common::{at_once, sqlstate, wait_until_blocked, Client, Cluster, XorShift};

/// The user's own table, numbered by our trigger, as in seed 001 (shared with the demo).
const OUR_TRIGGER: &str = include_str!("../demo/invoices_exactly.sql");

/// The seed's first attempt, read max() + 1 then write (shared with the demo).
const NAIVE_TRIGGER: &str = include_str!("../demo/invoices_naive.sql");

/// `connections` threads insert `inserts` invoices each for tenants 11 and 12, all starting
/// at once; one transaction in five is rolled back. Returns what the clients saw committed.
fn insert_concurrently(
    cluster: &Cluster,
    connections: usize,
    inserts: usize,
) -> Vec<(String, String)> {
    let committed = at_once(cluster, connections, move |i, client| {
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        let mut committed = Vec::new();
        for _ in 0..inserts {
            let tenant = if random.next() % 2 == 0 { "11" } else { "12" };
            let mut tx = client.transaction().unwrap();
            let number: String = tx
                .query_one(
                    "INSERT INTO invoices (tenant_identifier) VALUES ($1) RETURNING invoice_number",
                    &[&tenant],
                )
                .unwrap()
                .get(0);
            if random.next() % 5 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
                committed.push((tenant.to_string(), number));
            }
        }
        committed
    });
    let mut all: Vec<_> = committed.into_iter().flatten().collect();
    all.sort();
    all
}

/// What is wrong with the table's numbers: for each tenant they must be exactly 1..N,
/// and the table must hold exactly what the clients saw committed.
fn numbering_faults(client: &mut Client, committed: &[(String, String)]) -> Vec<String> {
    let mut stored: Vec<(String, String)> = client
        .query(
            "SELECT tenant_identifier, invoice_number FROM invoices",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    stored.sort();
    let mut faults = Vec::new();
    if stored != committed {
        faults.push(format!(
            "table holds {} rows, clients committed {}",
            stored.len(),
            committed.len()
        ));
    }
    let mut per_tenant: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (tenant, number) in &stored {
        let (prefix, digits) = number.rsplit_once('-').expect("format <prefix>-<digits>");
        assert_eq!(prefix, tenant);
        assert_eq!(digits.len(), 8, "zero-padded to width 8: {number}");
        per_tenant
            .entry(tenant)
            .or_default()
            .push(digits.parse().unwrap());
    }
    for (tenant, mut numbers) in per_tenant {
        numbers.sort();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        if numbers != expected {
            let duplicates = numbers.windows(2).filter(|w| w[0] == w[1]).count();
            faults.push(format!(
                "tenant {tenant}: {} numbers, {duplicates} duplicates, highest {}",
                numbers.len(),
                numbers.last().unwrap()
            ));
        }
    }
    faults
}

#[test]
fn fifty_connections_with_rollbacks_leave_each_tenant_exactly_1_to_n() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(OUR_TRIGGER).unwrap();
    let committed = insert_concurrently(&cluster, 50, 60);
    assert!(
        committed.len() > 2000 && committed.len() < 2800,
        "about 80% of 3000 commit"
    );
    let faults = numbering_faults(&mut cluster.connect(), &committed);
    assert!(faults.is_empty(), "{faults:?}");
}

/// The same workload and the same check against the seed's max()+1: the check catches it,
/// so the test above would fail without the locking.
#[test]
fn the_same_check_catches_the_naive_max_plus_one() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(NAIVE_TRIGGER).unwrap();
    let committed = insert_concurrently(&cluster, 50, 60);
    let faults = numbering_faults(&mut cluster.connect(), &committed);
    assert!(
        faults.iter().any(|f| f.contains("duplicates")),
        "naive numbering looked gapless: {faults:?}"
    );
}

#[test]
fn a_backend_killed_while_holding_a_number_leaves_no_gap() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    assert_eq!(
        query_text(&mut admin, "SELECT exactly.next_invoice_number('k')"),
        "k-00000001"
    );

    let mut holder = cluster.connect();
    holder.batch_execute("BEGIN").unwrap();
    assert_eq!(
        query_text(&mut holder, "SELECT exactly.next_invoice_number('k')"),
        "k-00000002"
    );
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);

    let config = cluster.config();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut client = config.connect(common::NoTls).unwrap();
        pid_tx
            .send(
                client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .unwrap()
                    .get::<_, i32>(0),
            )
            .unwrap();
        query_text(&mut client, "SELECT exactly.next_invoice_number('k')")
    });
    wait_until_blocked(&mut admin, pid_rx.recv().unwrap());
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&holder_pid])
        .unwrap();

    assert_eq!(
        waiter.join().unwrap(),
        "k-00000002",
        "the killed backend's number is handed out again"
    );
    assert!(
        holder.batch_execute("COMMIT").is_err(),
        "the killed backend's connection is gone"
    );
    assert_eq!(
        query_text(&mut admin, "SELECT exactly.next_invoice_number('k')"),
        "k-00000003"
    );
}

#[test]
fn forty_connections_using_a_new_tenant_at_once_get_1_to_40() {
    let cluster = Cluster::start();
    let mut numbers = at_once(&cluster, 40, |_, client| {
        query_text(client, "SELECT exactly.next_invoice_number('brand-new')")
    });
    numbers.sort();
    let expected: Vec<String> = (1..=40).map(|n| format!("brand-new-{n:08}")).collect();
    assert_eq!(numbers, expected);
    let rows: i64 = cluster
        .connect()
        .query_one(
            "SELECT count(*) FROM exactly.invoice_sequences WHERE tenant = 'brand-new'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn bad_input_is_refused_with_a_sqlstate_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("SELECT exactly.define_invoice_sequence('11', '11')")
        .unwrap();
    let state = |client: &mut Client| -> Vec<(String, String, i32, i64)> {
        client
            .query("SELECT tenant, prefix, width, next_value FROM exactly.invoice_sequences ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let before = state(&mut client);
    for (sql, code) in [
        ("SELECT exactly.next_invoice_number(NULL)", "22004"),
        ("SELECT exactly.next_invoice_number('')", "22023"),
        ("SELECT exactly.next_invoice_numbers('11', 0)", "22023"),
        ("SELECT exactly.next_invoice_numbers('11', -1)", "22023"),
        (
            "SELECT exactly.next_invoice_numbers('11', 1000001)",
            "22023",
        ),
        ("SELECT exactly.next_invoice_numbers(NULL, 2)", "22004"),
        (
            "SELECT exactly.define_invoice_sequence('11', '11', 0)",
            "22023",
        ),
        (
            "SELECT exactly.define_invoice_sequence('11', '11', -3)",
            "22023",
        ),
        (
            "SELECT exactly.define_invoice_sequence('11', '11', 20)",
            "22023",
        ),
        (
            "SELECT exactly.define_invoice_sequence('11', NULL)",
            "22004",
        ),
        ("SELECT exactly.define_invoice_sequence(NULL, 'x')", "22004"),
        (
            "SELECT exactly.define_invoice_sequence('11', '11', NULL)",
            "22004",
        ),
    ] {
        assert_eq!(sqlstate(client.batch_execute(sql)), code, "{sql}");
    }
    let e = client
        .batch_execute("SELECT exactly.next_invoice_numbers('11', 0)")
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.message(), "n must be between 1 and 1000000, not 0");
    assert!(db.hint().is_some(), "every refusal carries a hint");
    assert_eq!(state(&mut client), before, "a refused call changes nothing");
}

fn query_text(client: &mut Client, sql: &str) -> String {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// 16 connections; each transaction draws one number for each of two random tenants out
/// of five, in random order, and commits; a 40001 (a lock that would have to be waited for
/// out of order) is retried. No deadlock is ever raised, and every tenant ends at 1..N.
#[test]
fn drawing_for_pairs_of_tenants_in_random_order_never_deadlocks() {
    let cluster = Cluster::start();
    let outcomes = at_once(&cluster, 16, |i, client| {
        let mut random = XorShift(0x7e4a47 ^ ((i as u64 + 1) << 12));
        let (mut retries, mut deadlocks) = (0, 0);
        for _ in 0..25 {
            let a = random.next() % 5;
            let b = (a + 1 + random.next() % 4) % 5;
            loop {
                let mut tx = client.transaction().unwrap();
                let drawn = [a, b].iter().try_for_each(|t| {
                    tx.execute(
                        "SELECT exactly.next_invoice_number($1)",
                        &[&format!("t{t}")],
                    )
                    .map(|_| ())
                });
                match drawn.and_then(|_| tx.commit()) {
                    Ok(()) => break,
                    Err(e) => match e.code().map(|c| c.code()) {
                        Some("40001") => retries += 1,
                        Some("40P01") => deadlocks += 1,
                        _ => panic!("{e}"),
                    },
                }
            }
        }
        (retries, deadlocks)
    });
    assert_eq!(
        outcomes.iter().map(|o| o.1).sum::<usize>(),
        0,
        "a deadlock was raised"
    );
    let mut client = cluster.connect();
    let rows = client
        .query(
            "SELECT tenant, next_value FROM exactly.invoice_sequences ORDER BY tenant",
            &[],
        )
        .unwrap();
    let drawn: i64 = rows.iter().map(|r| r.get::<_, i64>(1) - 1).sum();
    assert_eq!(
        drawn,
        16 * 25 * 2,
        "every committed draw counted once, none lost"
    );
}
