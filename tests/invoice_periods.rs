//! Invoice numbering as invoicing needs it, under real concurrency: numbers that start again
//! every fiscal year or month, templates, two-column scopes, a start migrated from another
//! system, and numbers drawn when the transaction commits.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{at_once, sqlstate, Client, Cluster, XorShift};

/// An invoice table numbered by `trigger` (an exactly.assign_invoice_number* call).
fn invoices(client: &mut Client, trigger: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE invoices (id bigserial PRIMARY KEY, tenant text NOT NULL, series text NOT NULL DEFAULT 'A',
                                    issued date, number text);
             {trigger}"
        ))
        .unwrap();
}

const AT_INSERT: &str = "CREATE TRIGGER number BEFORE INSERT ON invoices FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number', 'issued');";
const AT_COMMIT: &str = "CREATE CONSTRAINT TRIGGER number AFTER INSERT OR UPDATE ON invoices
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant', 'number', 'issued');";

/// The seed's max() + 1, per (tenant, year of the date), as a BEFORE INSERT trigger: the
/// naive twin every check here must catch.
const NAIVE: &str = "CREATE FUNCTION naive_number() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE n bigint;
    BEGIN
        SELECT coalesce(max(split_part(number, '-', 3)::bigint), 0) + 1 INTO n FROM invoices
         WHERE tenant = NEW.tenant AND date_trunc('year', issued) = date_trunc('year', NEW.issued);
        PERFORM pg_sleep(0.001);
        NEW.number := 'INV-' || to_char(NEW.issued, 'YYYY') || '-' || lpad(n::text, 4, '0');
        RETURN NEW;
    END $$;
    CREATE TRIGGER number BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION naive_number();";

/// `connections` clients insert `inserts` invoices each, for `tenants`, dated one of `dates`
/// at random; one transaction in five is rolled back. With `work`, each transaction sleeps
/// that long after its insert (its other work). Returns what the clients saw committed:
/// (tenant, date); the numbers are read from the table, where a commit-time trigger writes
/// them.
fn insert_concurrently(
    cluster: &Cluster,
    connections: usize,
    inserts: usize,
    tenants: &'static [&'static str],
    dates: &'static [&'static str],
    work: Option<Duration>,
) -> Vec<(String, String)> {
    let committed = at_once(cluster, connections, move |i, client| {
        let mut random = XorShift(0x2545_f491_4f6c_dd1d ^ (i as u64 + 1));
        let mut committed = Vec::new();
        for _ in 0..inserts {
            let tenant = tenants[random.next() as usize % tenants.len()];
            let date = dates[random.next() as usize % dates.len()];
            let mut tx = client.transaction().unwrap();
            tx.execute("INSERT INTO invoices (tenant, issued) VALUES ($1, $2::text::date)", &[&tenant, &date])
                .unwrap();
            if let Some(work) = work {
                tx.execute("SELECT pg_sleep($1::float8)", &[&work.as_secs_f64()]).unwrap();
            }
            if random.next() % 5 == 0 {
                tx.rollback().unwrap();
            } else {
                tx.commit().unwrap();
                committed.push((tenant.to_string(), date.to_string()));
            }
        }
        committed
    });
    let mut all: Vec<_> = committed.into_iter().flatten().collect();
    all.sort();
    all
}

