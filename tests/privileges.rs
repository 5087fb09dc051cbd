//! Contract point 2 (roles and privileges) and the row-level-security part of point 7, as an
//! outside attacker. An application role given `exactly.grant_usage(role)` can do everything
//! the README documents, cannot write any state table except through the functions (nor
//! create triggers, rules, policies or objects on or next to them), cannot read or write
//! through find_or_create / increment / claim_batch / complete_batch what it could not read
//! or write itself (privileges, columns, row-level security), and cannot become superuser by
//! any path tried here. A role without `grant_usage` gets 42501 from every function; only a
//! superuser (or the extension's owner) may call `grant_usage`.
//!
//! Each test collects every fault it finds and fails once, listing them all. Against 0.2.0,
//! which has no `grant_usage`, each test records that (SQLSTATE 42883) and goes on with the
//! README's 0.2.0 grants, so the list shows what else 0.2.0 lets an app role do.

mod common;

use std::sync::{Arc, Mutex};

use common::text::{col, describe, json, one, raw, refused, refused_in_txn, run, same};
use common::{Client, Cluster, NoTls};

// ---------------------------------------------------------------------------------------
// helpers: statements through the simple query protocol, values as text
// ---------------------------------------------------------------------------------------

/// Every fault a test finds; the test fails once, listing them.
#[derive(Default)]
struct Faults(Vec<String>);

impl Faults {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        if let Err(e) = result {
            self.0.push(format!("{what}: {e}"));
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} fault(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// pg_exactly's state tables.
const STATE_TABLES: &[&str] = &[
    "invoice_sequences",
    "raffles",
    "tickets",
    "ticket_batches",
    "accounts",
    "payments",
    "table_balances",
    "claims",
    "claim_attempts",
];

/// `SELECT exactly.grant_usage(role)` as the superuser; without it (0.2.0) record the fault
/// and give the README's 0.2.0 grants instead, so the rest of the test still means something.
fn grant_usage(admin: &mut Client, role: &str, faults: &mut Faults) {
    if let Err(e) = admin.batch_execute(&format!("SELECT exactly.grant_usage('{role}')")) {
        faults.0.push(format!(
            "SELECT exactly.grant_usage('{role}') as superuser: {}; went on with the README's 0.2.0 grants",
            describe(&e)
        ));
        admin
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA exactly TO {role};
                 GRANT SELECT, INSERT, UPDATE ON exactly.invoice_sequences TO {role};
                 GRANT SELECT, INSERT, UPDATE ON exactly.raffles, exactly.tickets, exactly.ticket_batches TO {role};
                 GRANT SELECT, INSERT, UPDATE ON exactly.accounts, exactly.payments, exactly.table_balances TO {role};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON exactly.claims, exactly.claim_attempts TO {role};"
            ))
            .unwrap();
    }
}

/// The roles every test uses: `app` (the application, owner of schema `shop`), `other` (a
/// second login role), `owner_role` (owner of schema `biz`, tables app was given rights on).
fn roles(cluster: &Cluster) -> Client {
    let mut admin = cluster.connect();
    admin
        .batch_execute(
            "SET search_path = pg_catalog;
             CREATE ROLE app LOGIN;
             CREATE ROLE other LOGIN;
             CREATE ROLE owner_role;
             CREATE SCHEMA shop AUTHORIZATION app;
             CREATE SCHEMA biz AUTHORIZATION owner_role;
             GRANT USAGE ON SCHEMA biz TO app, other;",
        )
        .unwrap();
    admin
}

/// A digest of every row of every state table (and of `extra` relations).
fn snapshot(k: &mut Client, extra: &[&str]) -> Vec<String> {
    STATE_TABLES
        .iter()
        .map(|t| format!("exactly.{t}"))
        .chain(extra.iter().map(|t| t.to_string()))
        .map(|t| {
            let digest = one(
                k,
                &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {t} t"),
            )
            .unwrap();
            format!("{t} {digest}")
        })
        .collect()
}

fn unchanged(k: &mut Client, before: &[String], extra: &[&str]) -> Result<(), String> {
    let after = snapshot(k, extra);
    let changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, _)| b.split(' ').next().unwrap().to_string())
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!("changed: {}", changed.join(", ")))
    }
}

/// Whether `role` is a superuser or a member of any role, as "super=.., member_of=..".
fn standing(k: &mut Client, role: &str) -> String {
    one(
        k,
        &format!(
            "SELECT 'super=' || r.rolsuper || ' member_of=' || coalesce((SELECT string_agg(m.roleid::regrole::text, ',' ORDER BY 1)
               FROM pg_auth_members m WHERE m.member = r.oid), '')
             FROM pg_roles r WHERE r.rolname = '{role}'"
        ),
    )
    .unwrap()
}

/// Some state in every state table, made by the superuser: an invoice tenant, a raffle with
/// tickets and a batch key, two accounts with payments, a ledger on a user table, a live
/// claim and a failed attempt on `shop.jobs` (which app owns). Returns (raffle, live claim).
fn some_state(admin: &mut Client) -> (String, String) {
    admin
        .batch_execute(
            "SET search_path = pg_catalog;
             SELECT exactly.define_invoice_sequence('eu', 'EU', 4);
             SELECT * FROM exactly.next_invoice_numbers('eu', 3);
             INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', 0);
             SELECT * FROM exactly.append_payment('alice', 100, 'charge-1');
             SELECT * FROM exactly.append_payments('bob', '{5,6}');
             CREATE TABLE shop.ledger (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric);
             ALTER TABLE shop.ledger OWNER TO app;
             CREATE TRIGGER ledger BEFORE INSERT OR UPDATE OR DELETE ON shop.ledger FOR EACH ROW
                 EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');
             INSERT INTO shop.ledger (account, amount) VALUES ('x', 10), ('x', 5);
             CREATE TABLE shop.jobs (id bigint PRIMARY KEY, done_at timestamptz);
             ALTER TABLE shop.jobs OWNER TO app;
             INSERT INTO shop.jobs SELECT g FROM generate_series(1, 10) g;",
        )
        .unwrap();
    let raffle = one(
        admin,
        "INSERT INTO exactly.raffles (tickets_requested) VALUES (10) RETURNING id",
    )
    .unwrap();
    one(
        admin,
        &format!("SELECT exactly.batch_create_tickets({raffle}, 4, 'k1')"),
    )
    .unwrap();
    let released = one(
        admin,
        "SELECT DISTINCT claim FROM exactly.claim_batch('shop.jobs', 'done_at', 1)",
    )
    .unwrap();
    one(
        admin,
        &format!("SELECT exactly.release_claim('{released}')"),
    )
    .unwrap();
    let live = one(
        admin,
        "SELECT DISTINCT claim FROM exactly.claim_batch('shop.jobs', 'done_at', 2)",
    )
    .unwrap();
    (raffle, live)
}

// ---------------------------------------------------------------------------------------
// the tests
// ---------------------------------------------------------------------------------------

