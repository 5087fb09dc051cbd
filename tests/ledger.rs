//! Running-balance ledgers (seed 004) under real concurrency: many connections appending to
//! hot accounts, random rollbacks, withdrawals racing a minimum balance, replayed
//! idempotency keys, transactions appending to pairs of accounts in random order.

mod common;

use std::collections::BTreeMap;

use common::{at_once, sqlstate, Client, Cluster, XorShift};

/// An amount between -50.00 and 99.99, as text (sent as numeric by the SQL).
fn random_amount(random: &mut XorShift) -> String {
    let cents = (random.next() % 15_000) as i64 - 5_000;
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// Faults in a ledger table (columns id, account, amount, running_balance) read in key
/// order: each running balance must be the previous one plus the amount, per account.
fn chain_faults(client: &mut Client, table: &str) -> Vec<String> {
    let sql = format!(
        "SELECT account::text, amount::text, running_balance::text,
                coalesce(lag(running_balance) OVER w, 0)::text,
                coalesce(lag(running_balance) OVER w, 0) + amount = running_balance
         FROM {table} WINDOW w AS (PARTITION BY account ORDER BY id) ORDER BY id"
    );
    let rows = client.query(&sql, &[]).unwrap();
    rows.iter()
        .filter(|r| !r.get::<_, bool>(4))
        .map(|r| {
            let text = |i| r.get::<_, String>(i);
            format!(
                "{}: {} + {} != running {}",
                text(0),
                text(3),
                text(1),
                text(2)
            )
        })
        .collect()
}

/// `connections` threads append `appends` random amounts each to `account` through `call`
/// ($1 account, $2 amount); one transaction in five is rolled back. Returns the committed
/// amounts per account as the clients saw them.
fn append_concurrently(
    cluster: &Cluster,
    connections: usize,
    appends: usize,
    call: &'static str,
) -> Vec<String> {
    at_once(cluster, connections, move |i, client| {
        let mut random = XorShift(0xa11ce ^ (i as u64 + 1) << 20);
        let mut committed = Vec::new();
        for _ in 0..appends {
            let amount = random_amount(&mut random);
            let mut tx = client.transaction().unwrap();
            tx.execute(call, &[&"hot", &amount]).unwrap();
            if random.next() % 5 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
                committed.push(amount);
            }
        }
        committed
    })
    .into_iter()
    .flatten()
    .collect()
}

fn sum_text(client: &mut Client, amounts: &[String]) -> String {
    client
        .query_one(
            "SELECT coalesce(sum(a::numeric), 0)::text FROM unnest($1::text[]) a",
            &[&amounts],
        )
        .unwrap()
        .get(0)
}

#[test]
fn thirty_two_connections_with_rollbacks_keep_exact_running_balances() {
    let cluster = Cluster::start();
    let committed = append_concurrently(
        &cluster,
        32,
        40,
        "SELECT exactly.append_payment($1, $2::text::numeric)",
    );
    let mut client = cluster.connect();
    assert!(chain_faults(&mut client, "exactly.payments").is_empty());
    let row = client.query_one("SELECT balance::text, entries, (SELECT bool_and(ok) FROM exactly.verify_ledger()) FROM exactly.accounts WHERE account = 'hot'", &[]).unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        sum_text(&mut client, &committed),
        "balance = sum of committed amounts"
    );
    assert_eq!(row.get::<_, i64>(1), committed.len() as i64);
    assert!(row.get::<_, bool>(2), "verify_ledger finds nothing wrong");
}

/// The seed's first attempt: read the last payment's running balance, add, insert (shared
/// with the demo).
const NAIVE_LEDGER: &str = include_str!("../demo/ledger_naive.sql");

/// The same workload and check against the seed's read-add-insert: the check catches it.
#[test]
fn the_same_check_catches_the_naive_read_add_insert() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute(NAIVE_LEDGER).unwrap();
    append_concurrently(
        &cluster,
        32,
        40,
        "SELECT naive_append($1, $2::text::numeric)",
    );
    let faults = chain_faults(&mut cluster.connect(), "naive_payments");
    assert!(!faults.is_empty(), "the naive ledger stayed consistent");
}

#[test]
fn forty_withdrawals_of_10_from_100_leave_exactly_10_and_a_zero_balance() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("INSERT INTO exactly.accounts (account, min_balance) VALUES ('wallet', 0); SELECT exactly.append_payment('wallet', 100)")
        .unwrap();
    let outcomes = at_once(&cluster, 40, |_, client| {
        match client.query_one(
            "SELECT running_balance::text FROM exactly.append_payment('wallet', -10)",
            &[],
        ) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code().unwrap().code().to_string(),
        }
    });
    assert_eq!(outcomes.iter().filter(|o| *o == "ok").count(), 10);
    assert_eq!(
        outcomes.iter().filter(|o| *o == "23514").count(),
        30,
        "{outcomes:?}"
    );
    let balance: String = client
        .query_one(
            "SELECT balance::text FROM exactly.accounts WHERE account = 'wallet'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(balance, "0");
    assert!(chain_faults(&mut client, "exactly.payments").is_empty());
}