/// What is wrong with the table's numbers: it must hold exactly what the clients committed,
/// every number as `format(tenant, date, n)` for the period `period(date)` of its tenant, and
/// each (tenant, period) numbered exactly 1..N.
fn period_faults(
    client: &mut Client,
    committed: &[(String, String)],
    period: impl Fn(&str) -> String,
    format: impl Fn(&str, &str, i64) -> String,
) -> Vec<String> {
    let rows: Vec<(String, String, Option<String>)> = client
        .query("SELECT tenant, issued::text, number FROM invoices ORDER BY tenant, issued", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut faults = Vec::new();
    let mut stored: Vec<(String, String)> = rows.iter().map(|(t, d, _)| (t.clone(), d.clone())).collect();
    stored.sort();
    if stored != committed {
        faults.push(format!("table holds {} rows, clients committed {}", stored.len(), committed.len()));
    }
    let mut per_period: BTreeMap<(String, String), Vec<(i64, String, String)>> = BTreeMap::new();
    for (tenant, date, number) in &rows {
        let Some(number) = number else {
            faults.push(format!("an invoice of {tenant} dated {date} has no number"));
            continue;
        };
        let n: i64 = number.rsplit(['-', '/']).next().unwrap().parse().unwrap_or(-1);
        per_period.entry((tenant.clone(), period(date))).or_default().push((n, date.clone(), number.clone()));
    }
    for ((tenant, period), mut numbers) in per_period {
        numbers.sort();
        let got: Vec<i64> = numbers.iter().map(|(n, _, _)| *n).collect();
        if got != (1..=got.len() as i64).collect::<Vec<_>>() {
            let duplicates = got.windows(2).filter(|w| w[0] == w[1]).count();
            faults.push(format!("{tenant}, period {period}: {} numbers, {duplicates} duplicates, highest {}", got.len(), got.last().unwrap()));
        }
        for (n, date, number) in numbers {
            let want = format(&tenant, &date, n);
            if number != want {
                faults.push(format!("{tenant} {date}: {number}, expected {want}"));
                break;
            }
        }
    }
    faults
}

const YEAR_END: &[&str] = &["2026-12-30", "2026-12-31", "2027-01-01", "2027-01-02"];

fn year_of(date: &str) -> String {
    date[..4].to_string()
}

fn inv_yyyy(_: &str, date: &str, n: i64) -> String {
    format!("INV-{}-{n:04}", &date[..4])
}

#[test]
fn across_a_year_boundary_each_tenant_and_year_is_numbered_1_to_n() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(&mut admin, AT_INSERT);
    for tenant in ["t1", "t2"] {
        admin
            .execute("SELECT exactly.define_invoice_sequence($1, 'INV', 4, 'INV-{yyyy}-{number}', 'yearly')", &[&tenant])
            .unwrap();
    }
    let committed = insert_concurrently(&cluster, 32, 40, &["t1", "t2"], YEAR_END, None);
    assert!(committed.len() > 900, "about 80% of 1280 commit: {}", committed.len());
    let faults = period_faults(&mut admin, &committed, year_of, inv_yyyy);
    assert!(faults.is_empty(), "{faults:#?}");
}

/// The same workload and check against the seed's max() + 1 per year: the check catches it.
#[test]
fn the_same_check_catches_a_naive_max_plus_one_per_year() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(&mut admin, NAIVE);
    let committed = insert_concurrently(&cluster, 32, 40, &["t1", "t2"], YEAR_END, None);
    let faults = period_faults(&mut admin, &committed, year_of, inv_yyyy);
    assert!(faults.iter().any(|f| f.contains("duplicates")), "naive numbering looked gapless: {faults:?}");
}

#[test]
fn monthly_numbering_starts_again_every_month() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(&mut admin, AT_INSERT);
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('t1', '', 3, '{yyyy}{mm}/{number}', 'monthly')")
        .unwrap();
    let committed = insert_concurrently(&cluster, 32, 30, &["t1"], &["2026-01-30", "2026-01-31", "2026-02-01", "2026-03-01"], None);
    let faults = period_faults(&mut admin, &committed, |d| d[..7].to_string(), |_, d, n| format!("{}{}/{n:03}", &d[..4], &d[5..7]));
    assert!(faults.is_empty(), "{faults:#?}");
}

#[test]
fn a_fiscal_year_starting_in_april_numbers_march_31_and_april_1_apart() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(&mut admin, AT_INSERT);
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('t1', 'X', 5, 'FY{fy}-{prefix}-{number}', 'yearly', 4)")
        .unwrap();
    let committed = insert_concurrently(&cluster, 32, 30, &["t1"], &["2026-03-30", "2026-03-31", "2026-04-01", "2026-04-02"], None);
    let fiscal = |d: &str| if &d[5..7] >= "04" { d[..4].to_string() } else { (d[..4].parse::<i32>().unwrap() - 1).to_string() };
    let faults = period_faults(&mut admin, &committed, fiscal, |_, d, n| format!("FY{}-X-{n:05}", fiscal(d)));
    assert!(faults.is_empty(), "{faults:#?}");
}

