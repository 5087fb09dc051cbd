//! A database numbered as a shard (`exactly.set_shard`, docs/router.md): the ids it hands out
//! carry its number, whichever way they are made, and the number cannot be set wrongly.
//! The router that reads them is tested in tests/sharded.rs.

mod common;

use common::text::one;
use common::{sqlstate, Client, Cluster};

fn value(c: &mut Client, sql: &str) -> String {
    one(c, sql).unwrap()
}

#[test]
fn a_numbered_shard_puts_its_number_in_every_raffle_hold_and_claim_id() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(
        "SELECT exactly.set_shard(3);
         CREATE TABLE jobs (id int PRIMARY KEY, done_at timestamptz);
         INSERT INTO jobs SELECT g FROM generate_series(1, 10) g;",
    )
    .unwrap();
    for made in [
        "SELECT exactly.create_raffle(10) >> 48",
        "INSERT INTO exactly.raffles (tickets_requested) VALUES (10) RETURNING id >> 48",
        "SELECT id >> 48 FROM exactly.hold('3:a', '3:b', 1)",
    ] {
        assert_eq!(value(&mut c, made), "3", "{made}");
    }
    // the identity goes on from there: ids stay unique and in the shard's range
    assert_eq!(
        value(&mut c, "SELECT count(DISTINCT id)::text || ' ' || bool_and(id >> 48 = 3)::text FROM exactly.raffles"),
        "2 true"
    );
    for _ in 0..3 {
        let claim = value(&mut c, "SELECT DISTINCT claim::text FROM exactly.claim_batch('jobs', 'done_at', 3)");
        assert!(claim.starts_with("0003"), "claim id {claim} does not start with the shard's number");
        // the rest of it is still random
        assert_ne!(&claim[4..8], "0000", "{claim}");
    }
    // what a router wraps around every call's first argument
    assert_eq!(value(&mut c, "SELECT exactly.on_shard(3, 'tenant'::text)"), "tenant");
    assert_eq!(sqlstate(c.execute("SELECT exactly.on_shard(2, 'tenant'::text)", &[])), "55000");
    // tickets of a shard's raffle work as anywhere
    assert_eq!(value(&mut c, "SELECT exactly.batch_create_tickets(exactly.create_raffle(5), 10)"), "5");
}

#[test]
fn a_shard_number_is_set_once_before_use_and_only_by_a_superuser() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    assert_eq!(sqlstate(c.execute("SELECT exactly.on_shard(0, 1)", &[])), "55000", "not numbered yet");
    assert_eq!(sqlstate(c.execute("SELECT exactly.set_shard(NULL)", &[])), "22004");
    assert_eq!(sqlstate(c.execute("SELECT exactly.set_shard(-1)", &[])), "22023");
    assert_eq!(sqlstate(c.execute("SELECT exactly.set_shard(32768)", &[])), "22023");
    // a database in use: its raffle ids are below shard 1's range, so it may only be shard 0
    c.batch_execute("INSERT INTO exactly.raffles (tickets_requested) VALUES (1)").unwrap();
    assert_eq!(sqlstate(c.execute("SELECT exactly.set_shard(1)", &[])), "55000");
    c.batch_execute("SELECT exactly.set_shard(0); SELECT exactly.set_shard(0)").unwrap();
    assert_eq!(sqlstate(c.execute("SELECT exactly.set_shard(1)", &[])), "55000");
    assert_eq!(value(&mut c, "SELECT exactly.create_raffle(1)"), "2", "shard 0 keeps its ids");

    // holds and claims made before the number count too
    c.batch_execute("CREATE DATABASE second").unwrap();
    c.batch_execute("CREATE ROLE app LOGIN").unwrap();
    let mut second = cluster.config().dbname("second").connect(common::NoTls).unwrap();
    second
        .batch_execute("CREATE EXTENSION pg_exactly; SELECT exactly.hold('a', 'b', 1)")
        .unwrap();
    assert_eq!(sqlstate(second.execute("SELECT exactly.set_shard(2)", &[])), "55000");
    // the last number there is: its ids' range ends at 2^63 - 1
    c.batch_execute("CREATE DATABASE last").unwrap();
    let mut last = cluster.config().dbname("last").connect(common::NoTls).unwrap();
    last.batch_execute("CREATE EXTENSION pg_exactly; SELECT exactly.set_shard(32767)").unwrap();
    assert_eq!(value(&mut last, "SELECT exactly.create_raffle(1) >> 48"), "32767");

    // an application role may create raffles, and may not number the database
    c.batch_execute("SELECT exactly.grant_usage('app')").unwrap();
    let mut app = cluster.connect_as("app");
    assert_eq!(sqlstate(app.execute("SELECT exactly.set_shard(0)", &[])), "42501");
    assert_eq!(sqlstate(app.execute("DELETE FROM exactly.this_shard", &[])), "42501");
    assert_eq!(value(&mut app, "SELECT exactly.create_raffle(7) IS NOT NULL"), "t");
}