/// Everything the README documents works for an app role given grant_usage (and the
/// catalog shows USAGE on the schema, EXECUTE on every function, SELECT on every table).
#[test]
fn grant_usage_lets_an_app_role_do_everything_documented() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    grant_usage(&mut admin, "app", &mut faults);
    admin
        .batch_execute(
            "SET ROLE owner_role;
             CREATE TABLE biz.counters (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, value int NOT NULL DEFAULT 0);
             GRANT SELECT, INSERT, UPDATE ON biz.counters TO app;
             GRANT USAGE ON SEQUENCE biz.counters_id_seq TO app;
             CREATE TABLE biz.jobs (id bigint PRIMARY KEY, done_at timestamptz);
             INSERT INTO biz.jobs SELECT g FROM generate_series(1, 5) g;
             GRANT SELECT, UPDATE ON biz.jobs TO app;
             RESET ROLE;",
        )
        .unwrap();
    faults.check(
        "catalog: USAGE on schema exactly",
        same(
            "has_schema_privilege",
            one(
                &mut admin,
                "SELECT has_schema_privilege('app', 'exactly', 'USAGE')::text",
            )
            .unwrap(),
            "true".into(),
        ),
    );
    faults.check(
        "catalog: EXECUTE on every function but grant_usage and set_shard (the owner's and superusers' only)",
        same(
            "functions app cannot execute",
            col(&mut admin, "SELECT p.oid::regprocedure::text FROM pg_proc p
                 WHERE p.pronamespace = 'exactly'::regnamespace AND NOT has_function_privilege('app', p.oid, 'EXECUTE') ORDER BY 1")
            .unwrap(),
            vec!["exactly.grant_usage(regrole)".to_string(), "exactly.set_shard(integer)".to_string()],
        ),
    );
    faults.check(
        "catalog: SELECT on every state table",
        same(
            "tables app cannot read",
            col(&mut admin, "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'exactly'::regnamespace
                 AND c.relkind IN ('r', 'p') AND NOT has_table_privilege('app', c.oid, 'SELECT') ORDER BY 1")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );

    let mut app = cluster.connect_as("app");
    let c = &mut app;
    for table in STATE_TABLES {
        faults.check(
            &format!("read exactly.{table}"),
            run(c, &format!("SELECT count(*) FROM exactly.{table}")).map(|_| ()),
        );
    }
    faults.check(
        "define_invoice_sequence",
        run(c, "SELECT exactly.define_invoice_sequence('t1', 'T', 4)").map(|_| ()),
    );
    faults.check(
        "next_invoice_number",
        one(c, "SELECT exactly.next_invoice_number('t1')")
            .and_then(|n| same("number", n, "T-0001".into())),
    );
    faults.check(
        "next_invoice_numbers",
        col(c, "SELECT * FROM exactly.next_invoice_numbers('t1', 2)")
            .and_then(|n| same("numbers", n, vec!["T-0002".into(), "T-0003".into()])),
    );
    faults.check(
        "next_invoice_number (new tenant)",
        one(c, "SELECT exactly.next_invoice_number('fresh')")
            .and_then(|n| same("number", n, "fresh-00000001".into())),
    );
    faults.check(
        "assign_invoice_number trigger on the app's own table",
        run(
            c,
            "CREATE TABLE shop.invoices (id bigserial PRIMARY KEY, tenant text, number text);
                CREATE TRIGGER n BEFORE INSERT ON shop.invoices FOR EACH ROW
                    EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number')",
        )
        .and_then(|_| {
            one(
                c,
                "INSERT INTO shop.invoices (tenant) VALUES ('t1') RETURNING number",
            )
        })
        .and_then(|n| same("number", n, "T-0004".into())),
    );
    let raffle = one(
        c,
        "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES (6, 8) RETURNING id",
    );
    faults.check(
        "insert a raffle (tickets_requested, code_length)",
        raffle.clone().map(|_| ()),
    );
    if let Ok(r) = raffle {
        faults.check(
            "batch_create_tickets",
            one(
                c,
                &format!("SELECT exactly.batch_create_tickets({r}, 4, 'job-1')"),
            )
            .and_then(|n| same("created", n, "4".into())),
        );
        faults.check(
            "batch_create_tickets (replay)",
            one(
                c,
                &format!("SELECT exactly.batch_create_tickets({r}, 4, 'job-1')"),
            )
            .and_then(|n| same("replayed", n, "4".into())),
        );
        faults.check(
            "batch_create_tickets (capped)",
            one(c, &format!("SELECT exactly.batch_create_tickets({r}, 4)"))
                .and_then(|n| same("created", n, "2".into())),
        );
    }
    faults.check(
        "purge_ticket_batches",
        one(c, "SELECT exactly.purge_ticket_batches('0 seconds')")
            .and_then(|n| same("purged", n, "1".into())),
    );
    faults.check(
        "insert an account (account, min_balance)",
        run(
            c,
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', 0)",
        )
        .map(|_| ()),
    );
    faults.check(
        "append_payment(amount)",
        one(c, "SELECT running_balance FROM exactly.append_payment(10)")
            .and_then(|n| same("rb", n, "10".into())),
    );
    faults.check(
        "append_payment",
        one(
            c,
            "SELECT running_balance FROM exactly.append_payment('alice', 5, 'idem-1')",
        )
        .and_then(|n| same("rb", n, "5".into())),
    );
    faults.check(
        "append_payment (replay)",
        one(
            c,
            "SELECT running_balance FROM exactly.append_payment('alice', 5, 'idem-1')",
        )
        .and_then(|n| same("rb", n, "5".into())),
    );
    faults.check(
        "append_payment below min_balance",
        refused(
            c,
            "SELECT * FROM exactly.append_payment('alice', -50)",
            "23514",
        ),
    );
    faults.check(
        "append_payments",
        col(
            c,
            "SELECT running_balance::float8 FROM exactly.append_payments('bob', '{1,2}')",
        )
        .and_then(|n| same("rb", n, vec!["1".into(), "3".into()])),
    );
    faults.check(
        "maintain_running_balance trigger on the app's own table",
        run(c, "CREATE TABLE shop.ledger (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric);
                CREATE TRIGGER l BEFORE INSERT OR UPDATE OR DELETE ON shop.ledger FOR EACH ROW
                    EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account')")
            .and_then(|_| col(c, "INSERT INTO shop.ledger (account, amount) VALUES ('a', 3), ('a', 4) RETURNING rb"))
            .and_then(|n| same("rb", n, vec!["3".into(), "7".into()])),
    );
    faults.check(
        "verify_ledger",
        col(
            c,
            "SELECT account || ':' || ok FROM exactly.verify_ledger() ORDER BY 1",
        )
        .and_then(|n| {
            same(
                "verify",
                n,
                vec![
                    "alice:true".into(),
                    "bob:true".into(),
                    "default:true".into(),
                ],
            )
        }),
    );
    faults.check(
        "verify_ledger(account)",
        one(c, "SELECT ok::text FROM exactly.verify_ledger('bob')")
            .and_then(|n| same("ok", n, "true".into())),
    );
    run(c, "CREATE TABLE shop.counters (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, value int NOT NULL DEFAULT 0);
            CREATE TABLE shop.jobs (id bigint PRIMARY KEY, done_at timestamptz);
            INSERT INTO shop.jobs SELECT g FROM generate_series(1, 5) g;")
    .unwrap();
    for table in ["shop.counters", "biz.counters"] {
        faults.check(
            &format!("find_or_create on {table} (create, find)"),
            col(c, &format!(r#"SELECT created::text FROM exactly.find_or_create('{table}', '{{"key": "a"}}')"#))
                .and_then(|n| same("created", n, vec!["true".into()]))
                .and_then(|_| col(c, &format!(r#"SELECT created::text FROM exactly.find_or_create('{table}', '{{"key": "a"}}')"#)))
                .and_then(|n| same("found", n, vec!["false".into()])),
        );
        faults.check(
            &format!("increment on {table} (create, add)"),
            one(
                c,
                &format!(r#"SELECT exactly.increment('{table}', '{{"key": "b"}}', 'value', 2)"#),
            )
            .and_then(|n| same("created", n, "2".into()))
            .and_then(|_| {
                one(
                    c,
                    &format!(r#"SELECT exactly.increment('{table}', '{{"key": "b"}}', 'value')"#),
                )
            })
            .and_then(|n| same("added", n, "3".into())),
        );
    }
    for table in ["shop.jobs", "biz.jobs"] {
        let cycle = (|| -> Result<(), String> {
            let first = col(
                c,
                &format!("SELECT claim FROM exactly.claim_batch('{table}', 'done_at', 2)"),
            )?;
            same("claimed", first.len(), 2)?;
            same(
                "extended",
                one(c, &format!("SELECT exactly.extend_claim('{}')", first[0]))?,
                "2".into(),
            )?;
            same(
                "completed",
                one(c, &format!("SELECT exactly.complete_batch('{}')", first[0]))?,
                "2".into(),
            )?;
            let second = col(
                c,
                &format!("SELECT claim FROM exactly.claim_batch('{table}', 'done_at', 2)"),
            )?;
            same("claimed", second.len(), 2)?;
            same(
                "released",
                one(c, &format!("SELECT exactly.release_claim('{}')", second[0]))?,
                "2".into(),
            )
        })();
        faults.check(
            &format!("claim_batch / extend_claim / complete_batch / release_claim on {table}"),
            cycle,
        );
    }
    let locks = (|| -> Result<(), String> {
        c.batch_execute("BEGIN").map_err(|e| describe(&e))?;
        run(c, "SELECT exactly.lock('app-lock', '1 second')")?;
        let held = one(c, "SELECT exactly.try_lock('app-lock')::text")?;
        let status = one(
            c,
            "SELECT granted::text FROM exactly.lock_status('app-lock')",
        )?;
        c.batch_execute("COMMIT").map_err(|e| describe(&e))?;
        same(
            "try_lock, lock_status",
            (held, status),
            ("true".into(), "true".into()),
        )
    })();
    if locks.is_err() {
        let _ = c.batch_execute("ROLLBACK");
    }
    faults.check("lock / try_lock / lock_status", locks);
    faults.finish();
}

/// Every direct write to every state table is refused with 42501 (and so are row locks and
/// strong table locks on them); only a new raffle's two columns and a new account's two
/// columns may be inserted.
#[test]
fn an_app_role_cannot_write_any_state_table_directly() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    let (raffle, claim) = some_state(&mut admin);
    grant_usage(&mut admin, "app", &mut faults);
    let before = snapshot(&mut admin, &[]);
    let mut app = cluster.connect_as("app");
    let r = &raffle;
    let inserts: Vec<(&str, String)> = vec![
        ("invoice_sequences", "INSERT INTO exactly.invoice_sequences (tenant, prefix, width, next_value) VALUES ('forged', 'F', 8, 1)".into()),
        ("raffles", "INSERT INTO exactly.raffles (tickets_requested, tickets_created) VALUES (10, 10)".into()),
        ("raffles", "INSERT INTO exactly.raffles (id, tickets_requested) OVERRIDING SYSTEM VALUE VALUES (999, 1)".into()),
        ("raffles", "INSERT INTO exactly.raffles (tickets_requested, created_at) VALUES (1, now())".into()),
        ("raffles", format!("INSERT INTO exactly.raffles (id, tickets_requested) OVERRIDING SYSTEM VALUE VALUES ({r}, 1) ON CONFLICT (id) DO UPDATE SET tickets_requested = 1000")),
        ("tickets", format!("INSERT INTO exactly.tickets (raffle_id, code) VALUES ({r}, 'FORGED000001')")),
        ("ticket_batches", format!("INSERT INTO exactly.ticket_batches (batch_key, raffle_id, n, created) VALUES ('forged', {r}, 5, 5)")),
        ("accounts", "INSERT INTO exactly.accounts (account, balance) VALUES ('rich', 1000000)".into()),
        ("accounts", "INSERT INTO exactly.accounts (account, entries) VALUES ('busy', 5)".into()),
        ("accounts", "INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', -1000000) ON CONFLICT (account) DO UPDATE SET min_balance = excluded.min_balance".into()),
        ("payments", "INSERT INTO exactly.payments (account, amount, running_balance) VALUES ('alice', 1000000, 1000100)".into()),
        ("table_balances", "INSERT INTO exactly.table_balances (rel, account, balance, entries) VALUES ('shop.ledger', 'y', 1000, 1)".into()),
        ("claims", "INSERT INTO exactly.claims (claim, rel, done_column, row_keys, leased_until) VALUES (gen_random_uuid(), 'shop.jobs', 'done_at', '{9,10}', now() + interval '1 hour')".into()),
        ("claim_attempts", "INSERT INTO exactly.claim_attempts (rel, row_key, failed_attempts, last_failed_at) VALUES ('shop.jobs', '9', 0, now())".into()),
    ];
    for (table, sql) in &inserts {
        faults.check(
            &format!("INSERT into {table}"),
            refused_in_txn(&mut app, sql, "42501"),
        );
    }
    let updates: &[(&str, &str)] = &[
        ("invoice_sequences", "next_value = 1"),
        ("invoice_sequences", "prefix = 'X'"),
        ("raffles", "tickets_created = 0"),
        ("raffles", "tickets_requested = 1000"),
        ("raffles", "code_length = 4"),
        ("tickets", "code = code || 'X'"),
        ("ticket_batches", "created = 0"),
        ("accounts", "balance = 1000000"),
        ("accounts", "min_balance = -1000000"),
        ("accounts", "entries = 0"),
        ("payments", "amount = 0"),
        ("payments", "running_balance = 0"),
        ("table_balances", "balance = 0"),
        ("claims", "leased_until = now() - interval '1 hour'"),
        ("claims", "row_keys = '{}'"),
        ("claim_attempts", "failed_attempts = 0"),
    ];
    for (table, set) in updates {
        faults.check(
            &format!("UPDATE {table} SET {set}"),
            refused_in_txn(
                &mut app,
                &format!("UPDATE exactly.{table} SET {set}"),
                "42501",
            ),
        );
    }
    for table in STATE_TABLES {
        for (what, sql) in [
            ("DELETE", format!("DELETE FROM exactly.{table}")),
            ("TRUNCATE", format!("TRUNCATE exactly.{table}")),
            (
                "SELECT FOR UPDATE",
                format!("SELECT * FROM exactly.{table} FOR UPDATE"),
            ),
            (
                "SELECT FOR SHARE",
                format!("SELECT * FROM exactly.{table} FOR KEY SHARE"),
            ),
            (
                "LOCK IN SHARE MODE",
                format!("LOCK TABLE exactly.{table} IN SHARE MODE"),
            ),
            (
                "LOCK IN ACCESS EXCLUSIVE MODE",
                format!("LOCK TABLE exactly.{table} IN ACCESS EXCLUSIVE MODE"),
            ),
        ] {
            faults.check(
                &format!("{what} {table}"),
                refused_in_txn(&mut app, &sql, "42501"),
            );
        }
    }
    for seq in ["payments_id_seq", "raffles_id_seq", "tickets_id_seq"] {
        faults.check(
            &format!("setval on exactly.{seq}"),
            refused_in_txn(
                &mut app,
                &format!("SELECT setval('exactly.{seq}', 1)"),
                "42501",
            ),
        );
    }
    faults.check(
        "state after the refused writes",
        unchanged(&mut admin, &before, &[]),
    );
    faults.check(
        "the live claim still completes",
        one(
            &mut admin,
            &format!("SELECT exactly.complete_batch('{claim}')"),
        )
        .and_then(|n| same("completed", n, "2".into())),
    );
    // the documented inserts work
    faults.check(
        "INSERT INTO raffles (tickets_requested, code_length)",
        run(&mut app, "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES (5, 8) RETURNING id").map(|_| ()),
    );
    faults.check(
        "INSERT INTO raffles (tickets_requested)",
        run(
            &mut app,
            "INSERT INTO exactly.raffles (tickets_requested) VALUES (5)",
        )
        .map(|_| ()),
    );
    faults.check(
        "INSERT INTO accounts (account, min_balance)",
        run(
            &mut app,
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('carol', 0)",
        )
        .map(|_| ()),
    );
    faults.check(
        "INSERT INTO accounts (account)",
        run(
            &mut app,
            "INSERT INTO exactly.accounts (account) VALUES ('dave')",
        )
        .map(|_| ()),
    );
    faults.check(
        "INSERT INTO accounts ... ON CONFLICT DO NOTHING",
        run(&mut app, "INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', -5) ON CONFLICT DO NOTHING").map(|_| ()),
    );
    faults.check(
        "accounts after the allowed inserts",
        col(&mut admin, "SELECT account || ':' || balance || ':' || entries || ':' || coalesce(min_balance::text, '-') FROM exactly.accounts ORDER BY 1")
            .and_then(|rows| same("accounts", rows, vec!["alice:100:1:0".into(), "bob:11:2:-".into(), "carol:0:0:0".into(), "dave:0:0:-".into()])),
    );
    faults.finish();
}

/// No trigger, rule, policy, index, column, foreign key, inheritance, grant or ownership
/// change on the state tables; no object in schema `exactly`; no change to its functions
/// or to the extension.
#[test]
fn an_app_role_cannot_create_triggers_rules_policies_or_objects_on_state_tables() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    some_state(&mut admin);
    grant_usage(&mut admin, "app", &mut faults);
    let mut app = cluster.connect_as("app");
    run(
        &mut app,
        "CREATE FUNCTION shop.sneak() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
    )
    .unwrap();
    // (table, a column of it, single-column key and its type if any)
    let tables: &[(&str, &str, Option<(&str, &str)>)] = &[
        ("invoice_sequences", "tenant", Some(("tenant", "text"))),
        ("raffles", "id", Some(("id", "bigint"))),
        ("tickets", "code", Some(("code", "text"))),
        ("ticket_batches", "batch_key", Some(("batch_key", "text"))),
        ("accounts", "account", Some(("account", "text"))),
        ("payments", "id", Some(("id", "bigint"))),
        ("table_balances", "account", None),
        ("claims", "claim", Some(("claim", "uuid"))),
        ("claim_attempts", "row_key", None),
    ];
    for (table, column, key) in tables {
        let t = format!("exactly.{table}");
        let mut attempts = vec![
            ("CREATE TRIGGER", format!("CREATE TRIGGER sneak BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION shop.sneak()")),
            ("CREATE TRIGGER (statement)", format!("CREATE TRIGGER sneak AFTER TRUNCATE ON {t} EXECUTE FUNCTION shop.sneak()")),
            ("CREATE RULE", format!("CREATE RULE sneak AS ON INSERT TO {t} DO ALSO NOTIFY sneak")),
            ("CREATE RULE (instead)", format!("CREATE RULE sneak AS ON UPDATE TO {t} DO INSTEAD NOTHING")),
            ("CREATE POLICY", format!("CREATE POLICY sneak ON {t} USING (true)")),
            ("ENABLE ROW LEVEL SECURITY", format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY")),
            ("DISABLE TRIGGER ALL", format!("ALTER TABLE {t} DISABLE TRIGGER ALL")),
            ("ADD COLUMN", format!("ALTER TABLE {t} ADD COLUMN sneak int")),
            ("ADD CHECK", format!("ALTER TABLE {t} ADD CHECK ({column} IS NOT NULL)")),
            ("CREATE INDEX", format!("CREATE INDEX sneak ON {t} ({column})")),
            ("REINDEX", format!("REINDEX TABLE {t}")),
            ("COMMENT", format!("COMMENT ON TABLE {t} IS 'sneak'")),
            ("OWNER TO", format!("ALTER TABLE {t} OWNER TO app")),
            ("DROP TABLE", format!("DROP TABLE {t}")),
            ("INHERITS", format!("CREATE TABLE shop.sneak_child () INHERITS ({t})")),
        ];
        if let Some((key, ty)) = key {
            attempts.push((
                "REFERENCES",
                format!("CREATE TABLE shop.sneak_fk (x {ty} REFERENCES {t} ({key}))"),
            ));
        }
        for (what, sql) in attempts {
            faults.check(
                &format!("{what} on {table}"),
                refused_in_txn(&mut app, &sql, "42501"),
            );
        }
        // GRANT without the grant option grants nothing (a warning, not an error)
        let _ = raw(
            &mut app,
            &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO other"),
        );
        faults.check(
            &format!("GRANT on {table} to another role"),
            same(
                "other's privileges",
                one(&mut admin, &format!(
                    "SELECT has_table_privilege('other', '{t}', 'SELECT')::text || has_table_privilege('other', '{t}', 'INSERT')::text
                            || has_table_privilege('other', '{t}', 'UPDATE')::text || has_table_privilege('other', '{t}', 'DELETE')::text"))
                .unwrap(),
                "falsefalsefalsefalse".into(),
            ),
        );
    }
    let schema_attempts = [
        ("CREATE FUNCTION in exactly", "CREATE FUNCTION exactly.sneak() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
        ("CREATE FUNCTION now() in exactly", "CREATE FUNCTION exactly.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT pg_catalog.now()'"),
        ("CREATE OPERATOR in exactly", "CREATE OPERATOR exactly.= (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_catalog.texteq)"),
        ("CREATE TABLE in exactly", "CREATE TABLE exactly.sneak (x int)"),
        ("CREATE VIEW in exactly", "CREATE VIEW exactly.sneak AS SELECT 1 AS x"),
        ("CREATE DOMAIN in exactly", "CREATE DOMAIN exactly.text AS pg_catalog.text"),
        ("CREATE TYPE in exactly", "CREATE TYPE exactly.sneak AS (x int)"),
        ("CREATE OR REPLACE a pg_exactly function", "CREATE OR REPLACE FUNCTION exactly.next_invoice_number(tenant text) RETURNS text LANGUAGE sql AS 'SELECT ''forged'''"),
        ("ALTER FUNCTION ... SET search_path", "ALTER FUNCTION exactly.next_invoice_number(text, date) SET search_path = public"),
        ("ALTER FUNCTION ... SECURITY DEFINER", "ALTER FUNCTION exactly.find_or_create(regclass, jsonb, jsonb) SECURITY DEFINER"),
        ("ALTER FUNCTION ... OWNER", "ALTER FUNCTION exactly.lock(text, interval) OWNER TO app"),
        ("DROP FUNCTION", "DROP FUNCTION exactly.try_lock(text)"),
        ("ALTER SCHEMA exactly RENAME", "ALTER SCHEMA exactly RENAME TO sneak"),
        ("DROP SCHEMA exactly", "DROP SCHEMA exactly CASCADE"),
        ("ALTER EXTENSION UPDATE", "ALTER EXTENSION pg_exactly UPDATE"),
        ("ALTER EXTENSION ADD", "ALTER EXTENSION pg_exactly ADD FUNCTION shop.sneak()"),
        ("DROP EXTENSION", "DROP EXTENSION pg_exactly"),
    ];
    for (what, sql) in schema_attempts {
        faults.check(what, refused_in_txn(&mut app, sql, "42501"));
    }
    let _ = raw(
        &mut app,
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly TO other",
    );
    let _ = raw(&mut app, "GRANT USAGE ON SCHEMA exactly TO other");
    faults.check(
        "GRANT EXECUTE / USAGE to another role",
        same(
            "what other got",
            col(&mut admin, "SELECT 'schema' WHERE has_schema_privilege('other', 'exactly', 'USAGE')
                             UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc p
                              WHERE p.pronamespace = 'exactly'::regnamespace AND has_function_privilege('other', p.oid, 'EXECUTE')
                                AND NOT has_function_privilege('public', p.oid, 'EXECUTE')")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );
    faults.check(
        "state tables have no trigger, rule or policy of the app",
        same(
            "objects",
            col(&mut admin, "SELECT tgname::text FROM pg_trigger WHERE tgname = 'sneak'
                             UNION ALL SELECT rulename::text FROM pg_rewrite WHERE rulename = 'sneak'
                             UNION ALL SELECT polname::text FROM pg_policy WHERE polname = 'sneak'
                             UNION ALL SELECT proname::text FROM pg_proc WHERE proname = 'sneak' AND pronamespace = 'exactly'::regnamespace")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );
    faults.finish();
}

/// Realistic forgeries: take over another worker's claim, rewind an invoice counter, rewrite
/// balances, ledger entries, tickets_created and batch keys — directly, and through
/// find_or_create / increment pointed at the state tables. All refused (42501); afterwards
/// the state is unchanged and the functions still give the right answers.
#[test]
fn an_app_role_cannot_forge_claims_or_rewrite_state_even_through_the_functions() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    let (raffle, claim) = some_state(&mut admin);
    grant_usage(&mut admin, "app", &mut faults);
    let before = snapshot(&mut admin, &["shop.jobs", "shop.ledger"]);
    let mut app = cluster.connect_as("app");
    let r = &raffle;
    let attempts: Vec<(&str, String)> = vec![
        ("delete another worker's claim", format!("DELETE FROM exactly.claims WHERE claim = '{claim}'")),
        ("expire another worker's claim", format!("UPDATE exactly.claims SET leased_until = now() - interval '1 hour' WHERE claim = '{claim}'")),
        ("move another worker's claim to new rows", format!("UPDATE exactly.claims SET row_keys = '{{5,6}}' WHERE claim = '{claim}'")),
        ("forge a claim on pending rows", "INSERT INTO exactly.claims (claim, rel, done_column, row_keys, leased_until, claimed_at) VALUES (gen_random_uuid(), 'shop.jobs', 'done_at', '{5,6,7}', now() + interval '1 hour', now())".into()),
        ("reset failed attempts", "UPDATE exactly.claim_attempts SET failed_attempts = 0".into()),
        ("delete failed attempts", "DELETE FROM exactly.claim_attempts".into()),
        ("rewind an invoice counter", "UPDATE exactly.invoice_sequences SET next_value = 1 WHERE tenant = 'eu'".into()),
        ("rewrite a payment", "UPDATE exactly.payments SET amount = 1000000, running_balance = 1000000 WHERE account = 'alice'".into()),
        ("delete a payment", "DELETE FROM exactly.payments WHERE account = 'bob'".into()),
        ("rewrite a balance", "UPDATE exactly.accounts SET balance = 1000000 WHERE account = 'alice'".into()),
        ("lower a min_balance", "UPDATE exactly.accounts SET min_balance = -1000000 WHERE account = 'alice'".into()),
        ("rewrite a user ledger's balance", "UPDATE exactly.table_balances SET balance = 0".into()),
        ("reset tickets_created", format!("UPDATE exactly.raffles SET tickets_created = 0 WHERE id = {r}")),
        ("raise tickets_requested", format!("UPDATE exactly.raffles SET tickets_requested = 1000000 WHERE id = {r}")),
        ("delete a batch key", "DELETE FROM exactly.ticket_batches WHERE batch_key = 'k1'".into()),
        ("rewrite a batch key", "UPDATE exactly.ticket_batches SET created = 0".into()),
        ("delete tickets", format!("DELETE FROM exactly.tickets WHERE raffle_id = {r}")),
        ("increment an invoice counter backwards", r#"SELECT exactly.increment('exactly.invoice_sequences', '{"tenant": "eu"}', 'next_value', -3)"#.into()),
        ("increment a balance", r#"SELECT exactly.increment('exactly.accounts', '{"account": "alice"}', 'balance', 1000000)"#.into()),
        ("increment a raffle's request", format!(r#"SELECT exactly.increment('exactly.raffles', '{{"id": {r}}}', 'tickets_requested', 1000)"#)),
        ("increment tickets_created backwards", format!(r#"SELECT exactly.increment('exactly.raffles', '{{"id": {r}}}', 'tickets_created', -4)"#)),
        ("create an account with a balance", r#"SELECT * FROM exactly.find_or_create('exactly.accounts', '{"account": "mallory"}', '{"balance": 1000000, "entries": 0}')"#.into()),
        ("forge a batch key", format!(r#"SELECT * FROM exactly.find_or_create('exactly.ticket_batches', '{{"batch_key": "forged"}}', '{{"raffle_id": {r}, "n": 5, "created": 5}}')"#)),
        ("forge an invoice counter", r#"SELECT * FROM exactly.find_or_create('exactly.invoice_sequences', '{"tenant": "forged"}', '{"prefix": "F", "next_value": 100}')"#.into()),
        ("forge a claim through find_or_create", r#"SELECT * FROM exactly.find_or_create('exactly.claims', '{"claim": "6f1c7a4e-1111-4a4a-8888-000000000001"}', '{"rel": "shop.jobs", "done_column": "done_at", "row_keys": "{5,6}", "leased_until": "2100-01-01", "claimed_at": "2000-01-01"}')"#.into()),
        ("forge a payment through find_or_create", r#"SELECT * FROM exactly.find_or_create('exactly.table_balances', '{"rel": "shop.ledger", "account": "z"}', '{"balance": 99, "entries": 1}')"#.into()),
    ];
    for (what, sql) in &attempts {
        faults.check(what, refused_in_txn(&mut app, sql, "42501"));
    }
    faults.check(
        "state after the forgeries",
        unchanged(&mut admin, &before, &["shop.jobs", "shop.ledger"]),
    );
    // the functions still give the right answers
    faults.check(
        "the worker completes its claim",
        one(
            &mut admin,
            &format!("SELECT exactly.complete_batch('{claim}')"),
        )
        .and_then(|n| same("completed", n, "2".into())),
    );
    faults.check(
        "the next invoice number continues",
        one(&mut app, "SELECT exactly.next_invoice_number('eu')")
            .and_then(|n| same("number", n, "EU-0004".into())),
    );
    faults.check(
        "a batch key replays",
        one(
            &mut app,
            &format!("SELECT exactly.batch_create_tickets({r}, 4, 'k1')"),
        )
        .and_then(|n| same("replayed", n, "4".into())),
    );
    faults.check(
        "tickets",
        one(&mut admin, &format!("SELECT tickets_created || '/' || (SELECT count(*) FROM exactly.tickets WHERE raffle_id = {r}) FROM exactly.raffles WHERE id = {r}"))
            .and_then(|n| same("tickets_created/rows", n, "4/4".into())),
    );
    faults.check(
        "verify_ledger",
        col(
            &mut app,
            "SELECT account || ':' || ok FROM exactly.verify_ledger() ORDER BY 1",
        )
        .and_then(|n| same("verify", n, vec!["alice:true".into(), "bob:true".into()])),
    );
    faults.check(
        "the user ledger continues",
        one(
            &mut app,
            "INSERT INTO shop.ledger (account, amount) VALUES ('x', 1) RETURNING rb",
        )
        .and_then(|n| same("rb", n, "16".into())),
    );
    faults.finish();
}

/// Without grant_usage: 42501 from every function, with or without USAGE on the schema, and
/// PUBLIC holds no EXECUTE on any function and no privilege on any relation of `exactly`.
#[test]
fn a_role_without_grant_usage_gets_42501_from_every_function() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    let (raffle, claim) = some_state(&mut admin);
    admin
        .batch_execute(
            "CREATE ROLE stranger LOGIN;
             GRANT USAGE ON SCHEMA shop TO stranger;
             GRANT ALL ON ALL TABLES IN SCHEMA shop TO stranger;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA shop TO stranger;
             CREATE TABLE shop.counters (id bigserial PRIMARY KEY, key text UNIQUE, value int DEFAULT 0);
             GRANT ALL ON shop.counters, shop.counters_id_seq TO stranger;",
        )
        .unwrap();
    let before = snapshot(&mut admin, &["shop.jobs", "shop.counters"]);
    let r = &raffle;
    let calls: Vec<String> = vec![
        "SELECT exactly.define_invoice_sequence('s', 'S', 4)".into(),
        "SELECT exactly.next_invoice_number('eu')".into(),
        "SELECT * FROM exactly.next_invoice_numbers('eu', 2)".into(),
        format!("SELECT exactly.batch_create_tickets({r}, 1)"),
        "SELECT exactly.purge_ticket_batches('0 seconds')".into(),
        "SELECT * FROM exactly.append_payment(1)".into(),
        "SELECT * FROM exactly.append_payment('alice', 1)".into(),
        "SELECT * FROM exactly.append_payments('alice', '{1}')".into(),
        "SELECT * FROM exactly.verify_ledger()".into(),
        "SELECT * FROM exactly.verify_ledger('alice')".into(),
        r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"key": "s"}')"#.into(),
        r#"SELECT exactly.increment('shop.counters', '{"key": "s"}', 'value')"#.into(),
        "SELECT exactly.lock('s')".into(),
        "SELECT exactly.try_lock('s')".into(),
        "SELECT * FROM exactly.lock_status('s')".into(),
        "SELECT * FROM exactly.claim_batch('shop.jobs', 'done_at')".into(),
        format!("SELECT exactly.complete_batch('{claim}')"),
        format!("SELECT exactly.extend_claim('{claim}')"),
        format!("SELECT exactly.release_claim('{claim}')"),
        "SELECT exactly.grant_usage('stranger')".into(),
    ];
    let mut stranger = cluster.connect_as("stranger");
    for sql in &calls {
        faults.check(
            &format!("without USAGE on the schema: {sql}"),
            refused_in_txn(&mut stranger, sql, "42501"),
        );
    }
    // a DBA grants USAGE on the schema (for some other reason): the functions still refuse
    admin
        .batch_execute("GRANT USAGE ON SCHEMA exactly TO stranger")
        .unwrap();
    for sql in &calls {
        faults.check(
            &format!("with USAGE on the schema: {sql}"),
            refused_in_txn(&mut stranger, sql, "42501"),
        );
    }
    for table in STATE_TABLES {
        faults.check(
            &format!("with USAGE on the schema: read exactly.{table}"),
            refused(
                &mut stranger,
                &format!("SELECT count(*) FROM exactly.{table}"),
                "42501",
            ),
        );
    }
    faults.check(
        "catalog: PUBLIC holds EXECUTE on",
        same(
            "functions",
            col(&mut admin, "SELECT p.oid::regprocedure::text FROM pg_proc p
                  WHERE p.pronamespace = 'exactly'::regnamespace
                    AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))
                  ORDER BY 1")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );
    faults.check(
        "catalog: PUBLIC holds privileges on",
        same(
            "relations",
            col(&mut admin, "SELECT c.oid::regclass::text || ' ' || a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
                  WHERE c.relnamespace = 'exactly'::regnamespace AND a.grantee = 0 ORDER BY 1")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );
    faults.check(
        "state",
        unchanged(&mut admin, &before, &["shop.jobs", "shop.counters"]),
    );
    faults.finish();
}

/// grant_usage is for a superuser or the extension's owner: an app role, a CREATEROLE role
/// and a role without privileges all get 42501, and the role named gets nothing; GRANT
/// statements by the app role pass nothing on either. The superuser's call works.
#[test]
fn grant_usage_is_refused_to_roles_that_are_neither_superuser_nor_owner() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    admin
        .batch_execute("CREATE ROLE manager LOGIN CREATEROLE; CREATE ROLE third LOGIN;")
        .unwrap();
    grant_usage(&mut admin, "app", &mut faults);
    grant_usage(&mut admin, "manager", &mut faults);
    for (caller, target) in [
        ("app", "other"),
        ("app", "app"),
        ("manager", "other"),
        ("manager", "manager"),
        ("other", "other"),
    ] {
        let mut c = cluster.connect_as(caller);
        faults.check(
            &format!("grant_usage('{target}') as {caller}"),
            refused_in_txn(
                &mut c,
                &format!("SELECT exactly.grant_usage('{target}')"),
                "42501",
            ),
        );
    }
    let mut app = cluster.connect_as("app");
    let _ = raw(
        &mut app,
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly TO other",
    );
    let _ = raw(
        &mut app,
        "GRANT SELECT ON ALL TABLES IN SCHEMA exactly TO other",
    );
    let _ = raw(&mut app, "GRANT USAGE ON SCHEMA exactly TO other");
    faults.check(
        "what `other` got",
        same(
            "privileges",
            col(&mut admin, "SELECT 'USAGE on exactly' WHERE has_schema_privilege('other', 'exactly', 'USAGE')
                 UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'exactly'::regnamespace
                   AND has_function_privilege('other', p.oid, 'EXECUTE') AND NOT has_function_privilege('public', p.oid, 'EXECUTE')
                 UNION ALL SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'exactly'::regnamespace
                   AND c.relkind = 'r' AND has_table_privilege('other', c.oid, 'SELECT')")
            .unwrap(),
            Vec::<String>::new(),
        ),
    );
    let mut other = cluster.connect_as("other");
    faults.check(
        "other calls a function",
        refused(
            &mut other,
            "SELECT exactly.next_invoice_number('x')",
            "42501",
        ),
    );
    // the superuser's grant works, twice
    faults.check(
        "grant_usage('third') as superuser",
        run(&mut admin, "SELECT exactly.grant_usage('third')").map(|_| ()),
    );
    faults.check(
        "grant_usage('third') again",
        run(&mut admin, "SELECT exactly.grant_usage('third')").map(|_| ()),
    );
    let mut third = cluster.connect_as("third");
    faults.check(
        "third, given grant_usage, draws a number",
        one(&mut third, "SELECT exactly.next_invoice_number('x')")
            .and_then(|n| same("number", n, "x-00000001".into())),
    );
    faults.check(
        "no role was made superuser",
        same(
            "superusers",
            col(
                &mut admin,
                "SELECT rolname::text FROM pg_roles WHERE rolsuper ORDER BY 1",
            )
            .unwrap(),
            vec!["postgres".to_string()],
        ),
    );
    faults.finish();
}

/// find_or_create / increment / claim_batch / complete_batch touch a user table with the
/// caller's privileges: a table app has no rights on, read-only rights, no UPDATE, column
/// privileges that hide a column, another worker's claim on a table app may only read,
/// and lock_status does not show other roles' query text. 42501 and nothing changed.
#[test]
fn the_functions_use_the_callers_privileges_on_user_tables() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    grant_usage(&mut admin, "app", &mut faults);
    admin
        .batch_execute(
            "SET ROLE owner_role;
             CREATE TABLE biz.secret (id bigserial PRIMARY KEY, key text UNIQUE, value int DEFAULT 0, done_at timestamptz);
             CREATE TABLE biz.readonly (LIKE biz.secret INCLUDING ALL);
             CREATE TABLE biz.noupdate (LIKE biz.secret INCLUDING ALL);
             INSERT INTO biz.secret (key) VALUES ('s1');
             INSERT INTO biz.readonly (key) VALUES ('r1');
             INSERT INTO biz.noupdate (key) VALUES ('n1');
             GRANT SELECT ON biz.readonly TO app;
             GRANT SELECT, INSERT ON biz.noupdate TO app;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA biz TO app;
             CREATE TABLE biz.colpriv (id bigserial PRIMARY KEY, key text UNIQUE, value int DEFAULT 0,
                 hidden text DEFAULT 'hidden', hidden_count int DEFAULT 0, done_at timestamptz);
             INSERT INTO biz.colpriv (key) VALUES ('c1');
             GRANT SELECT (id, key, value, hidden_count, done_at), INSERT (key, value), UPDATE (value, done_at) ON biz.colpriv TO app;
             GRANT USAGE ON SEQUENCE biz.colpriv_id_seq TO app;
             CREATE TABLE biz.jobs_ro (id bigint PRIMARY KEY, done_at timestamptz);
             INSERT INTO biz.jobs_ro SELECT g FROM generate_series(1, 5) g;
             GRANT SELECT ON biz.jobs_ro TO app;
             RESET ROLE;",
        )
        .unwrap();
    let worker_claim = one(
        &mut admin,
        "SELECT DISTINCT claim FROM exactly.claim_batch('biz.jobs_ro', 'done_at', 2)",
    )
    .unwrap();
    let tables = [
        "biz.secret",
        "biz.readonly",
        "biz.noupdate",
        "biz.colpriv",
        "biz.jobs_ro",
    ];
    let before = snapshot(&mut admin, &tables);
    let mut app = cluster.connect_as("app");
    let attempts: Vec<(&str, String)> = vec![
        ("no rights: find an existing key", r#"SELECT * FROM exactly.find_or_create('biz.secret', '{"key": "s1"}')"#.into()),
        ("no rights: create a key", r#"SELECT * FROM exactly.find_or_create('biz.secret', '{"key": "s2"}')"#.into()),
        ("no rights: increment an existing key", r#"SELECT exactly.increment('biz.secret', '{"key": "s1"}', 'value')"#.into()),
        ("no rights: increment a new key", r#"SELECT exactly.increment('biz.secret', '{"key": "s3"}', 'value')"#.into()),
        ("no rights: claim_batch", "SELECT * FROM exactly.claim_batch('biz.secret', 'done_at')".into()),
        ("SELECT only: create a key", r#"SELECT * FROM exactly.find_or_create('biz.readonly', '{"key": "r2"}')"#.into()),
        ("SELECT only: increment an existing key", r#"SELECT exactly.increment('biz.readonly', '{"key": "r1"}', 'value')"#.into()),
        ("SELECT only: increment a new key", r#"SELECT exactly.increment('biz.readonly', '{"key": "r3"}', 'value')"#.into()),
        ("SELECT only: claim_batch", "SELECT * FROM exactly.claim_batch('biz.readonly', 'done_at')".into()),
        ("no UPDATE: increment an existing key", r#"SELECT exactly.increment('biz.noupdate', '{"key": "n1"}', 'value')"#.into()),
        ("no UPDATE: claim_batch", "SELECT * FROM exactly.claim_batch('biz.noupdate', 'done_at')".into()),
        ("hidden column: find an existing key (its row shows the column)", r#"SELECT * FROM exactly.find_or_create('biz.colpriv', '{"key": "c1"}')"#.into()),
        ("hidden column: create a key (its row shows the column)", r#"SELECT * FROM exactly.find_or_create('biz.colpriv', '{"key": "c2"}')"#.into()),
        ("hidden column: set it through defaults", r#"SELECT * FROM exactly.find_or_create('biz.colpriv', '{"key": "c3"}', '{"hidden": "mine"}')"#.into()),
        ("hidden column: increment a column without UPDATE", r#"SELECT exactly.increment('biz.colpriv', '{"key": "c1"}', 'hidden_count')"#.into()),
        ("hidden column: claim_batch (its rows show the column)", "SELECT * FROM exactly.claim_batch('biz.colpriv', 'done_at')".into()),
        ("read-only table: complete another worker's claim", format!("SELECT exactly.complete_batch('{worker_claim}')")),
    ];
    for (what, sql) in &attempts {
        faults.check(what, refused_in_txn(&mut app, sql, "42501"));
    }
    faults.check(
        "user tables and state after the refusals",
        unchanged(&mut admin, &before, &tables),
    );
    faults.check(
        "the worker's claim is intact",
        one(
            &mut admin,
            &format!("SELECT exactly.complete_batch('{worker_claim}')"),
        )
        .and_then(|n| same("completed", n, "2".into())),
    );
    // lock_status shows another role's query text no more than pg_stat_activity does
    let mut holder = cluster.connect();
    holder
        .batch_execute(
            "BEGIN; SELECT exactly.lock('secret-lock'); SELECT 'TOPSECRET payroll query'",
        )
        .unwrap();
    faults.check(
        "lock_status: another role's query text",
        run(
            &mut app,
            "SELECT query FROM exactly.lock_status('secret-lock')",
        )
        .and_then(|rows| {
            let leaked: Vec<_> = rows
                .iter()
                .filter(|r| r[0].as_deref().unwrap_or("").contains("TOPSECRET"))
                .collect();
            same("rows showing the holder's query", leaked.len(), 0)
        }),
    );
    holder.batch_execute("COMMIT").unwrap();
    faults.check(
        "app's standing",
        same(
            "app",
            standing(&mut admin, "app"),
            "super=false member_of=".into(),
        ),
    );
    faults.finish();
}

/// `biz.rls`, owned by owner_role, with a policy that shows each role its own rows: app's
/// a1, a2 and other's o1, o2. app and owner_role are given grant_usage.
fn rls_table(admin: &mut Client, faults: &mut Faults) {
    grant_usage(admin, "app", faults);
    grant_usage(admin, "owner_role", faults);
    admin
        .batch_execute(
            "SET ROLE owner_role;
             CREATE TABLE biz.rls (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE,
                 owner_name text NOT NULL DEFAULT current_user, value int NOT NULL DEFAULT 0, done_at timestamptz);
             INSERT INTO biz.rls (key, owner_name) VALUES ('a1', 'app'), ('a2', 'app'), ('o1', 'other'), ('o2', 'other');
             ALTER TABLE biz.rls ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON biz.rls USING (owner_name = current_user) WITH CHECK (owner_name = current_user);
             GRANT SELECT, INSERT, UPDATE, DELETE ON biz.rls TO app, other;
             GRANT USAGE ON SEQUENCE biz.rls_id_seq TO app, other;
             RESET ROLE;",
        )
        .unwrap();
}

const RLS_HIDDEN_ROWS: &str = "SELECT string_agg(key || ':' || value || ':' || (done_at IS NOT NULL), ' ' ORDER BY key) FROM biz.rls WHERE owner_name = 'other'";

/// Contract point 7: the row exists but the caller's policy hides it — find_or_create gets
/// 42501 (not 40001, not a duplicate), at READ COMMITTED and at REPEATABLE READ, and creates
/// nothing.
#[test]
fn a_key_hidden_by_rls_gets_42501_from_find_or_create_not_40001() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    rls_table(&mut admin, &mut faults);
    let hidden_before = one(&mut admin, RLS_HIDDEN_ROWS).unwrap();
    let mut app = cluster.connect_as("app");
    faults.check(
        "find_or_create of a key hidden by RLS",
        refused_in_txn(
            &mut app,
            r#"SELECT * FROM exactly.find_or_create('biz.rls', '{"key": "o1"}')"#,
            "42501",
        ),
    );
    faults.check(
        "find_or_create of a key hidden by RLS, with defaults",
        refused_in_txn(
            &mut app,
            r#"SELECT * FROM exactly.find_or_create('biz.rls', '{"key": "o2"}', '{"value": 5}')"#,
            "42501",
        ),
    );
    faults.check(
        "find_or_create of a key hidden by RLS, at REPEATABLE READ",
        (|| {
            app.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .map_err(|e| describe(&e))?;
            let r = refused(
                &mut app,
                r#"SELECT * FROM exactly.find_or_create('biz.rls', '{"key": "o2"}')"#,
                "42501",
            );
            app.batch_execute("ROLLBACK").map_err(|e| describe(&e))?;
            r
        })(),
    );
    faults.check(
        "rows after",
        same(
            "hidden rows, row count",
            (
                one(&mut admin, RLS_HIDDEN_ROWS).unwrap(),
                one(&mut admin, "SELECT count(*)::text FROM biz.rls").unwrap(),
            ),
            (hidden_before, "4".into()),
        ),
    );
    faults.finish();
}

/// Row-level security holds through the functions: increment of a key hidden by the
/// caller's policy gets 42501 and changes nothing, WITH CHECK holds for created rows,
/// visible keys work, claim_batch hands out only visible rows, and completing a claim
/// (even one made by the table's owner) never marks rows the caller cannot see.
#[test]
fn row_level_security_holds_through_the_functions() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    rls_table(&mut admin, &mut faults);
    let hidden = RLS_HIDDEN_ROWS;
    let hidden_before = one(&mut admin, hidden).unwrap();
    let mut app = cluster.connect_as("app");
    faults.check(
        "find_or_create of a new key whose defaults fail WITH CHECK",
        refused_in_txn(&mut app, r#"SELECT * FROM exactly.find_or_create('biz.rls', '{"key": "x9"}', '{"owner_name": "other"}')"#, "42501"),
    );
    faults.check(
        "increment of a key hidden by RLS",
        refused_in_txn(
            &mut app,
            r#"SELECT exactly.increment('biz.rls', '{"key": "o1"}', 'value', 100)"#,
            "42501",
        ),
    );
    faults.check(
        "find_or_create of a visible key",
        col(
            &mut app,
            r#"SELECT created::text FROM exactly.find_or_create('biz.rls', '{"key": "a1"}')"#,
        )
        .and_then(|n| same("created", n, vec!["false".into()])),
    );
    faults.check(
        "find_or_create of a new key",
        run(&mut app, r#"SELECT data::text, created::text FROM exactly.find_or_create('biz.rls', '{"key": "a3"}')"#).and_then(|rows| {
            let data = json(rows.first().and_then(|r| r[0].as_deref()).unwrap_or("null"))?;
            same("owner, created", (data["owner_name"].clone(), rows[0][1].clone()), (serde_json::json!("app"), Some("true".into())))
        }),
    );
    faults.check(
        "increment of a visible key",
        one(
            &mut app,
            r#"SELECT exactly.increment('biz.rls', '{"key": "a1"}', 'value')"#,
        )
        .and_then(|n| same("value", n, "1".into())),
    );
    faults.check(
        "claim_batch hands out only visible rows; complete_batch marks them",
        (|| {
            let rows = run(&mut app, "SELECT claim::text, data->>'key' FROM exactly.claim_batch('biz.rls', 'done_at', 100)")?;
            let mut keys: Vec<String> = rows.iter().map(|r| r[1].clone().unwrap_or_default()).collect();
            keys.sort();
            same("claimed keys", keys, vec!["a1".to_string(), "a2".into(), "a3".into()])?;
            same("completed", one(&mut app, &format!("SELECT exactly.complete_batch('{}')", rows[0][0].clone().unwrap_or_default()))?, "3".into())
        })(),
    );
    // owner_role bypasses RLS (it owns the table): its claim holds the hidden rows
    admin.batch_execute("SET ROLE owner_role").unwrap();
    let owners_claim = one(
        &mut admin,
        "SELECT DISTINCT claim FROM exactly.claim_batch('biz.rls', 'done_at', 100)",
    );
    admin.batch_execute("RESET ROLE").unwrap();
    if let Ok(claim) = owners_claim {
        let _ = raw(
            &mut app,
            &format!("SELECT exactly.complete_batch('{claim}')"),
        );
        faults.check(
            "hidden rows after app completed the owner's claim",
            same(
                "hidden rows",
                one(&mut admin, hidden).unwrap(),
                hidden_before.clone(),
            ),
        );
    } else {
        faults.check("owner's claim", owners_claim.map(|_| ()));
    }
    faults.check(
        "hidden rows and row count",
        same(
            "rows",
            (
                one(&mut admin, hidden).unwrap(),
                one(&mut admin, "SELECT count(*)::text FROM biz.rls").unwrap(),
            ),
            (hidden_before, "5".into()),
        ),
    );
    faults.finish();
}

/// The user's code around a table — column defaults, a domain's CHECK, a table CHECK, BEFORE
/// and AFTER triggers, RLS policies (USING and WITH CHECK), an expression index — runs as
/// the caller when a pg_exactly function touches the table, never as the extension's owner:
/// every probe records current_user = session_user = app, and its `ALTER ROLE app SUPERUSER`
/// / `GRANT postgres TO app` fail. The twin at the end calls the same functions through a
/// SECURITY DEFINER wrapper owned by postgres (what a naive 0.3 would be) and asserts the
/// probes catch it.
#[test]
fn user_table_triggers_defaults_checks_and_policies_run_as_the_caller() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    grant_usage(&mut admin, "app", &mut faults);
    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = notices.clone();
    let mut config = cluster.config_as("app");
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut app = config.connect(NoTls).unwrap();
    app.batch_execute(
        r#"
        CREATE TABLE shop.probe_log (what text, cur text, sess text);
        GRANT INSERT ON shop.probe_log TO PUBLIC;
        CREATE FUNCTION shop.probe(what text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO shop.probe_log VALUES (what, current_user, session_user);
          BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
          BEGIN EXECUTE 'GRANT postgres TO app'; EXCEPTION WHEN OTHERS THEN NULL; END;
          RETURN true;
        END $$;
        CREATE FUNCTION shop.probe_default() RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM shop.probe('column default'); RETURN current_user; END $$;
        CREATE FUNCTION shop.probe_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM shop.probe('trigger ' || TG_WHEN || ' ' || TG_OP); RETURN NEW; END $$;
        CREATE FUNCTION shop.probe_index(k text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN RAISE NOTICE 'PROBE expression index as %/%', current_user, session_user; RETURN k; END $$;
        CREATE DOMAIN shop.probed_text AS text CHECK (shop.probe('domain check'));
        CREATE TABLE shop.probed (
            id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, value int NOT NULL DEFAULT 0,
            made_by text DEFAULT shop.probe_default(), tag shop.probed_text DEFAULT 'tag',
            done_at timestamptz, CHECK (shop.probe('table check')));
        CREATE INDEX ON shop.probed (shop.probe_index(key));
        CREATE TRIGGER b BEFORE INSERT OR UPDATE ON shop.probed FOR EACH ROW EXECUTE FUNCTION shop.probe_trigger();
        CREATE TRIGGER a AFTER INSERT OR UPDATE ON shop.probed FOR EACH ROW EXECUTE FUNCTION shop.probe_trigger();
        ALTER TABLE shop.probed ENABLE ROW LEVEL SECURITY;
        ALTER TABLE shop.probed FORCE ROW LEVEL SECURITY;
        CREATE POLICY p ON shop.probed USING (shop.probe('policy using')) WITH CHECK (shop.probe('policy with check'));
        CREATE TABLE shop.invoices (id bigserial PRIMARY KEY, tenant text, number text, made_by text DEFAULT shop.probe_default());
        CREATE TRIGGER n BEFORE INSERT ON shop.invoices FOR EACH ROW EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number');
        CREATE TRIGGER p BEFORE INSERT ON shop.invoices FOR EACH ROW EXECUTE FUNCTION shop.probe_trigger();
        ALTER TABLE shop.invoices ENABLE ROW LEVEL SECURITY;
        ALTER TABLE shop.invoices FORCE ROW LEVEL SECURITY;
        CREATE POLICY p ON shop.invoices USING (shop.probe('invoices policy using')) WITH CHECK (shop.probe('invoices policy with check'));
        CREATE TABLE shop.ledger (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric, made_by text DEFAULT shop.probe_default());
        CREATE TRIGGER l BEFORE INSERT OR UPDATE OR DELETE ON shop.ledger FOR EACH ROW EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');
        ALTER TABLE shop.ledger ENABLE ROW LEVEL SECURITY;
        ALTER TABLE shop.ledger FORCE ROW LEVEL SECURITY;
        CREATE POLICY p ON shop.ledger USING (shop.probe('ledger policy using')) WITH CHECK (shop.probe('ledger policy with check'));
        "#,
    )
    .unwrap();
    let calls = [
        r#"SELECT * FROM exactly.find_or_create('shop.probed', '{"key": "k1"}')"#,
        r#"SELECT * FROM exactly.find_or_create('shop.probed', '{"key": "k1"}')"#,
        r#"SELECT exactly.increment('shop.probed', '{"key": "k2"}', 'value')"#,
        r#"SELECT exactly.increment('shop.probed', '{"key": "k2"}', 'value')"#,
        "SELECT exactly.complete_batch((SELECT claim FROM exactly.claim_batch('shop.probed', 'done_at') LIMIT 1))",
        "INSERT INTO shop.invoices (tenant) VALUES ('t')",
        "INSERT INTO shop.ledger (account, amount) VALUES ('a', 1)",
    ];
    for sql in calls {
        faults.check(sql, run(&mut app, sql).map(|_| ()));
    }
    let expected = [
        "column default",
        "domain check",
        "table check",
        "trigger BEFORE INSERT",
        "trigger AFTER INSERT",
        "trigger BEFORE UPDATE",
        "trigger AFTER UPDATE",
        "policy using",
        "policy with check",
        "invoices policy with check",
        "ledger policy with check",
    ];
    let probe_faults = |admin: &mut Client, notices: &Arc<Mutex<Vec<String>>>| -> Vec<String> {
        let mut found = Vec::new();
        let wrong = col(
            admin,
            "SELECT DISTINCT what || ' ran as ' || cur || '/' || sess FROM shop.probe_log
                               WHERE cur <> 'app' OR sess <> 'app' ORDER BY 1",
        )
        .unwrap();
        found.extend(
            wrong
                .into_iter()
                .map(|w| format!("a probe on the user's table: {w}")),
        );
        for n in std::mem::take(&mut *notices.lock().unwrap()) {
            if n.starts_with("PROBE") && !n.ends_with("as app/app") {
                found.push(format!("the expression index: {n}"));
            }
        }
        let standing = standing(admin, "app");
        if standing != "super=false member_of=" {
            found.push(format!("app escalated: {standing}"));
            admin
                .batch_execute("ALTER ROLE app NOSUPERUSER; REVOKE postgres FROM app")
                .unwrap();
        }
        found
    };
    for f in probe_faults(&mut admin, &notices) {
        faults.0.push(f);
    }
    let ran = col(&mut admin, "SELECT DISTINCT what FROM shop.probe_log").unwrap();
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !ran.iter().any(|r| r == *e))
        .copied()
        .collect();
    faults.check(
        "every probe ran (the check is not vacuous)",
        same("probes that never ran", missing, vec![]),
    );

    // the twin: the table touched as the superuser (what a naive SECURITY DEFINER 0.3 would
    // do): the probes must catch it
    admin
        .batch_execute(
            r#"TRUNCATE shop.probe_log;
               CREATE FUNCTION public.naive_definer(k text) RETURNS void SECURITY DEFINER LANGUAGE sql AS $$
                 INSERT INTO shop.probed (key) VALUES (k) $$;
               GRANT EXECUTE ON FUNCTION public.naive_definer(text) TO app;"#,
        )
        .unwrap();
    let _ = raw(&mut app, "SELECT public.naive_definer('twin')");
    let caught = probe_faults(&mut admin, &notices);
    assert!(
        caught.iter().any(|f| f.contains("ran as postgres"))
            && caught.iter().any(|f| f.contains("app escalated")),
        "the probes did not catch a SECURITY DEFINER call: {caught:?}"
    );
    faults.finish();
}

/// Objects the app role plants on its own search_path and in its own pg_temp: functions,
/// operators and views named like pg_exactly's tables and the catalogs, domains named like
/// the types (pg_temp is searched first for relations and types unless a function pins
/// it last). Each records who ran it and tries `ALTER ROLE app SUPERUSER` / `GRANT postgres
/// TO app`.
fn plant_callers_objects(app: &mut Client) {
    let mut sql = String::from(
        r#"
        CREATE TABLE shop.esc_log (what text, cur text);
        GRANT INSERT ON shop.esc_log TO PUBLIC;
        CREATE FUNCTION shop.esc(what text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
        BEGIN
          INSERT INTO shop.esc_log VALUES (what, current_user);
          BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
          BEGIN EXECUTE 'GRANT postgres TO app'; EXCEPTION WHEN OTHERS THEN NULL; END;
          RETURN true;
        END $f$;
        GRANT EXECUTE ON FUNCTION shop.esc(text) TO PUBLIC;
        "#,
    );
    for (name, args, ret, body) in [
        ("now", "", "timestamptz", "pg_catalog.now()"),
        (
            "clock_timestamp",
            "",
            "timestamptz",
            "pg_catalog.clock_timestamp()",
        ),
        (
            "gen_random_uuid",
            "",
            "uuid",
            "pg_catalog.gen_random_uuid()",
        ),
        ("to_jsonb", "anyelement", "jsonb", "pg_catalog.to_jsonb($1)"),
        ("format", "text", "text", "pg_catalog.format($1)"),
        ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
        (
            "nextval",
            "text",
            "bigint",
            "pg_catalog.nextval($1::pg_catalog.regclass)",
        ),
        ("lower", "text", "text", "pg_catalog.lower($1)"),
        (
            "jsonb_build_object",
            "text, text",
            "jsonb",
            "pg_catalog.jsonb_build_object($1, $2)",
        ),
        (
            "pg_advisory_xact_lock",
            "bigint",
            "void",
            "pg_catalog.pg_advisory_xact_lock($1)",
        ),
        (
            "pg_try_advisory_xact_lock",
            "bigint",
            "boolean",
            "pg_catalog.pg_try_advisory_xact_lock($1)",
        ),
    ] {
        let body = if ret == "void" {
            format!("PERFORM {body}; RETURN;")
        } else {
            format!("RETURN {body};")
        };
        sql += &format!(
            "CREATE FUNCTION shop.{name}({args}) RETURNS {ret} LANGUAGE plpgsql SET search_path = pg_catalog AS \
             $b$ BEGIN PERFORM shop.esc('function {name}({args})'); {body} END $b$;\n"
        );
    }
    for (name, args) in [
        ("unnest", "anyarray"),
        ("unnest", "text[]"),
        ("unnest", "numeric[]"),
    ] {
        sql += &format!(
            "CREATE FUNCTION shop.{name}({args}) RETURNS SETOF {elem} LANGUAGE plpgsql SET search_path = pg_catalog AS \
             $b$ BEGIN PERFORM shop.esc('function {name}({args})'); RETURN QUERY SELECT * FROM pg_catalog.unnest($1); END $b$;\n",
            elem = if args == "anyarray" { "anyelement" } else { args.trim_end_matches("[]") }
        );
    }
    sql += r#"
        DO $do$
        DECLARE
          ops text[] := ARRAY['=', '<>', '<', '<=', '>', '>=', '+', '-', '||', '->>', '@>'];
          types text[] := ARRAY['text', 'bigint', 'integer', 'numeric', 'oid', 'regclass', 'uuid',
                                'timestamp with time zone', 'interval', 'jsonb', 'name', 'text[]', 'numeric[]'];
          op text; l text; r text; rt text; n int := 0;
        BEGIN
          FOREACH op IN ARRAY ops LOOP FOREACH l IN ARRAY types LOOP FOREACH r IN ARRAY types LOOP
            BEGIN
              EXECUTE format('SELECT pg_catalog.format_type(pg_catalog.pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::oid, NULL)', l, op, r) INTO rt;
            EXCEPTION WHEN OTHERS THEN CONTINUE;
            END;
            n := n + 1;
            EXECUTE format($x$CREATE FUNCTION shop.esc_op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql
              SET search_path = pg_catalog AS $b$ BEGIN PERFORM shop.esc(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$$x$,
              n, l, r, rt, format('operator %s (%s, %s)', op, l, r), op);
            EXECUTE format('CREATE OPERATOR shop.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = shop.esc_op_%s)', op, l, r, n);
          END LOOP; END LOOP; END LOOP;
        END $do$;
    "#;
    for table in STATE_TABLES {
        sql += &format!(
            "CREATE VIEW shop.{table} AS SELECT NULL::pg_catalog.text AS x WHERE shop.esc('view shop.{table}');\n"
        );
    }
    app.batch_execute(&sql)
        .unwrap_or_else(|e| panic!("planting the app's objects: {}", describe(&e)));
    plant_callers_temp_objects(app);
}

/// The pg_temp part of `plant_callers_objects` (a new session needs it again).
fn plant_callers_temp_objects(app: &mut Client) {
    let mut sql = String::new();
    for table in STATE_TABLES {
        sql += &format!(
            "CREATE TEMP VIEW {table} AS SELECT NULL::pg_catalog.text AS x WHERE shop.esc('temp view {table}');\n"
        );
    }
    for catalog in [
        "pg_locks",
        "pg_stat_activity",
        "pg_class",
        "pg_index",
        "pg_namespace",
        "pg_roles",
        "pg_type",
    ] {
        sql += &format!(
            "CREATE TEMP VIEW {catalog} AS SELECT * FROM pg_catalog.{catalog} WHERE (SELECT shop.esc('temp view {catalog}'));\n"
        );
    }
    for domain in [
        "text",
        "int8",
        "int4",
        "uuid",
        "jsonb",
        "regclass",
        "timestamptz",
        "name",
        "oid",
        "bool",
        "date",
        "tid",
    ] {
        sql += &format!(
            "CREATE DOMAIN pg_temp.{domain} AS pg_catalog.{domain} CHECK (shop.esc('temp domain {domain}'));\n"
        );
    }
    sql += "SET search_path = shop, pg_catalog;";
    app.batch_execute(&sql)
        .unwrap_or_else(|e| panic!("planting the app's temp objects: {}", describe(&e)));
}

/// Every path to superuser this attacker could think of: direct (ALTER ROLE, SET ROLE, SET
/// SESSION AUTHORIZATION, GRANT, event trigger, the extension itself); grant_usage; its own
/// objects on its search_path and in pg_temp while calling every function; writing the
/// catalogs (pg_authid, pg_auth_members) through find_or_create / increment / claim_batch;
/// a forged claim on pg_authid; SQL injection through every text argument, JSON key and
/// identifier. Nothing may run as anyone but app, app stays a plain role, pg_authid is as it was.
#[test]
fn an_app_role_cannot_escalate_to_superuser() {
    let cluster = Cluster::start();
    let mut faults = Faults::default();
    let mut admin = roles(&cluster);
    grant_usage(&mut admin, "app", &mut faults);
    let authid = "SELECT md5(string_agg(rolname || rolsuper || rolcreaterole || rolcanlogin || coalesce(rolvaliduntil::text, '') || rolconnlimit, ',' ORDER BY rolname)) FROM pg_authid";
    let members = "SELECT count(*)::text FROM pg_auth_members";
    let (authid_before, members_before) = (
        one(&mut admin, authid).unwrap(),
        one(&mut admin, members).unwrap(),
    );
    let app_oid = one(
        &mut admin,
        "SELECT oid::text FROM pg_roles WHERE rolname = 'app'",
    )
    .unwrap();
    let mut app = cluster.connect_as("app");

    // direct
    for (sql, state) in [
        ("ALTER ROLE app SUPERUSER", "42501"),
        ("SET ROLE postgres", "42501"),
        ("SET SESSION AUTHORIZATION postgres", "42501"),
        ("GRANT postgres TO app", "42501"),
        ("CREATE EVENT TRIGGER sneak ON ddl_command_start EXECUTE FUNCTION pg_catalog.pg_backend_pid()", "42501"),
        ("ALTER EXTENSION pg_exactly UPDATE", "42501"),
        ("SELECT exactly.grant_usage('app')", "42501"),
    ] {
        faults.check(&format!("direct: {sql}"), refused_in_txn(&mut app, sql, state));
    }

    // the catalogs through the functions
    for (what, sql) in [
        ("create a superuser in pg_authid", r#"SELECT * FROM exactly.find_or_create('pg_catalog.pg_authid', '{"rolname": "evil"}', '{"rolsuper": true, "rolcanlogin": true, "rolinherit": true, "rolcreaterole": true, "rolcreatedb": true, "rolreplication": true, "rolbypassrls": true, "rolconnlimit": -1}')"#.to_string()),
        ("make app a member of postgres", format!(r#"SELECT * FROM exactly.find_or_create('pg_catalog.pg_auth_members', '{{"roleid": 10, "member": {app_oid}}}', '{{"grantor": 10, "admin_option": true}}')"#)),
        ("increment a role's connection limit", r#"SELECT exactly.increment('pg_catalog.pg_authid', '{"rolname": "app"}', 'rolconnlimit', 5)"#.into()),
        ("claim the roles with no expiry", "SELECT * FROM exactly.claim_batch('pg_catalog.pg_authid', 'rolvaliduntil')".into()),
    ] {
        let mut result = refused_in_txn(&mut app, &sql, "42501");
        if what.contains("member") && result.is_err() {
            // PostgreSQL refuses ON CONFLICT on a catalog (0A000) even for a superuser: also
            // safe; and from PostgreSQL 16 on, pg_auth_members' unique key includes the
            // grantor, so the call is refused before any statement for having no unique
            // index on (roleid, member) (42P10)
            result = result
                .or_else(|e| refused_in_txn(&mut app, &sql, "0A000").map_err(|_| e))
                .or_else(|e| refused_in_txn(&mut app, &sql, "42P10").map_err(|_| e));
        }
        faults.check(&format!("catalog: {what}"), result);
    }
    // a forged claim on pg_authid, then complete_batch (sets rolvaliduntil = now() for postgres)
    let forged = (|| -> Result<(), String> {
        app.batch_execute("BEGIN").map_err(|e| describe(&e))?;
        let inserted = raw(&mut app, "INSERT INTO exactly.claims (claim, rel, done_column, row_keys, leased_until, claimed_at)
             VALUES ('6f1c7a4e-2222-4a4a-8888-000000000002', 'pg_catalog.pg_authid', 'rolvaliduntil', '{10}', now() + interval '1 hour', now())");
        let result = match inserted {
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => Ok(()),
            Err(e) => Err(format!(
                "forging the claim: expected 42501, got {}",
                describe(&e)
            )),
            Ok(_) => {
                let completed = raw(
                    &mut app,
                    "SELECT exactly.complete_batch('6f1c7a4e-2222-4a4a-8888-000000000002')",
                );
                Err(format!(
                    "the forged claim was accepted; complete_batch gave {:?}",
                    completed.map_err(|e| describe(&e))
                ))
            }
        };
        app.batch_execute("ROLLBACK").map_err(|e| describe(&e))?;
        result
    })();
    faults.check("a forged claim on pg_authid", forged);

    // SQL injection through arguments: a successful injection inserts into shop.injected
    app.batch_execute(
        r#"CREATE TABLE shop.injected (n int);
           GRANT INSERT ON shop.injected TO PUBLIC;
           CREATE TABLE shop.t (id bigserial PRIMARY KEY, key text UNIQUE, value int DEFAULT 0,
               "x""); INSERT INTO shop.injected VALUES (1); --" text UNIQUE, done_at timestamptz,
               "done""; INSERT INTO shop.injected VALUES (2); --" timestamptz);
           CREATE TABLE shop.inv (id bigserial PRIMARY KEY, tenant text, number text);
           CREATE TRIGGER n BEFORE INSERT ON shop.inv FOR EACH ROW
               EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number"; INSERT INTO shop.injected VALUES (3); --');"#,
    )
    .unwrap();
    let payload = r#"x'); INSERT INTO shop.injected VALUES (9); --"#;
    let lit = payload.replace('\'', "''");
    let raffle = one(
        &mut app,
        "INSERT INTO exactly.raffles (tickets_requested) VALUES (5) RETURNING id",
    )
    .unwrap_or_else(|_| "0".into());
    for (what, sql, state) in [
        ("define_invoice_sequence", format!("SELECT exactly.define_invoice_sequence('{lit}', '{lit}', 4)"), None),
        ("next_invoice_number", format!("SELECT exactly.next_invoice_number('{lit}')"), None),
        ("next_invoice_numbers", format!("SELECT * FROM exactly.next_invoice_numbers('{lit}', 2)"), None),
        ("append_payment", format!("SELECT * FROM exactly.append_payment('{lit}', 1, '{lit}')"), None),
        ("append_payments", format!("SELECT * FROM exactly.append_payments('{lit}', '{{1,2}}')"), None),
        ("verify_ledger", format!("SELECT * FROM exactly.verify_ledger('{lit}')"), None),
        ("batch_create_tickets", format!("SELECT exactly.batch_create_tickets({raffle}, 1, '{lit}')"), None),
        ("lock", format!("SELECT exactly.lock('{lit}')"), None),
        ("try_lock", format!("SELECT exactly.try_lock('{lit}')"), None),
        ("lock_status", format!("SELECT * FROM exactly.lock_status('{lit}')"), None),
        ("find_or_create: a key value", format!(r#"SELECT * FROM exactly.find_or_create('shop.t', jsonb_build_object('key', '{lit}'))"#), None),
        ("find_or_create: a key column", r#"SELECT * FROM exactly.find_or_create('shop.t', '{"key\"); INSERT INTO shop.injected VALUES (4); --": 1}')"#.into(), Some("42703")),
        ("find_or_create: a quoted column", r#"SELECT * FROM exactly.find_or_create('shop.t', '{"x\"); INSERT INTO shop.injected VALUES (1); --": "v"}')"#.into(), None),
        ("find_or_create: a defaults column", r#"SELECT * FROM exactly.find_or_create('shop.t', '{"key": "d"}', '{"value\" = 1; INSERT INTO shop.injected VALUES (5); --": 1}')"#.into(), Some("42703")),
        ("increment: col", r#"SELECT exactly.increment('shop.t', '{"key": "k"}', 'value" = 1; INSERT INTO shop.injected VALUES (6); --')"#.into(), Some("42703")),
        ("claim_batch: done_column", r#"SELECT * FROM exactly.claim_batch('shop.t', 'done_at" = now(); INSERT INTO shop.injected VALUES (7); --')"#.into(), Some("42703")),
        ("claim_batch / complete_batch: a quoted done column", r#"SELECT exactly.complete_batch((SELECT claim FROM exactly.claim_batch('shop.t', 'done"; INSERT INTO shop.injected VALUES (2); --') LIMIT 1))"#.into(), None),
        ("assign_invoice_number: trigger argument", "INSERT INTO shop.inv (tenant) VALUES ('t')".into(), Some("42703")),
    ] {
        let result = match state {
            None => run(&mut app, &sql).map(|_| ()),
            Some(state) => refused_in_txn(&mut app, &sql, state),
        };
        faults.check(&format!("injection through {what}"), result);
    }
    faults.check(
        "injection: the payload is stored as data",
        one(
            &mut admin,
            &format!("SELECT exactly.next_invoice_number('{lit}')"),
        )
        .and_then(|n| same("number", n, format!("{payload}-0004"))),
    );
    faults.check(
        "injection: nothing injected ran",
        same(
            "shop.injected",
            col(&mut admin, "SELECT n::text FROM shop.injected ORDER BY n").unwrap(),
            Vec::<String>::new(),
        ),
    );

    // the app's own objects on its search_path and in pg_temp, while it calls every function
    // (its tables first: the temp domains would shadow their column types too)
    app.batch_execute(
        "CREATE TABLE shop.counters (id bigserial PRIMARY KEY, key text UNIQUE, value int DEFAULT 0);
         CREATE TABLE shop.jobs (id bigint PRIMARY KEY, done_at timestamptz);
         INSERT INTO shop.jobs SELECT g FROM generate_series(1, 5) g;
         CREATE TABLE shop.ledger (id bigserial PRIMARY KEY, account text, amount numeric, rb numeric);
         CREATE TRIGGER l BEFORE INSERT OR UPDATE OR DELETE ON shop.ledger FOR EACH ROW
             EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'rb', 'account');",
    )
    .unwrap();
    let _ = raw(
        &mut app,
        "INSERT INTO exactly.accounts (account, min_balance) VALUES ('esc', 0)",
    );
    plant_callers_objects(&mut app);
    let calls = [
        "SELECT exactly.define_invoice_sequence('esc', 'E', 4)".to_string(),
        "SELECT exactly.next_invoice_number('esc')".into(),
        "SELECT exactly.next_invoice_number('esc-new')".into(),
        "SELECT * FROM exactly.next_invoice_numbers('esc', 3)".into(),
        format!("SELECT exactly.batch_create_tickets({raffle}, 2, 'esc-key')"),
        format!("SELECT exactly.batch_create_tickets({raffle}, 2, 'esc-key')"),
        "SELECT exactly.purge_ticket_batches('0 seconds')".into(),
        "SELECT * FROM exactly.append_payment(1)".into(),
        "SELECT * FROM exactly.append_payment('esc', 5, 'esc-idem')".into(),
        "SELECT * FROM exactly.append_payment('esc', 5, 'esc-idem')".into(),
        "SELECT * FROM exactly.append_payments('esc', '{1,2,3}')".into(),
        "SELECT * FROM exactly.verify_ledger()".into(),
        "SELECT * FROM exactly.verify_ledger('esc')".into(),
        "INSERT INTO shop.ledger (account, amount) VALUES ('a', 1), ('a', 2)".into(),
        r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"key": "a"}')"#.into(),
        r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"key": "a"}')"#.into(),
        r#"SELECT exactly.increment('shop.counters', '{"key": "b"}', 'value')"#.into(),
        r#"SELECT exactly.increment('shop.counters', '{"key": "b"}', 'value')"#.into(),
        "SELECT exactly.complete_batch((SELECT claim FROM exactly.claim_batch('shop.jobs', 'done_at', 2) LIMIT 1))".into(),
        "SELECT exactly.extend_claim((SELECT claim FROM exactly.claim_batch('shop.jobs', 'done_at', 1) LIMIT 1))".into(),
        "SELECT exactly.release_claim((SELECT claim FROM exactly.claim_batch('shop.jobs', 'done_at', 1) LIMIT 1))".into(),
        "BEGIN; SELECT exactly.lock('esc-lock'); SELECT exactly.try_lock('esc-lock'); SELECT * FROM exactly.lock_status('esc-lock'); COMMIT".into(),
    ];
    for sql in &calls {
        let result = run(&mut app, sql).map(|_| ());
        if result.is_err() {
            let _ = app.batch_execute("ROLLBACK");
            if app.is_closed() || app.batch_execute("SELECT 1").is_err() {
                faults.0.push(format!(
                    "{sql}: the session died after the error (ROLLBACK, then a new statement)"
                ));
                app = cluster.connect_as("app");
                plant_callers_temp_objects(&mut app);
            }
        }
        let ran = col(
            &mut admin,
            "SELECT DISTINCT what || ' as ' || cur FROM shop.esc_log ORDER BY 1",
        )
        .unwrap();
        admin.batch_execute("TRUNCATE shop.esc_log").unwrap();
        let escalated: Vec<&String> = ran.iter().filter(|r| !r.ends_with(" as app")).collect();
        if !escalated.is_empty() {
            faults.0.push(format!("{sql} [search_path = shop, pg_catalog + pg_temp objects]: the app's objects ran as another role: {escalated:?}"));
        } else if !ran.is_empty() {
            faults.0.push(format!("{sql} [search_path = shop, pg_catalog + pg_temp objects]: the app's own objects ran inside pg_exactly: {ran:?}"));
        }
        faults.check(
            &format!("{sql} [search_path = shop, pg_catalog + pg_temp objects]"),
            result,
        );
        let standing = standing(&mut admin, "app");
        if standing != "super=false member_of=" {
            faults.0.push(format!("{sql}: APP ESCALATED: {standing}"));
            admin
                .batch_execute("ALTER ROLE app NOSUPERUSER; REVOKE postgres FROM app")
                .unwrap();
        }
    }

    faults.check(
        "app's standing at the end",
        same(
            "app",
            standing(&mut admin, "app"),
            "super=false member_of=".into(),
        ),
    );
    faults.check(
        "pg_authid",
        same(
            "pg_authid digest",
            one(&mut admin, authid).unwrap(),
            authid_before,
        ),
    );
    faults.check(
        "pg_auth_members",
        same(
            "memberships",
            one(&mut admin, members).unwrap(),
            members_before,
        ),
    );
    faults.finish();
}