#[test]
fn a_refused_withdrawal_can_be_caught_and_the_transaction_goes_on() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("INSERT INTO exactly.accounts (account, min_balance) VALUES ('w', 0)")
        .unwrap();
    let mut tx = client.transaction().unwrap();
    tx.execute("SELECT exactly.append_payment('w', 5)", &[])
        .unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    assert_eq!(
        sqlstate(tx.batch_execute("SELECT exactly.append_payment('w', -6)")),
        "23514"
    );
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    tx.execute("SELECT exactly.append_payment('w', -5)", &[])
        .unwrap();
    tx.commit().unwrap();
    let row = client
        .query_one(
            "SELECT balance::text, entries FROM exactly.accounts WHERE account = 'w'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("0".to_string(), 2)
    );
}

#[test]
fn the_same_idempotency_key_from_8_connections_appends_once() {
    let cluster = Cluster::start();
    let ids = at_once(&cluster, 8, |_, client| {
        client
            .query_one(
                "SELECT id FROM exactly.append_payment('acct', 25, 'charge-1')",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
    });
    assert!(
        ids.iter().all(|&id| id == ids[0]),
        "every replay returns the first entry: {ids:?}"
    );
    let mut client = cluster.connect();
    let entries: i64 = client
        .query_one("SELECT count(*) FROM exactly.payments", &[])
        .unwrap()
        .get(0);
    assert_eq!(entries, 1);
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.append_payment('acct', 26, 'charge-1')")),
        "22023"
    );
    assert_eq!(
        sqlstate(client.batch_execute("SELECT exactly.append_payment('other', 25, 'charge-1')")),
        "22023"
    );
}

/// 32 connections; each transaction appends to a random pair of 10 accounts, in random
/// order. Our functions never wait out of lock order, so no deadlock is ever raised; a
/// transaction that would have to is told to retry (40001) and does.
#[test]
fn appending_to_random_pairs_in_random_order_never_deadlocks() {
    let cluster = Cluster::start();
    let results = at_once(&cluster, 32, |i, client| {
        pair_transactions(
            client,
            i,
            "SELECT exactly.append_payment($1, $2::text::numeric)",
        )
    });
    let (mut committed, mut retries) = (BTreeMap::<String, Vec<String>>::new(), 0);
    for (amounts, r, deadlocks) in results {
        assert_eq!(deadlocks, 0, "a deadlock was raised");
        retries += r;
        for (account, amount) in amounts {
            committed.entry(account).or_default().push(amount);
        }
    }
    let mut client = cluster.connect();
    assert!(chain_faults(&mut client, "exactly.payments").is_empty());
    for (account, amounts) in &committed {
        let balance: String = client
            .query_one(
                "SELECT balance::text FROM exactly.accounts WHERE account = $1",
                &[account],
            )
            .unwrap()
            .get(0);
        assert_eq!(balance, sum_text(&mut client, amounts), "account {account}");
    }
    eprintln!("{retries} transactions retried after 40001");
}

/// The same transactions through plain row locks (the reference PL/pgSQL): deadlocks.
#[test]
fn the_same_pairs_deadlock_with_plain_row_locks() {
    let cluster = Cluster::start();
    cluster
        .connect()
        .batch_execute(
            "CREATE TABLE ref_accounts (account text PRIMARY KEY, balance numeric NOT NULL DEFAULT 0);
             INSERT INTO ref_accounts SELECT 'account-' || i FROM generate_series(0, 9) i;
             CREATE FUNCTION ref_append(p_account text, p_amount numeric) RETURNS void LANGUAGE sql AS
               $$ UPDATE ref_accounts SET balance = balance + p_amount WHERE account = p_account $$;",
        )
        .unwrap();
    let results = at_once(&cluster, 32, |i, client| {
        pair_transactions(client, i, "SELECT ref_append($1, $2::text::numeric)")
    });
    let deadlocks: usize = results.iter().map(|(_, _, d)| d).sum();
    assert!(deadlocks > 0, "plain row locks never deadlocked");
}

