//! Hostile and careless use of pg_exactly 0.4.0's transfers, holds and history, written from
//! docs/ledger.md, DESIGN.md (guarantees, "Double-entry transfers and holds", roles and
//! privileges) and the README (privileges, "Running balances") alone, without reading the
//! implementation.
//!
//! - `hostile_*`: a role `hostile` with CREATE on `public` plants shadows of what an
//!   implementation might call: operators (`=`, `<`, `+`, `-`, `->>`, `||` ... on text,
//!   numeric, bigint, jsonb, timestamptz, interval ...), `now()`, `clock_timestamp()`,
//!   `jsonb_array_elements`, `jsonb_array_length`, `jsonb_typeof`, `jsonb_each`, `sum`,
//!   `count`, `abs`, `round`, `md5`, `hashtext`, advisory-lock functions, domains named
//!   `numeric`/`text`/`jsonb`/`interval`..., a table `public.transfers` and views
//!   `public.holds`, `public.accounts`, `public.payments`. Each records that it ran (a
//!   sequence that survives rollback, a NOTICE, a log row). transfer / transfers / hold /
//!   post_hold / void_hold / expire_holds / balance_at / verify_ledger are called on every
//!   documented path (first use, replays, refusals, partial post, expiry) by the superuser
//!   and by an app role, with `search_path = public, pg_catalog` and the default: nothing
//!   hostile runs, and the results are right.
//! - `app_role_*`: after `SELECT exactly.grant_usage('app')` the app calls every new function,
//!   reads exactly.transfers / holds / accounts / payments, inserts accounts with (account,
//!   min_balance, max_balance, currency) only; it cannot insert balance/entries/pending
//!   columns, UPDATE/DELETE/TRUNCATE/lock accounts, transfers, holds or payments, nor
//!   alter them (42501); a role without grant_usage gets 42501 from every new function.
//! - `weird_input_*`: NULL in every argument and in every leg field, legs that are not an
//!   array / empty / 10,001 long / with extra keys / with amounts "NaN", "Infinity",
//!   "1e3", huge, negative, zero, non-numeric; empty account names; timeouts zero,
//!   negative, huge; hold ids unknown, negative, zero; bad account inserts: each gets the
//!   documented SQLSTATE (never XX000) and changes nothing. Odd but valid input (quotes,
//!   unicode, 10,000-character names, "1e3" amounts, 10,000 legs) works exactly.
//! - `waiting_call_*`: statement_timeout, pg_cancel_backend and lock_timeout while a
//!   transfer / transfers / hold / post_hold / void_hold waits for an account another
//!   session holds: the call is undone (57014 / 55P03), the session is usable (autocommit;
//!   a transaction goes on after ROLLBACK TO SAVEPOINT and commits its earlier work).
//! - `no_deadlock_*`: multi-leg transfers naming accounts in descending order while another
//!   session holds one of them, and a random load of such transfers, holds and posts from
//!   many sessions: never 40P01 (40001 is allowed, the documented answer to a wait that
//!   could close a cycle), and the ledger verifies.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hostile;
use common::text::{col, describe, one, raw, run};
use common::{wait_until_blocked, Client, Cluster, NoTls, XorShift};


// ---------------------------------------------------------------------------------------
// helpers

#[derive(Default)]
struct Faults(Vec<String>);