/// A scope of two columns: `acme:A` and `acme:B` are two numberings, defined in advance.
#[test]
fn two_column_scopes_number_each_tenant_and_series_apart() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(
        &mut admin,
        "CREATE TRIGGER number BEFORE INSERT ON invoices FOR EACH ROW
             EXECUTE FUNCTION exactly.assign_invoice_number('tenant, series', 'number');
         SELECT exactly.define_invoice_sequence('acme:A', 'A', 4, '{prefix}-{number}');
         SELECT exactly.define_invoice_sequence('acme:B', 'CREDIT', 4, '{prefix}-{number}');",
    );
    at_once(&cluster, 32, |i, client| {
        for j in 0..25 {
            let series = if (i + j) % 3 == 0 { "B" } else { "A" };
            client.execute("INSERT INTO invoices (tenant, series) VALUES ('acme', $1)", &[&series]).unwrap();
        }
    });
    for (series, prefix) in [("A", "A"), ("B", "CREDIT")] {
        let mut numbers: Vec<String> = admin
            .query("SELECT number FROM invoices WHERE series = $1", &[&series])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        numbers.sort();
        let expected: Vec<String> = (1..=numbers.len()).map(|n| format!("{prefix}-{n:04}")).collect();
        assert_eq!(numbers, expected, "series {series}");
    }
}