/// 30 transactions, each appending to two random accounts in random order; a transaction
/// that fails with 40001 (or, for the plain version, 40P01) is retried. Returns what was
/// committed, how many retries, how many deadlocks.
fn pair_transactions(
    client: &mut Client,
    i: usize,
    call: &str,
) -> (Vec<(String, String)>, usize, usize) {
    let mut random = XorShift(0xdead10c ^ (i as u64 + 1) << 16);
    let (mut committed, mut retries, mut deadlocks) = (Vec::new(), 0, 0);
    for _ in 0..30 {
        let a = random.next() % 10;
        let b = (a + 1 + random.next() % 9) % 10;
        let pair = [
            (format!("account-{a}"), random_amount(&mut random)),
            (format!("account-{b}"), random_amount(&mut random)),
        ];
        loop {
            let mut tx = client.transaction().unwrap();
            let outcome = pair
                .iter()
                .try_for_each(|(account, amount)| tx.execute(call, &[account, amount]).map(|_| ()));
            match outcome.and_then(|_| tx.commit()) {
                Ok(()) => {
                    committed.extend(pair.iter().cloned());
                    break;
                }
                Err(e) => match e.code().map(|c| c.code()) {
                    Some("40001") => retries += 1,
                    Some("40P01") => deadlocks += 1,
                    _ => panic!("{e}"),
                },
            }
        }
    }
    (committed, retries, deadlocks)
}

#[test]
fn the_trigger_keeps_exact_running_balances_in_key_order_on_a_users_table() {
    let cluster = Cluster::start();
    cluster
        .connect()
        .batch_execute(
            "CREATE TABLE payments (id bigserial PRIMARY KEY, account text NOT NULL, amount numeric NOT NULL,
                                    running_balance numeric, note text);
             CREATE TRIGGER running_balance BEFORE INSERT OR UPDATE OR DELETE ON payments FOR EACH ROW
               EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'running_balance', 'account');",
        )
        .unwrap();
    let committed = append_concurrently(
        &cluster,
        16,
        40,
        "INSERT INTO payments (account, amount) VALUES ($1, $2::text::numeric)",
    );
    let mut client = cluster.connect();
    assert!(chain_faults(&mut client, "payments").is_empty());
    let last: String = client
        .query_one(
            "SELECT running_balance::text FROM payments ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        last,
        sum_text(&mut client, &committed),
        "the last entry holds the sum of all committed amounts"
    );
    assert_eq!(
        sqlstate(client.batch_execute(
            "UPDATE payments SET amount = amount + 1 WHERE id = (SELECT min(id) FROM payments)"
        )),
        "23001"
    );
    assert_eq!(
        sqlstate(
            client.batch_execute("DELETE FROM payments WHERE id = (SELECT min(id) FROM payments)")
        ),
        "23001"
    );
    client
        .batch_execute("UPDATE payments SET note = 'checked'")
        .unwrap();
}

#[test]
fn verify_ledger_reports_a_corrupted_entry() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client.batch_execute("SELECT exactly.append_payment('a', 10); SELECT exactly.append_payment('a', 5); SELECT exactly.append_payment('b', 1)").unwrap();
    let id: i64 = client
        .query_one(
            "SELECT max(id) FROM exactly.payments WHERE account = 'a'",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE exactly.payments SET running_balance = 16 WHERE id = $1",
            &[&id],
        )
        .unwrap();
    let rows = client
        .query(
            "SELECT account, ok, detail FROM exactly.verify_ledger()",
            &[],
        )
        .unwrap();
    let report: Vec<(String, bool, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(report[0].0, "a");
    assert!(!report[0].1);
    assert_eq!(
        report[0].2,
        format!("entry {id}: running_balance 16, but previous 10 + amount 5 = 15")
    );
    assert_eq!(
        report[1],
        ("b".to_string(), true, "1 entries, balance 1".to_string())
    );
}

#[test]
fn bad_input_is_refused_with_a_sqlstate_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute("SELECT exactly.append_payment('a', 10)")
        .unwrap();
    let state = |client: &mut Client| -> (i64, String) {
        let row = client.query_one("SELECT (SELECT count(*) FROM exactly.payments), (SELECT sum(balance)::text FROM exactly.accounts)", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    let before = state(&mut client);
    for (sql, code) in [
        ("SELECT exactly.append_payment(NULL, 1)", "22004"),
        ("SELECT exactly.append_payment('a', NULL)", "22004"),
        ("SELECT exactly.append_payment(NULL::numeric)", "22004"),
        ("SELECT exactly.append_payment('a', 'NaN')", "22023"),
        ("SELECT exactly.append_payment('a', 'Infinity')", "22023"),
        ("SELECT exactly.append_payment('a', '-Infinity')", "22023"),
        ("SELECT exactly.append_payment('', 1)", "22023"),
        ("SELECT exactly.append_payments('a', '{}')", "22023"),
        ("SELECT exactly.append_payments('a', '{1,NULL}')", "22004"),
        ("SELECT exactly.append_payments('a', NULL)", "22004"),
    ] {
        assert_eq!(sqlstate(client.batch_execute(sql)), code, "{sql}");
    }
    assert_eq!(state(&mut client), before, "a refused call changes nothing");
}