impl Faults {
    fn check(&mut self, what: &str, result: Result<(), String>) {
        if let Err(e) = result {
            self.0.push(format!("{what}: {e}"));
        }
    }
    fn finish(self) {
        assert!(self.0.is_empty(), "{} fault(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

fn code_of(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// The statement must fail with one of `codes`.
fn refused_with(c: &mut Client, sql: &str, codes: &[&str]) -> Result<String, String> {
    match raw(c, sql) {
        Ok(rows) => Err(format!("`{sql:.300}` succeeded ({:.300}), expected SQLSTATE {codes:?}", format!("{rows:?}"))),
        Err(e) => {
            let got = code_of(&e);
            if codes.contains(&got.as_str()) {
                Ok(describe(&e))
            } else {
                Err(format!("`{sql:.300}`: expected SQLSTATE {codes:?}, got {}", describe(&e)))
            }
        }
    }
}

/// Everything the ledger's state tables hold, as one digest.
const DIGEST: &str = "SELECT pg_catalog.md5(
    coalesce((SELECT pg_catalog.string_agg(t::pg_catalog.text, '|' ORDER BY t.account) FROM exactly.accounts t), '') ||
    coalesce((SELECT pg_catalog.string_agg(t::pg_catalog.text, '|' ORDER BY t.id) FROM exactly.payments t), '') ||
    coalesce((SELECT pg_catalog.string_agg(t::pg_catalog.text, '|' ORDER BY t.id) FROM exactly.transfers t), '') ||
    coalesce((SELECT pg_catalog.string_agg(t::pg_catalog.text, '|' ORDER BY t.id) FROM exactly.holds t), ''))";

fn digest(c: &mut Client) -> String {
    one(c, DIGEST).unwrap()
}

fn ledger_ok(c: &mut Client) -> Result<(), String> {
    let bad = col(
        c,
        "SELECT account || ': ' || coalesce(detail, '') FROM exactly.verify_ledger() WHERE ok IS DISTINCT FROM true",
    )?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("verify_ledger: {bad:?}"))
    }
}

fn balance(c: &mut Client, account: &str) -> String {
    one(
        c,
        &format!(
            "SELECT coalesce((SELECT balance::text FROM exactly.accounts WHERE account = {}), 'none')",
            lit(account)
        ),
    )
    .unwrap()
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn same_num(what: &str, got: &str, want: &str) -> Result<(), String> {
    let norm = |s: &str| -> String {
        let s = s.trim();
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if norm(got) == norm(want) {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, expected {want}"))
    }
}

// ---------------------------------------------------------------------------------------
// hostile objects on the search_path

const SHADOW_FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("now", "", "timestamptz", "RETURN pg_catalog.now();"),
    ("clock_timestamp", "", "timestamptz", "RETURN pg_catalog.clock_timestamp();"),
    ("statement_timestamp", "", "timestamptz", "RETURN pg_catalog.statement_timestamp();"),
    ("transaction_timestamp", "", "timestamptz", "RETURN pg_catalog.transaction_timestamp();"),
    ("jsonb_array_elements", "a jsonb", "SETOF jsonb", "RETURN QUERY SELECT * FROM pg_catalog.jsonb_array_elements(a);"),
    ("jsonb_array_elements_text", "a jsonb", "SETOF text", "RETURN QUERY SELECT * FROM pg_catalog.jsonb_array_elements_text(a);"),
    ("jsonb_array_length", "a jsonb", "integer", "RETURN pg_catalog.jsonb_array_length(a);"),
    ("jsonb_typeof", "a jsonb", "text", "RETURN pg_catalog.jsonb_typeof(a);"),
    ("jsonb_object_keys", "a jsonb", "SETOF text", "RETURN QUERY SELECT * FROM pg_catalog.jsonb_object_keys(a);"),
    ("jsonb_each", "a jsonb, OUT key text, OUT value jsonb", "SETOF record", "RETURN QUERY SELECT * FROM pg_catalog.jsonb_each(a);"),
    ("jsonb_each_text", "a jsonb, OUT key text, OUT value text", "SETOF record", "RETURN QUERY SELECT * FROM pg_catalog.jsonb_each_text(a);"),
    ("jsonb_extract_path_text", "a jsonb, VARIADIC p text[]", "text", "RETURN pg_catalog.jsonb_extract_path_text(a, VARIADIC p);"),
    ("jsonb_extract_path", "a jsonb, VARIADIC p text[]", "jsonb", "RETURN pg_catalog.jsonb_extract_path(a, VARIADIC p);"),
    ("to_jsonb", "a anyelement", "jsonb", "RETURN pg_catalog.to_jsonb(a);"),
    ("jsonb_strip_nulls", "a jsonb", "jsonb", "RETURN pg_catalog.jsonb_strip_nulls(a);"),
    ("abs", "a numeric", "numeric", "RETURN pg_catalog.abs(a);"),
    ("round", "a numeric", "numeric", "RETURN pg_catalog.round(a);"),
    ("round", "a numeric, b integer", "numeric", "RETURN pg_catalog.round(a, b);"),
    ("trunc", "a numeric", "numeric", "RETURN pg_catalog.trunc(a);"),
    ("sign", "a numeric", "numeric", "RETURN pg_catalog.sign(a);"),
    ("scale", "a numeric", "integer", "RETURN pg_catalog.scale(a);"),
    ("numeric", "a text", "numeric", "RETURN a::pg_catalog.numeric;"),
    ("lower", "a text", "text", "RETURN pg_catalog.lower(a);"),
    ("length", "a text", "integer", "RETURN pg_catalog.length(a);"),
    ("md5", "a text", "text", "RETURN pg_catalog.md5(a);"),
    ("hashtext", "a text", "integer", "RETURN pg_catalog.hashtext(a);"),
    ("hashtextextended", "a text, b bigint", "bigint", "RETURN pg_catalog.hashtextextended(a, b);"),
    ("pg_advisory_xact_lock", "a bigint", "void", "PERFORM pg_catalog.pg_advisory_xact_lock(a);"),
    ("pg_advisory_xact_lock", "a integer, b integer", "void", "PERFORM pg_catalog.pg_advisory_xact_lock(a, b);"),
    ("pg_try_advisory_xact_lock", "a bigint", "boolean", "RETURN pg_catalog.pg_try_advisory_xact_lock(a);"),
    ("pg_try_advisory_xact_lock", "a integer, b integer", "boolean", "RETURN pg_catalog.pg_try_advisory_xact_lock(a, b);"),
    ("nextval", "a text", "bigint", "RETURN pg_catalog.nextval(a::pg_catalog.regclass);"),
    ("greatest_numeric", "a numeric, b numeric", "numeric", "RETURN a;"),
];

const SHADOW_OPERATORS: &[&str] = &["=", "<>", "<", "<=", ">", ">=", "+", "-", "*", "/", "||", "->", "->>", "@>", "?", "#>>"];
const OPERATOR_TYPES: &[&str] = &[
    "text", "numeric", "bigint", "integer", "jsonb", "timestamptz", "interval", "boolean", "character varying", "name",
    "oid", "text[]", "smallint", "timestamp", "double precision",
];
const SHADOW_DOMAINS: &[&str] = &["numeric", "text", "jsonb", "interval", "int8", "timestamptz", "bool", "int4", "varchar"];

fn hostile_script() -> String {
    let mut sql = String::from(hostile::EVIDENCE);
    sql += r#"CREATE FUNCTION public.hostile_hit(what text) RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$
BEGIN
  PERFORM nextval('public.hostile_hits');
  RAISE NOTICE 'HOSTILE CODE RAN: % (as %)', what, current_user;
  INSERT INTO public.hostile_log VALUES (what, current_user);
  BEGIN EXECUTE 'ALTER ROLE hostile SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN true;
END $f$;
-- a table named like the ledger's, with a row, and views for the others
CREATE TABLE public.transfers (id bigint, from_account text, to_account text, amount numeric, idempotency_key text);
INSERT INTO public.transfers VALUES (1, 'x', 'y', 1, 'k');
GRANT ALL ON public.transfers TO PUBLIC;
CREATE FUNCTION public.hostile_trigger() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog AS $f$
BEGIN PERFORM public.hostile_hit(TG_OP || ' on public.' || TG_TABLE_NAME); RETURN NULL; END $f$;
CREATE TRIGGER hostile BEFORE INSERT OR UPDATE OR DELETE ON public.transfers FOR EACH ROW EXECUTE FUNCTION public.hostile_trigger();
CREATE TRIGGER hostile_truncate BEFORE TRUNCATE ON public.transfers FOR EACH STATEMENT EXECUTE FUNCTION public.hostile_trigger();
"#;
    for view in ["holds", "accounts", "payments", "transfer_legs", "hold_events"] {
        sql += &format!(
            "CREATE VIEW public.{view} AS SELECT 1::bigint AS id, 'x'::text AS account, 'x'::text AS from_account,
               'y'::text AS to_account, 0::numeric AS amount, 0::numeric AS balance, 'pending'::text AS state
             WHERE public.hostile_hit('select from view public.{view}');
             GRANT ALL ON public.{view} TO PUBLIC;
             CREATE TRIGGER hostile INSTEAD OF INSERT OR UPDATE OR DELETE ON public.{view} FOR EACH ROW
               EXECUTE FUNCTION public.hostile_trigger();\n"
        );
    }
    for (name, args, ret, body) in SHADOW_FUNCTIONS {
        let label = format!("function public.{name}({args})").replace('\'', "''");
        sql += &format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {ret} LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $b$
             BEGIN PERFORM public.hostile_hit('{label}'); {body} END $b$;\n"
        );
    }
    sql += r#"
CREATE FUNCTION public.hostile_sum(s numeric, v numeric) RETURNS numeric LANGUAGE plpgsql SET search_path = pg_catalog AS $b$
BEGIN PERFORM public.hostile_hit('aggregate public.sum(numeric)'); RETURN CASE WHEN v IS NULL THEN s ELSE coalesce(s, 0) + v END; END $b$;
CREATE AGGREGATE public.sum(numeric) (SFUNC = public.hostile_sum, STYPE = numeric);
CREATE FUNCTION public.hostile_count(s bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS $b$
BEGIN PERFORM public.hostile_hit('aggregate public.count(*)'); RETURN s + 1; END $b$;
CREATE AGGREGATE public.count(*) (SFUNC = public.hostile_count, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.hostile_count_any(s bigint, v bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS $b$
BEGIN PERFORM public.hostile_hit('aggregate public.count(bigint)'); RETURN s + 1; END $b$;
CREATE AGGREGATE public.count(bigint) (SFUNC = public.hostile_count_any, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION public.hostile_max(s bigint, v bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS $b$
BEGIN PERFORM public.hostile_hit('aggregate public.max(bigint)'); RETURN greatest(s, v); END $b$;
CREATE AGGREGATE public.max(bigint) (SFUNC = public.hostile_max, STYPE = bigint);
"#;
    sql += &hostile::operators_sql(
        SHADOW_OPERATORS,
        OPERATOR_TYPES,
        &["numeric", "bigint", "integer", "interval"],
        200,
    );
    for d in SHADOW_DOMAINS {
        sql += &format!(
            "CREATE DOMAIN public.{d} AS pg_catalog.{d} CHECK (public.hostile_hit('domain public.{d}'));\n"
        );
    }
    sql += "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;\n";
    sql
}

struct Attack {
    label: String,
    caller: Client,
    notices: Arc<Mutex<Vec<String>>>,
    check: Client,
    hits_seen: i64,
    faults: Faults,
}

impl Attack {
    fn new(cluster: &Cluster, role: &str, search_path: &str) -> Attack {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config = cluster.config_as(role);
        config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
        let mut caller = config.connect(NoTls).unwrap();
        caller.batch_execute(&format!("SET search_path = {search_path}")).unwrap();
        let mut check = cluster.connect();
        check.batch_execute("SET search_path = pg_catalog").unwrap();
        let hits_seen = check
            .query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hostile_hits", &[])
            .unwrap()
            .get(0);
        Attack { label: format!("as {role}, search_path = {search_path}"), caller, notices, check, hits_seen, faults: Faults::default() }
    }

    fn step(&mut self, what: &str, f: impl FnOnce(&mut Client, &mut Client) -> Result<(), String>) {
        let result = f(&mut self.caller, &mut self.check);
        let _ = self.caller.batch_execute("ROLLBACK");
        let mut evidence = Vec::new();
        let notices: Vec<String> = std::mem::take(&mut *self.notices.lock().unwrap())
            .into_iter()
            .filter(|n| n.contains("HOSTILE"))
            .collect();
        if !notices.is_empty() {
            evidence.push(format!("notices {notices:?}"));
        }
        let row = self
            .check
            .query_one(
                "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hostile_hits),
                        (SELECT string_agg(DISTINCT what || ' as ' || by_user, '; ') FROM public.hostile_log),
                        (SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile')",
                &[],
            )
            .unwrap();
        let hits: i64 = row.get(0);
        if hits != self.hits_seen {
            evidence.push(format!("{} hostile calls", hits - self.hits_seen));
            self.hits_seen = hits;
        }
        if let Some(log) = row.get::<_, Option<String>>(1) {
            evidence.push(format!("log [{log}]"));
        }
        if row.get::<_, bool>(2) {
            evidence.push("HOSTILE BECAME SUPERUSER".into());
        }
        if !evidence.is_empty() {
            self.check.batch_execute("TRUNCATE public.hostile_log; ALTER ROLE hostile NOSUPERUSER").unwrap();
            self.faults.0.push(format!("{what} [{}]: hostile code ran: {}", self.label, evidence.join(", ")));
        }
        if let Err(e) = result {
            self.faults.0.push(format!("{what} [{}]: wrong result: {e}", self.label));
        }
    }
}

/// Every new function on its documented paths; `p` prefixes the account names.
fn hostile_scenario(a: &mut Attack, p: &str) {
    let n = |s: &str| lit(&format!("{p}{s}"));
    let (alice, bob, fees, usd) = (n("alice"), n("bob"), n("fees"), n("usd"));
    a.step("insert accounts with currency and limits", |c, _| {
        run(
            c,
            &format!(
                "INSERT INTO exactly.accounts (account, currency, min_balance, max_balance) VALUES ({alice}, 'EUR', '0', '1000');
                 INSERT INTO exactly.accounts (account, currency) VALUES ({bob}, 'EUR'), ({fees}, 'EUR');
                 INSERT INTO exactly.accounts (account, currency) VALUES ({usd}, 'USD')"
            ),
        )?;
        Ok(())
    });
    a.step("append_payment opening balance", |c, _| {
        run(c, &format!("SELECT * FROM exactly.append_payment({alice}, '100')")).map(|_| ())
    });
    let mut first = String::new();
    a.step("transfer with key and metadata", |c, _| {
        first = one(
            c,
            &format!(
                "SELECT id FROM exactly.transfer({alice}, {bob}, '30', idempotency_key => {}, metadata => '{{\"order\": 17}}')",
                n("k1")
            ),
        )?;
        Ok(())
    });
    a.step("transfer replay", |c, _| {
        let again = one(
            c,
            &format!(
                "SELECT id FROM exactly.transfer({alice}, {bob}, '30.00', idempotency_key => {}, metadata => '{{\"order\":17}}')",
                n("k1")
            ),
        )?;
        if again != first {
            return Err(format!("replay returned transfer {again}, first was {first}"));
        }
        Ok(())
    });
    a.step("transfer key reused for another request", |c, _| {
        refused_with(c, &format!("SELECT * FROM exactly.transfer({alice}, {bob}, '31', idempotency_key => {})", n("k1")), &["22023"]).map(|_| ())
    });
    a.step("transfer refused: limit, currency, same account", |c, _| {
        refused_with(c, &format!("SELECT * FROM exactly.transfer({alice}, {bob}, '1000')"), &["23514"])?;
        refused_with(c, &format!("SELECT * FROM exactly.transfer({alice}, {usd}, '1')"), &["22023"])?;
        refused_with(c, &format!("SELECT * FROM exactly.transfer({alice}, {alice}, '1')"), &["22023"]).map(|_| ())
    });
    let legs = format!(
        r#"[{{"from": "{p}bob", "to": "{p}alice", "amount": 10}}, {{"from": "{p}bob", "to": "{p}fees", "amount": "0.50"}}]"#
    );
    let mut legs_ids = Vec::new();
    a.step("transfers, two legs, keyed", |c, _| {
        legs_ids = col(c, &format!("SELECT id FROM exactly.transfers('{legs}', idempotency_key => {}) ORDER BY leg", n("k2")))?;
        if legs_ids.len() != 2 {
            return Err(format!("{legs_ids:?}"));
        }
        Ok(())
    });
    a.step("transfers replay", |c, _| {
        let again = col(c, &format!("SELECT id FROM exactly.transfers('{legs}', idempotency_key => {}) ORDER BY leg", n("k2")))?;
        if again != legs_ids {
            return Err(format!("replay {again:?}, first {legs_ids:?}"));
        }
        Ok(())
    });
    a.step("transfers refused in a later leg", |c, _| {
        refused_with(
            c,
            &format!(r#"SELECT * FROM exactly.transfers('[{{"from": "{p}bob", "to": "{p}fees", "amount": 1}}, {{"from": "{p}alice", "to": "{p}bob", "amount": 5000}}]')"#),
            &["23514"],
        )?;
        refused_with(
            c,
            &format!(r#"SELECT * FROM exactly.transfers('[{{"from": "{p}bob", "to": "{p}fees", "amount": 1}}, {{"from": "{p}alice", "to": "{p}usd", "amount": 1}}]')"#),
            &["22023"],
        )
        .map(|_| ())
    });
    let mut hold = String::new();
    a.step("hold with timeout, keyed", |c, _| {
        hold = one(
            c,
            &format!("SELECT id FROM exactly.hold({alice}, {bob}, '50', timeout => '15 minutes', idempotency_key => {})", n("k1")),
        )?;
        let again = one(
            c,
            &format!("SELECT id FROM exactly.hold({alice}, {bob}, '50', timeout => '15 minutes', idempotency_key => {})", n("k1")),
        )?;
        if again != hold {
            return Err(format!("hold replay {again}, first {hold}"));
        }
        Ok(())
    });
    a.step("hold refused by the pending reservation", |c, _| {
        // alice: 100 - 30 + 10 = 80, 50 reserved: 31 more would go below 0
        refused_with(c, &format!("SELECT * FROM exactly.hold({alice}, {bob}, '31')"), &["23514"])?;
        refused_with(c, &format!("SELECT * FROM exactly.transfer({alice}, {bob}, '31')"), &["23514"]).map(|_| ())
    });
    let mut posted = String::new();
    a.step("post_hold partial, again, void after post", |c, _| {
        posted = one(c, &format!("SELECT id FROM exactly.post_hold({hold}, '42')"))?;
        let again = one(c, &format!("SELECT id FROM exactly.post_hold({hold}, '42.0')"))?;
        if again != posted {
            return Err(format!("post again returned {again}, first {posted}"));
        }
        refused_with(c, &format!("SELECT * FROM exactly.post_hold({hold}, '41')"), &["55000"])?;
        refused_with(c, &format!("SELECT * FROM exactly.void_hold({hold})"), &["55000"]).map(|_| ())
    });
    a.step("hold, void, void again", |c, _| {
        let h = one(c, &format!("SELECT id FROM exactly.hold({bob}, {fees}, '1')"))?;
        let s1 = one(c, &format!("SELECT state FROM exactly.void_hold({h})"))?;
        let s2 = one(c, &format!("SELECT state FROM exactly.void_hold({h})"))?;
        if s1 != "voided" || s2 != "voided" {
            return Err(format!("void, void: {s1}, {s2}"));
        }
        refused_with(c, &format!("SELECT * FROM exactly.post_hold({h})"), &["55000"]).map(|_| ())
    });
    let mut tiny = String::new();
    a.step("hold past its timeout: post refused, expire_holds", |c, _| {
        tiny = one(c, &format!("SELECT id FROM exactly.hold({alice}, {bob}, '5', timeout => '1 millisecond')"))?;
        run(c, "SELECT pg_catalog.pg_sleep(0.02)")?;
        refused_with(c, &format!("SELECT * FROM exactly.post_hold({tiny})"), &["55000"])?;
        let n = one(c, "SELECT exactly.expire_holds()")?;
        if n == "0" {
            return Err("expire_holds released nothing".into());
        }
        let s = one(c, &format!("SELECT state FROM exactly.holds WHERE id OPERATOR(pg_catalog.=) {tiny}"))?;
        if s != "expired" {
            return Err(format!("state {s}"));
        }
        Ok(())
    });
    a.step("hold past its timeout released by a touch, and by void", |c, _| {
        let h1 = one(c, &format!("SELECT id FROM exactly.hold({alice}, {bob}, '2', timeout => '1 millisecond')"))?;
        let h2 = one(c, &format!("SELECT id FROM exactly.hold({bob}, {fees}, '1', timeout => '1 millisecond')"))?;
        run(c, "SELECT pg_catalog.pg_sleep(0.02)")?;
        run(c, &format!("SELECT * FROM exactly.transfer({fees}, {alice}, '0.25', event_at => '2000-01-01 00:00:00+00')"))?;
        let s1 = one(c, &format!("SELECT state FROM exactly.void_hold({h1})"))?;
        let s2 = one(c, &format!("SELECT state FROM exactly.holds WHERE id OPERATOR(pg_catalog.=) {h2}"))?;
        if s1 != "expired" || s2 != "expired" {
            return Err(format!("void of an expired hold: {s1}; hold touched after expiry: {s2}"));
        }
        Ok(())
    });
    a.step("balance_at and verify_ledger", |c, k| {
        // alice 100 - 30 + 10 - 42 + 0.25 = 38.25 (the 0.25 happened in 2000)
        let now = one(c, &format!("SELECT exactly.balance_at({alice}, pg_catalog.now())"))?;
        same_num("balance_at(alice, now())", &now, "38.25")?;
        let then = one(c, &format!("SELECT exactly.balance_at({alice}, '2000-01-01 00:00:00+00')"))?;
        same_num("balance_at(alice, 2000)", &then, "0.25")?;
        refused_with(c, &format!("SELECT exactly.balance_at({}, pg_catalog.now())", n("nobody")), &["02000"])?;
        let bad = col(c, "SELECT account FROM exactly.verify_ledger() WHERE NOT ok")?;
        if !bad.is_empty() {
            return Err(format!("verify_ledger: {bad:?}"));
        }
        col(c, &format!("SELECT ok FROM exactly.verify_ledger({alice})"))?;
        for (acct, want) in [("alice", "38.25"), ("bob", "61.5"), ("fees", "0.25")] {
            same_num(acct, &balance(k, &format!("{p}{acct}")), want)?;
        }
        let pending = one(
            k,
            &format!("SELECT pending_debits::text || '/' || pending_credits::text FROM exactly.accounts WHERE account = {alice}"),
        )?;
        if pending != "0/0" {
            return Err(format!("alice pending {pending}"));
        }
        ledger_ok(k)
    });
    a.step("unknown holds and bad input", |c, _| {
        refused_with(c, "SELECT * FROM exactly.post_hold(-1)", &["02000"])?;
        refused_with(c, "SELECT * FROM exactly.void_hold(987654321)", &["02000"])?;
        refused_with(c, "SELECT * FROM exactly.transfers('{\"from\": 1}')", &["22023"])?;
        refused_with(c, &format!("SELECT * FROM exactly.hold({alice}, {bob}, '1', timeout => '-1 second')"), &["22023"]).map(|_| ())
    });
}

fn hostile_run(role: &str) {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin
        .batch_execute("CREATE ROLE hostile LOGIN; GRANT CREATE ON SCHEMA public TO hostile; CREATE ROLE app LOGIN;")
        .unwrap();
    if role == "app" {
        admin.batch_execute("SELECT exactly.grant_usage('app')").unwrap();
    }
    cluster
        .connect_as("hostile")
        .batch_execute(&hostile_script())
        .unwrap_or_else(|e| panic!("planting the hostile objects: {}", describe(&e)));
    let mut faults = Faults::default();
    for (i, path) in ["public, pg_catalog", "\"$user\", public"].iter().enumerate() {
        let mut a = Attack::new(&cluster, role, path);
        hostile_scenario(&mut a, &format!("{role}{i}-"));
        faults.0.extend(a.faults.0);
    }
    faults.finish();
}

/// The superuser calls every new function with hostile objects first on its search_path.
#[test]
fn hostile_objects_never_run_as_superuser() {
    hostile_run("postgres");
}

/// The same as an application role given grant_usage.
#[test]
fn hostile_objects_never_run_as_app_role() {
    hostile_run("app");
}

// ---------------------------------------------------------------------------------------
// privileges

#[test]
fn app_role_uses_the_functions_and_cannot_write_state() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN; CREATE ROLE nobody LOGIN; SELECT exactly.grant_usage('app');
             SELECT exactly.append_payment('p-alice', 100);",
        )
        .unwrap();
    let mut app = cluster.connect_as("app");
    let mut f = Faults::default();
    let mut h = String::new();
    f.check("app calls every new function", (|| {
        run(&mut app, "INSERT INTO exactly.accounts (account, min_balance, max_balance, currency) VALUES ('p-bob', -10, 500, NULL)")?;
        run(&mut app, "SELECT * FROM exactly.transfer('p-alice', 'p-bob', 10, idempotency_key => 'a1', metadata => '{\"x\": 1}', event_at => now())")?;
        run(&mut app, r#"SELECT * FROM exactly.transfers('[{"from": "p-bob", "to": "p-alice", "amount": 1}]', idempotency_key => 'a2')"#)?;
        h = one(&mut app, "SELECT id FROM exactly.hold('p-alice', 'p-bob', 5, timeout => '1 hour', idempotency_key => 'a1', metadata => '[]')")?;
        run(&mut app, &format!("SELECT * FROM exactly.post_hold({h}, 2)"))?;
        let h2 = one(&mut app, "SELECT id FROM exactly.hold('p-alice', 'p-bob', 5)")?;
        run(&mut app, &format!("SELECT * FROM exactly.void_hold({h2})"))?;
        run(&mut app, "SELECT exactly.expire_holds()")?;
        same_num("balance_at", &one(&mut app, "SELECT exactly.balance_at('p-alice', now())")?, "89")?;
        run(&mut app, "SELECT * FROM exactly.verify_ledger()")?;
        run(&mut app, "SELECT * FROM exactly.append_payment('p-alice', 1)")?;
        for t in ["transfers", "holds", "accounts", "payments"] {
            run(&mut app, &format!("SELECT * FROM exactly.{t}"))?;
        }
        Ok(())
    })());
    let before = digest(&mut admin);
    let denied: Vec<String> = vec![
        "INSERT INTO exactly.accounts (account, balance) VALUES ('p-rich', 1000000)".into(),
        "INSERT INTO exactly.accounts (account, entries) VALUES ('p-x', 5)".into(),
        "INSERT INTO exactly.accounts (account, pending_debits) VALUES ('p-x', -1000)".into(),
        "INSERT INTO exactly.accounts (account, pending_credits) VALUES ('p-x', -1000)".into(),
        "UPDATE exactly.accounts SET balance = 1000000 WHERE account = 'p-alice'".into(),
        "UPDATE exactly.accounts SET pending_debits = 0".into(),
        "UPDATE exactly.accounts SET pending_credits = 0".into(),
        "UPDATE exactly.accounts SET min_balance = NULL, max_balance = NULL".into(),
        "UPDATE exactly.accounts SET currency = 'USD'".into(),
        "DELETE FROM exactly.accounts".into(),
        "TRUNCATE exactly.accounts".into(),
        "SELECT * FROM exactly.accounts FOR UPDATE".into(),
        "INSERT INTO exactly.transfers (from_account, to_account, amount) VALUES ('p-bob', 'p-alice', 1000)".into(),
        "UPDATE exactly.transfers SET amount = 0".into(),
        "DELETE FROM exactly.transfers".into(),
        "TRUNCATE exactly.transfers".into(),
        "INSERT INTO exactly.holds (from_account, to_account, amount, state) VALUES ('p-bob', 'p-alice', 1, 'pending')".into(),
        format!("UPDATE exactly.holds SET state = 'voided' WHERE id = {h}"),
        "UPDATE exactly.holds SET expires_at = now() - interval '1 day'".into(),
        "DELETE FROM exactly.holds".into(),
        "TRUNCATE exactly.holds".into(),
        "SELECT * FROM exactly.holds FOR UPDATE".into(),
        "INSERT INTO exactly.payments (account, amount, running_balance) VALUES ('p-alice', 1000, 1089)".into(),
        "UPDATE exactly.payments SET amount = 0".into(),
        "DELETE FROM exactly.payments".into(),
        "TRUNCATE exactly.payments".into(),
        "SELECT exactly.grant_usage('nobody')".into(),
        "CREATE TRIGGER t BEFORE INSERT ON exactly.transfers FOR EACH ROW EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'amount')".into(),
        "ALTER TABLE exactly.holds DISABLE TRIGGER ALL".into(),
        "CREATE POLICY p ON exactly.accounts USING (true)".into(),
    ];
    for sql in &denied {
        f.check(&format!("app: {sql}"), refused_with(&mut app, sql, &["42501"]).map(|_| ()));
    }
    f.check("the refused statements changed nothing", {
        let after = digest(&mut admin);
        if after == before { Ok(()) } else { Err("state changed".into()) }
    });
    let mut nobody = cluster.connect_as("nobody");
    for sql in [
        "SELECT * FROM exactly.transfer('p-alice', 'p-bob', 1)",
        r#"SELECT * FROM exactly.transfers('[{"from": "p-alice", "to": "p-bob", "amount": 1}]')"#,
        "SELECT * FROM exactly.hold('p-alice', 'p-bob', 1)",
        "SELECT * FROM exactly.post_hold(1)",
        "SELECT * FROM exactly.void_hold(1)",
        "SELECT exactly.expire_holds()",
        "SELECT exactly.balance_at('p-alice', now())",
        "SELECT * FROM exactly.verify_ledger()",
        "SELECT * FROM exactly.transfers",
        "SELECT * FROM exactly.holds",
        "INSERT INTO exactly.accounts (account) VALUES ('p-nobody')",
    ] {
        f.check(&format!("role without grant_usage: {sql}"), refused_with(&mut nobody, sql, &["42501"]).map(|_| ()));
    }
    f.check("ledger", ledger_ok(&mut admin));
    f.finish();
}

// ---------------------------------------------------------------------------------------
// weird input

#[test]
fn weird_input_gets_its_documented_sqlstate_and_changes_nothing() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(
        "INSERT INTO exactly.accounts (account, currency) VALUES ('w-eur', 'EUR'), ('w-usd', 'USD');
         INSERT INTO exactly.accounts (account, min_balance) VALUES ('w-min', 0);
         SELECT exactly.append_payment('w-a', 100);
         SELECT exactly.append_payment('w-min', 10);
         SELECT exactly.append_payment('w-b', 1);",
    )
    .unwrap();
    let hold = one(&mut c, "SELECT id FROM exactly.hold('w-a', 'w-b', 5)").unwrap();
    let mut f = Faults::default();
    let leg = |body: &str| format!("SELECT * FROM exactly.transfers('[{{\"from\": \"w-b\", \"to\": \"w-a\", \"amount\": 1}}, {body}]')");
    let many = |n: usize| {
        let one = r#"{"from": "w-a", "to": "w-b", "amount": 0.01}"#;
        format!("SELECT count(*) FROM exactly.transfers('[{}]')", vec![one; n].join(","))
    };
    let max = format!("{}.{}", "9".repeat(131_072), "9".repeat(16_383));
    let cases: Vec<(String, &[&str])> = vec![
        // transfer
        ("SELECT * FROM exactly.transfer(NULL, 'w-b', 1)".into(), &["22004"]),
        ("SELECT * FROM exactly.transfer('w-a', NULL, 1)".into(), &["22004"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.transfer(NULL, NULL, NULL, NULL, NULL, NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.transfer('', 'w-b', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', '', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-a', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', 0)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', '0.000000')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', -1)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', 'NaN')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', 'Infinity')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', '-Infinity')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-eur', 'w-usd', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.transfer('w-min', 'w-b', 10.0001)".into(), &["23514"]),
        // below min_balance, and w-b's balance would pass numeric's range: either refusal
        (format!("SELECT * FROM exactly.transfer('w-min', 'w-b', '{max}')"), &["23514", "22003"]),
        (format!("SELECT * FROM exactly.transfer('w-min', 'w-fresh', '{max}')"), &["23514"]),
        ("SELECT * FROM exactly.transfer('w-a', 'w-b', 1, idempotency_key => NULL, metadata => NULL, event_at => NULL) WHERE false".into(), &[]),
        // transfers: legs
        ("SELECT * FROM exactly.transfers(NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.transfers('null')".into(), &["22023", "22004"]),
        ("SELECT * FROM exactly.transfers('{}')".into(), &["22023"]),
        (r#"SELECT * FROM exactly.transfers('{"from": "w-a", "to": "w-b", "amount": 1}')"#.into(), &["22023"]),
        (r#"SELECT * FROM exactly.transfers('"x"')"#.into(), &["22023"]),
        ("SELECT * FROM exactly.transfers('7')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfers('[]')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfers('[1]')".into(), &["22023"]),
        ("SELECT * FROM exactly.transfers('[null]')".into(), &["22023", "22004"]),
        ("SELECT * FROM exactly.transfers('[[\"w-a\", \"w-b\", 1]]')".into(), &["22023"]),
        (leg(r#"{"from": null, "to": "w-b", "amount": 1}"#), &["22004"]),
        (leg(r#"{"from": "w-a", "to": null, "amount": 1}"#), &["22004"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": null}"#), &["22004"]),
        (leg(r#"{"to": "w-b", "amount": 1}"#), &["22004", "22023"]),
        (leg(r#"{"from": "w-a", "amount": 1}"#), &["22004", "22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b"}"#), &["22004", "22023"]),
        (leg(r#"{}"#), &["22004", "22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": 1, "memo": "x"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": 1, "": 1}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": 1, "From": "w-a"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "NaN"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "Infinity"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "-Infinity"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "abc"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": ""}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": " 1"}"#), &["22023", "SUCCESS"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "0x10"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": true}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": [1]}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": {"v": 1}}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": 0}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": -0.01}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "-5"}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-b", "amount": "1e131072"}"#), &["22023", "22003"]),
        (leg(r#"{"from": 1, "to": "w-b", "amount": 1}"#), &["22023"]),
        (leg(r#"{"from": ["w-a"], "to": "w-b", "amount": 1}"#), &["22023"]),
        (leg(r#"{"from": "", "to": "w-b", "amount": 1}"#), &["22023"]),
        (leg(r#"{"from": "w-a", "to": "w-a", "amount": 1}"#), &["22023"]),
        (leg(r#"{"from": "w-eur", "to": "w-usd", "amount": 1}"#), &["22023"]),
        (leg(r#"{"from": "w-min", "to": "w-b", "amount": 11}"#), &["23514"]),
        (many(10_001), &["22023"]),
        // hold
        ("SELECT * FROM exactly.hold(NULL, 'w-b', 1)".into(), &["22004"]),
        ("SELECT * FROM exactly.hold('w-a', NULL, 1)".into(), &["22004"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-a', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('', 'w-a', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 0)".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', -3)".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 'NaN')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 'Infinity')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-eur', 'w-usd', 1)".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-min', 'w-b', 10.5)".into(), &["23514"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 1, timeout => '0 seconds')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 1, timeout => '-1 second')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 1, timeout => '-1 day 23 hours')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 1, timeout => '-1 microsecond')".into(), &["22023"]),
        ("SELECT * FROM exactly.hold('w-a', 'w-b', 1, timeout => '1 month -31 days')".into(), &["22023", "SUCCESS"]),
        // post / void
        ("SELECT * FROM exactly.post_hold(NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.post_hold(NULL, 1)".into(), &["22004"]),
        ("SELECT * FROM exactly.post_hold(-1)".into(), &["02000"]),
        ("SELECT * FROM exactly.post_hold(0)".into(), &["02000"]),
        ("SELECT * FROM exactly.post_hold(9223372036854775807)".into(), &["02000"]),
        (format!("SELECT * FROM exactly.post_hold({hold}, 0)"), &["22023"]),
        (format!("SELECT * FROM exactly.post_hold({hold}, -1)"), &["22023"]),
        (format!("SELECT * FROM exactly.post_hold({hold}, 'NaN')"), &["22023"]),
        (format!("SELECT * FROM exactly.post_hold({hold}, 'Infinity')"), &["22023"]),
        (format!("SELECT * FROM exactly.post_hold({hold}, 5.000001)"), &["22023", "55000"]),
        ("SELECT * FROM exactly.void_hold(NULL)".into(), &["22004"]),
        ("SELECT * FROM exactly.void_hold(-1)".into(), &["02000"]),
        ("SELECT * FROM exactly.void_hold(0)".into(), &["02000"]),
        ("SELECT * FROM exactly.void_hold(-9223372036854775808)".into(), &["02000"]),
        // history
        ("SELECT exactly.balance_at(NULL, now())".into(), &["22004"]),
        ("SELECT exactly.balance_at('w-a', NULL)".into(), &["22004"]),
        ("SELECT exactly.balance_at('w-nobody', now())".into(), &["02000"]),
        ("SELECT exactly.balance_at('', now())".into(), &["02000", "22023"]),
        ("SELECT exactly.balance_at('w-a', 'infinity') = 1 OR true".into(), &["SUCCESS"]),
        ("SELECT exactly.balance_at('w-a', '-infinity') = 1 OR true".into(), &["SUCCESS"]),
        // account inserts
        ("INSERT INTO exactly.accounts (account, currency) VALUES ('w-x', '')".into(), &["22023", "23514"]),
        ("INSERT INTO exactly.accounts (account, max_balance) VALUES ('w-x', 'NaN')".into(), &["22023", "23514"]),
        ("INSERT INTO exactly.accounts (account, max_balance) VALUES ('w-x', 'Infinity')".into(), &["22023", "23514"]),
        ("INSERT INTO exactly.accounts (account, min_balance) VALUES ('w-x', '-Infinity')".into(), &["22023", "23514"]),
        ("INSERT INTO exactly.accounts (account) VALUES ('')".into(), &["22023", "23514"]),
        ("INSERT INTO exactly.accounts (account) VALUES (NULL)".into(), &["23502", "22004"]),
        ("INSERT INTO exactly.accounts (account, currency) VALUES ('w-a', 'EUR')".into(), &["23505"]),
    ];
    for (sql, codes) in &cases {
        if codes.is_empty() {
            continue;
        }
        let before = digest(&mut c);
        let label = format!("{sql:.160}");
        let result = raw(&mut c, sql);
        match (result, codes.contains(&"SUCCESS")) {
            (Ok(_), true) => {
                println!("accepted: {label}");
                continue;
            }
            (Ok(rows), false) => f.0.push(format!("{label}: succeeded ({:.200}), expected {codes:?}", format!("{rows:?}"))),
            (Err(e), _) => {
                let got = code_of(&e);
                if !codes.contains(&got.as_str()) {
                    f.0.push(format!("{label}: expected {codes:?}, got {}", describe(&e)));
                } else if let Some(db) = e.as_db_error() {
                    println!("{got} {label}: {}", db.message());
                }
            }
        }
        if digest(&mut c) != before {
            f.0.push(format!("{label}: the refused call changed the ledger"));
        }
        if c.is_closed() {
            panic!("{label}: connection lost");
        }
    }
    // every bad case once more inside a transaction with a savepoint: the transaction goes on
    // w-0 sorts before every account the refused calls name: no 40001
    c.batch_execute("BEGIN; SELECT exactly.append_payment('w-0', 1)").unwrap();
    for (sql, codes) in cases.iter().filter(|(_, codes)| !codes.is_empty() && !codes.contains(&"SUCCESS")).take(40) {
        c.batch_execute("SAVEPOINT s").unwrap();
        if let Ok(_) = raw(&mut c, sql) {
            f.0.push(format!("{sql:.160}: succeeded in a transaction, expected {codes:?}"));
        }
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    c.batch_execute("COMMIT").unwrap();
    f.check("the transaction went on after refusals", same_num("w-0", &balance(&mut c, "w-0"), "1"));

    // huge timeouts: refused or kept, never an internal error
    for timeout in ["100 years", "1000000 years", "178000000 years"] {
        let before = digest(&mut c);
        match raw(&mut c, &format!("SELECT id, expires_at FROM exactly.hold('w-a', 'w-b', 1, timeout => '{timeout}')")) {
            Ok(rows) => {
                println!("timeout {timeout}: accepted, expires_at {:?}", rows[0][1]);
                let id = rows[0][0].clone().unwrap();
                run(&mut c, &format!("SELECT exactly.void_hold({id})")).unwrap();
            }
            Err(e) => {
                let got = code_of(&e);
                println!("timeout {timeout}: {}", describe(&e));
                if timeout == "100 years" || got == "XX000" || !got.starts_with("22") {
                    f.0.push(format!("timeout {timeout}: {}", describe(&e)));
                }
                if digest(&mut c) != before {
                    f.0.push(format!("timeout {timeout}: the refused call changed the ledger"));
                }
            }
        }
    }
    // numeric overflow of a balance: refused, never XX000
    let before = digest(&mut c);
    let r1 = raw(&mut c, &format!("SELECT * FROM exactly.transfer('w-ovf-a', 'w-ovf-b', '{max}')"));
    let r2 = raw(&mut c, &format!("SELECT * FROM exactly.transfer('w-ovf-a', 'w-ovf-b', '{max}')"));
    match (&r1, &r2) {
        (Ok(_), Err(e)) if code_of(e) == "22003" => println!("overflow: {}", describe(e)),
        _ => f.0.push(format!(
            "the largest numeric transferred twice: first {:?}, second {:?} (expected success, then 22003)",
            r1.as_ref().map(|_| "ok").map_err(describe),
            r2.as_ref().map(|_| "ok").map_err(describe)
        )),
    }
    let _ = before;

    // odd but valid input works exactly
    let names = [
        "w-o'brien \"quoted\"".to_string(),
        "w-ünïcødé ✓ 日本".to_string(),
        format!("w-{}", "x".repeat(10_000)),
        "w-$1 %s \\ ; DROP TABLE exactly.accounts; --".to_string(),
        "w-\t\n tab and newline".to_string(),
        "   ".to_string(),
    ];
    for (i, name) in names.iter().enumerate() {
        let next = &names[(i + 1) % names.len()];
        let legs = serde_json::json!([{"from": name, "to": next, "amount": "1e3"}, {"from": next, "to": name, "amount": 1.5e2}]).to_string();
        f.check(&format!("odd name {:.40}", name), (|| {
            run(&mut c, &format!("SELECT * FROM exactly.transfer({}, {}, 0.5)", lit(name), lit(next)))?;
            let rows = run(&mut c, &format!("SELECT leg, amount FROM exactly.transfers({}) ORDER BY leg", lit(&legs)))?;
            if rows.len() != 2 {
                return Err(format!("{rows:?}"));
            }
            same_num("leg 1 (\"1e3\")", rows[0][1].as_deref().unwrap_or(""), "1000")?;
            same_num("leg 2 (1.5e2)", rows[1][1].as_deref().unwrap_or(""), "150")?;
            let h = one(&mut c, &format!("SELECT id FROM exactly.hold({}, {}, 2)", lit(name), lit(next)))?;
            run(&mut c, &format!("SELECT * FROM exactly.post_hold({h}, 1)"))?;
            Ok(())
        })());
    }
    // each name: -0.5 -1000 +150 -1 (as from) and +0.5 +1000 -150 +1 (as to) = 0
    for name in &names {
        f.check(&format!("odd name {:.40}: balance", name), same_num("balance", &balance(&mut c, name), "0"));
    }
    // 10,000 legs: the documented maximum
    let started = Instant::now();
    let before_a = balance(&mut c, "w-a");
    match raw(&mut c, &many(10_000)) {
        Ok(rows) => {
            println!("10,000 legs: {:?} in {:?}", rows[0][0], started.elapsed());
            f.check("10,000 legs", same_num("rows", rows[0][0].as_deref().unwrap_or(""), "10000"));
            let want = format!("{}", before_a.parse::<f64>().unwrap() - 100.0);
            f.check("10,000 legs: w-a", same_num("w-a", &balance(&mut c, "w-a"), &want));
        }
        Err(e) => f.0.push(format!("10,000 legs: {}", describe(&e))),
    }
    f.check("ledger", ledger_ok(&mut c));
    f.finish();
}

// ---------------------------------------------------------------------------------------
// cancels and timeouts while waiting for a locked account

#[derive(Clone, Copy, Debug)]
enum Interrupt {
    StatementTimeout,
    Cancel,
    LockTimeout,
}

#[test]
fn waiting_call_is_undone_by_cancel_and_timeouts() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin
        .batch_execute("SELECT exactly.append_payment('t-a', 1000); SELECT exactly.append_payment('t-b', 1000);")
        .unwrap();
    let mut f = Faults::default();
    let started = Instant::now();
    let calls: &[(&str, &str)] = &[
        ("transfer", "SELECT * FROM exactly.transfer('t-a', 't-b', 5)"),
        ("transfers (descending)", r#"SELECT * FROM exactly.transfers('[{"from": "t-b", "to": "t-a", "amount": 1}, {"from": "t-a", "to": "t-b", "amount": 2}]')"#),
        ("hold", "SELECT * FROM exactly.hold('t-a', 't-b', 5)"),
        ("post_hold", "SELECT * FROM exactly.post_hold({H}, 3)"),
        ("void_hold", "SELECT * FROM exactly.void_hold({H})"),
    ];
    for (name, sql) in calls {
        for interrupt in [Interrupt::StatementTimeout, Interrupt::Cancel, Interrupt::LockTimeout] {
            for in_tx in [false, true] {
                let what = format!("{name} × {interrupt:?} × {}", if in_tx { "transaction + savepoint" } else { "autocommit" });
                let h = one(&mut admin, "SELECT id FROM exactly.hold('t-a', 't-b', 7)").unwrap();
                let sql = sql.replace("{H}", &h);
                let before = digest(&mut admin);
                let c_before = balance(&mut admin, "t-0");
                // the blocker appends to t-b and keeps its transaction open
                let mut blocker = cluster.connect();
                blocker.batch_execute("BEGIN; SELECT exactly.append_payment('t-b', 1)").unwrap();
                let mut victim = cluster.connect();
                let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
                if in_tx {
                    victim.batch_execute("BEGIN; SELECT exactly.append_payment('t-0', 1); SAVEPOINT s").unwrap();
                }
                match interrupt {
                    Interrupt::StatementTimeout => victim.batch_execute("SET statement_timeout = '300ms'").unwrap(),
                    Interrupt::LockTimeout => victim.batch_execute("SET lock_timeout = '300ms'").unwrap(),
                    Interrupt::Cancel => {}
                }
                let t0 = Instant::now();
                let call = sql.clone();
                let (result, victim) = std::thread::scope(|s| {
                    let handle = s.spawn(move || {
                        let r = raw(&mut victim, &call).map(|_| ()).map_err(|e| (code_of(&e), describe(&e)));
                        (r, victim)
                    });
                    if let Interrupt::Cancel = interrupt {
                        // cancel once the call waits on a lock; not if it finished without waiting
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !handle.is_finished() && Instant::now() < deadline {
                            let w: String = admin
                                .query_one("SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = $1", &[&pid])
                                .unwrap()
                                .get(0);
                            if w == "Lock" {
                                admin.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    handle.join().unwrap()
                });
                let mut victim = victim;
                let elapsed = t0.elapsed();
                let want = match interrupt {
                    Interrupt::LockTimeout => "55P03",
                    _ => "57014",
                };
                f.check(&what, match &result {
                    Ok(()) => Err("the call did not wait for the locked account: it succeeded".into()),
                    Err((code, msg)) if code == want => {
                        if elapsed > Duration::from_secs(10) { Err(format!("took {elapsed:?}")) } else { Ok(()) }
                    }
                    Err((_, msg)) => Err(format!("expected {want}, got {msg}")),
                });
                // the session is usable; a transaction goes on after ROLLBACK TO SAVEPOINT
                let usable = if in_tx {
                    victim
                        .batch_execute("ROLLBACK TO SAVEPOINT s; SELECT exactly.append_payment('t-0', 1); COMMIT")
                        .map_err(|e| describe(&e))
                } else {
                    victim.batch_execute("SELECT 1").map_err(|e| describe(&e))
                };
                f.check(&format!("{what}: session usable"), usable);
                victim.batch_execute("RESET statement_timeout; RESET lock_timeout").ok();
                blocker.batch_execute("ROLLBACK").unwrap();
                let after = digest(&mut admin);
                if in_tx {
                    let c_after = balance(&mut admin, "t-0");
                    let want_c = if c_before == "none" { 2.0 } else { c_before.parse::<f64>().unwrap() + 2.0 };
                    f.check(&format!("{what}: the transaction's earlier work committed"), same_num("t-0", &c_after, &want_c.to_string()));
                } else if after != before {
                    f.check(&format!("{what}: call undone"), Err("the ledger changed".into()));
                }
                // nothing of the call stayed: no transfer or hold change for t-a/t-b
                f.check(&format!("{what}: hold {h} untouched"), (|| {
                    let s = one(&mut admin, &format!("SELECT state FROM exactly.holds WHERE id = {h}"))?;
                    if s != "pending" { return Err(format!("state {s}")); }
                    Ok(())
                })());
                // and the same call works once the blocker is gone
                f.check(&format!("{what}: the call afterwards"), run(&mut victim, &sql).map(|_| ()));
                f.check(&format!("{what}: ledger"), ledger_ok(&mut admin));
            }
        }
    }
    println!("cancel/timeouts: {:?}", started.elapsed());
    f.finish();
}

// ---------------------------------------------------------------------------------------
// no deadlock

#[test]
fn no_deadlock_with_legs_in_descending_order() {
    let cluster = Cluster::start();
    let mut f = Faults::default();
    // deterministic: A holds d-z; B's legs name d-z first, then d-y, d-a (descending)
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    let mut admin = cluster.connect();
    admin.batch_execute("SELECT exactly.append_payment('d-a', 100), exactly.append_payment('d-y', 100), exactly.append_payment('d-z', 100)").unwrap();
    a.batch_execute("BEGIN; SELECT exactly.append_payment('d-z', 1)").unwrap();
    let pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let (rb, ra) = std::thread::scope(|s| {
        let hb = s.spawn(|| {
            raw(&mut b, r#"SELECT * FROM exactly.transfers('[{"from": "d-z", "to": "d-y", "amount": 1}, {"from": "d-y", "to": "d-a", "amount": 1}]')"#)
                .map(|r| r.len())
                .map_err(|e| describe(&e))
        });
        wait_until_blocked(&mut admin, pid);
        // A now wants d-a, which sorts before d-z (held by A) and is held by B
        let ra = raw(&mut a, "SELECT * FROM exactly.transfer('d-a', 'd-y', 1)").map(|_| ()).map_err(|e| (code_of(&e), describe(&e)));
        let _ = a.batch_execute("ROLLBACK");
        (hb.join().unwrap(), ra)
    });
    f.check("A: transfer to an account B holds", match &ra {
        Err((c, _)) if c == "40001" => Ok(()),
        Ok(()) => Ok(()),
        Err((_, m)) => Err(format!("expected 40001 (or success), got {m}")),
    });
    println!("deterministic: A {ra:?}, B {rb:?}");
    f.check("B: the descending legs", match rb {
        Ok(2) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // a random load: descending legs, holds, posts, appends, two calls per transaction
    let accounts: Vec<String> = (0..6).map(|i| format!("r-{i}")).collect();
    let results = common::at_once(&cluster, 12, move |i, c| {
        let mut rng = XorShift(0x9e37_79b9 + i as u64 * 7919);
        let deadline = Instant::now() + Duration::from_secs(6);
        let (mut ok, mut retry, mut bad) = (0usize, 0usize, Vec::new());
        let names: Vec<String> = (0..6).map(|i| format!("r-{i}")).collect();
        while Instant::now() < deadline {
            let mut stmts = Vec::new();
            for _ in 0..2 {
                let mut picked: Vec<&String> = (0..(2 + rng.next() % 3)).map(|_| &names[(rng.next() % 6) as usize]).collect();
                picked.sort();
                picked.dedup();
                picked.reverse(); // descending
                if picked.len() < 2 {
                    continue;
                }
                match rng.next() % 4 {
                    0 | 1 => {
                        let legs: Vec<String> = picked
                            .windows(2)
                            .map(|w| format!(r#"{{"from": "{}", "to": "{}", "amount": {}}}"#, w[0], w[1], 1 + rng.next() % 9))
                            .collect();
                        stmts.push(format!("SELECT count(*) FROM exactly.transfers('[{}]')", legs.join(",")));
                    }
                    2 => stmts.push(format!(
                        "SELECT count(*) FROM exactly.post_hold((SELECT id FROM exactly.hold('{}', '{}', 3)), 2)",
                        picked[0], picked[1]
                    )),
                    _ => stmts.push(format!("SELECT exactly.append_payment('{}', {})", picked[0], (rng.next() % 11) as i64 - 5)),
                }
            }
            let sql = format!("BEGIN; {}; COMMIT", stmts.join("; "));
            match c.batch_execute(&sql) {
                Ok(()) => ok += 1,
                Err(e) => {
                    let code = code_of(&e);
                    let _ = c.batch_execute("ROLLBACK");
                    if code == "40001" {
                        retry += 1;
                    } else {
                        bad.push(describe(&e));
                    }
                }
            }
        }
        (ok, retry, bad)
    });
    let (mut ok, mut retry) = (0, 0);
    for (o, r, bad) in results {
        ok += o;
        retry += r;
        for b in bad.into_iter().take(3) {
            f.0.push(format!("random load: {b}"));
        }
    }
    println!("random load: {ok} transactions committed, {retry} refused with 40001");
    f.check("random load committed something", if ok > 0 { Ok(()) } else { Err("nothing committed".into()) });
    f.check("ledger after the load", ledger_ok(&mut admin));
    let names = accounts.iter().map(|a| lit(a)).collect::<Vec<_>>().join(", ");
    f.check("transfers sum to zero", (|| {
        let row = run(&mut admin, &format!(
            "SELECT (SELECT coalesce(sum(balance), 0) FROM exactly.accounts WHERE account IN ({names}))::text,
                    (SELECT coalesce(sum(amount), 0) FROM exactly.payments WHERE account IN ({names}) AND transfer_id IS NULL)::text,
                    (SELECT coalesce(sum(pending_debits), 0) - coalesce(sum(pending_credits), 0) FROM exactly.accounts WHERE account IN ({names}))::text"
        ))?;
        let r = &row[0];
        same_num("sum of balances vs appends", r[0].as_deref().unwrap_or(""), r[1].as_deref().unwrap_or(""))?;
        same_num("pending debits - credits", r[2].as_deref().unwrap_or(""), "0")
    })());
    f.finish();
}