/// `set_next_invoice_number` while 16 connections draw: the numbering jumps once, forward,
/// and never hands out a number twice; a set that would go back is refused (22023). A naive
/// set — the counter written without the check — hands out numbers twice.
#[test]
fn set_next_invoice_number_racing_draws_jumps_forward_once() {
    for naive in [false, true] {
        let cluster = Cluster::start();
        let mut admin = cluster.connect();
        admin.batch_execute("SELECT exactly.next_invoice_number('m')").unwrap();
        let drawn = at_once(&cluster, 17, move |i, client| {
            let mut drawn = vec![];
            for j in 0..60 {
                if i == 16 {
                    if j == 20 {
                        let set = if naive {
                            "UPDATE exactly.invoice_sequences SET next_value = 30 WHERE tenant = 'm'"
                        } else {
                            "SELECT exactly.set_next_invoice_number('m', 10000)"
                        };
                        client.batch_execute(set).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let number: String = client.query_one("SELECT exactly.next_invoice_number('m')", &[]).unwrap().get(0);
                drawn.push(number[2..].parse::<i64>().unwrap());
            }
            drawn
        });
        let mut all: Vec<i64> = drawn.into_iter().flatten().collect();
        all.push(1);
        all.sort();
        let duplicates = all.windows(2).filter(|w| w[0] == w[1]).count();
        if naive {
            assert!(duplicates > 0, "the naive set handed out nothing twice: the check could not fail");
            continue;
        }
        assert_eq!(duplicates, 0, "numbers handed out twice");
        let below: Vec<i64> = all.iter().copied().filter(|&n| n < 10000).collect();
        let above: Vec<i64> = all.iter().copied().filter(|&n| n >= 10000).collect();
        assert_eq!(below, (1..=below.len() as i64).collect::<Vec<_>>());
        assert_eq!(above, (10000..10000 + above.len() as i64).collect::<Vec<_>>());
        assert_eq!(sqlstate(admin.execute("SELECT exactly.set_next_invoice_number('m', 5000)", &[])), "22023");
    }
}

/// Numbers drawn at commit: 32 connections, each transaction inserting an invoice, working a
/// moment, then committing or (one in five) rolling back. Every committed invoice is
/// numbered, each tenant exactly 1..N, and numbers follow commit order.
#[test]
fn commit_time_numbers_under_32_connections_with_rollbacks() {
    let cluster = Cluster::start_with("-c track_commit_timestamp=on");
    let mut admin = cluster.connect();
    invoices(&mut admin, AT_COMMIT);
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('t1', 'INV', 4, 'INV-{yyyy}-{number}', 'yearly'); SELECT exactly.define_invoice_sequence('t2', 'INV', 4, 'INV-{yyyy}-{number}', 'yearly')")
        .unwrap();
    let committed = insert_concurrently(&cluster, 32, 25, &["t1", "t2"], YEAR_END, Some(Duration::from_millis(2)));
    let faults = period_faults(&mut admin, &committed, year_of, inv_yyyy);
    assert!(faults.is_empty(), "{faults:#?}");
    // in each (tenant, year), the higher number committed later
    let out_of_order: i64 = admin
        .query_one(
            "SELECT count(*) FROM (
                 SELECT pg_xact_commit_timestamp(xmin) AS at,
                        lag(pg_xact_commit_timestamp(xmin)) OVER (PARTITION BY tenant, left(number, 8) ORDER BY number) AS before
                 FROM invoices) o
             WHERE at < before",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(out_of_order, 0, "numbers out of commit order");
}

/// The same check catches a naive commit-time numbering (max() + 1 in a deferred trigger).
#[test]
fn the_same_check_catches_a_naive_commit_time_max_plus_one() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(
        &mut admin,
        "CREATE FUNCTION naive_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE n bigint;
         BEGIN
             SELECT coalesce(max(split_part(number, '-', 3)::bigint), 0) + 1 INTO n FROM invoices
              WHERE tenant = NEW.tenant AND date_trunc('year', issued) = date_trunc('year', NEW.issued);
             PERFORM pg_sleep(0.001);
             UPDATE invoices SET number = 'INV-' || to_char(NEW.issued, 'YYYY') || '-' || lpad(n::text, 4, '0')
              WHERE id = NEW.id;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER number AFTER INSERT ON invoices DEFERRABLE INITIALLY DEFERRED
             FOR EACH ROW EXECUTE FUNCTION naive_at_commit();",
    );
    let committed = insert_concurrently(&cluster, 32, 25, &["t1", "t2"], YEAR_END, Some(Duration::from_millis(2)));
    let faults = period_faults(&mut admin, &committed, year_of, inv_yyyy);
    assert!(faults.iter().any(|f| f.contains("duplicates")), "naive numbering looked gapless: {faults:?}");
}

/// A backend terminated while it holds a commit-time draw (its constraints set IMMEDIATE, so
/// it drew before COMMIT): the waiting transaction gets that number, no gap.
#[test]
fn a_backend_terminated_while_holding_a_commit_time_draw_leaves_no_gap() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    invoices(&mut admin, AT_COMMIT);
    admin.batch_execute("INSERT INTO invoices (tenant) VALUES ('k')").unwrap(); // k-00000001
    let mut holder = cluster.connect();
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    holder
        .batch_execute("BEGIN; INSERT INTO invoices (tenant) VALUES ('k'); SET CONSTRAINTS number IMMEDIATE")
        .unwrap();
    let waiter = std::thread::spawn({
        let config = cluster.config();
        move || {
            let mut client = config.connect(common::NoTls).unwrap();
            client.batch_execute("INSERT INTO invoices (tenant) VALUES ('k')").unwrap();
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> $1", &[&holder_pid])
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the second commit never waited for the draw");
        std::thread::sleep(Duration::from_millis(20));
    }
    admin.execute("SELECT pg_terminate_backend($1)", &[&holder_pid]).unwrap();
    waiter.join().unwrap();
    let numbers: Vec<String> = admin
        .query("SELECT number FROM invoices ORDER BY number", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(numbers, ["k-00000001", "k-00000002"]);
}

/// A backend that has drawn from a numbering that resets remembers how it resets; another
/// backend's redefinition must win over that memory, with no number lost or repeated.
#[test]
fn a_redefinition_in_another_session_is_followed_at_once() {
    let cluster = Cluster::start();
    let mut drawer = cluster.connect();
    let mut admin = cluster.connect();
    let next = |client: &mut Client, date: &str| -> String {
        client
            .query_one("SELECT exactly.next_invoice_number('acme', $1::text::date)", &[&date])
            .unwrap()
            .get(0)
    };
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('acme', 'A', 2, '{prefix}{yyyy}-{number}', 'yearly')")
        .unwrap();
    assert_eq!(next(&mut drawer, "2026-05-01"), "A2026-01");
    assert_eq!(next(&mut drawer, "2026-06-01"), "A2026-02");
    // to monthly: the same date is in a new series
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('acme', 'A', 2, '{prefix}{yyyy}{mm}-{number}', 'monthly')")
        .unwrap();
    assert_eq!(next(&mut drawer, "2026-06-02"), "A202606-01");
    // a fiscal year from April: a new yearly series, named by its start
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('acme', 'A', 2, '{prefix}{fy}-{number}', 'yearly', 4)")
        .unwrap();
    assert_eq!(next(&mut drawer, "2026-03-02"), "A2025-01");
    // never: the tenant's own counter, which never moved
    admin.batch_execute("SELECT exactly.define_invoice_sequence('acme', 'A', 2)").unwrap();
    assert_eq!(next(&mut drawer, "2026-06-03"), "A-01");
    // and back to the calendar year: that series goes on where it was
    admin
        .batch_execute("SELECT exactly.define_invoice_sequence('acme', 'A', 2, '{prefix}{yyyy}-{number}', 'yearly')")
        .unwrap();
    assert_eq!(next(&mut drawer, "2026-07-01"), "A2026-03");
    assert_eq!(next(&mut admin, "2026-07-01"), "A2026-04");
}
