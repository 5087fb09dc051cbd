//! Four shard clusters and a router cluster for the `pg_exactly_router` suites
//! (docs/router.md): each shard a throwaway cluster with pg_exactly, numbered with
//! `exactly.set_shard(k)`; the router a cluster whose database `postgres` has no pg_exactly,
//! only `pg_exactly_router` (and PL/Proxy), with the server `exactly` pointing at the four
//! shards' unix sockets and a user mapping for PUBLIC as `postgres` (trust auth).
//!
//! The five clusters are copies of one template data directory (initdb once per test
//! process, pg_exactly created in it, stopped cleanly), started side by side: a fixture
//! costs about a second instead of five initdb runs. The template is removed when the test
//! process exits (a small watcher started with it), or by the next run if that failed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::text::{describe, raw};
use super::{check, pg_bindir, server_command, Client, Cluster, PORT};

/// How many shards the fixture has (a power of two, as PL/Proxy wants).
pub const SHARDS: usize = 4;

const TEMPLATE_PREFIX: &str = "pg_exactly-shards-template-";

static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();

/// Templates left behind by test processes that are gone.
fn remove_stale_templates() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix(TEMPLATE_PREFIX) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The template data directory: a stopped cluster with pg_exactly created in `postgres`.
fn template() -> &'static Path {
    TEMPLATE.get_or_init(|| {
        remove_stale_templates();
        let cluster = Cluster::start();
        cluster.stop_fast();
        let dir = std::env::temp_dir().join(format!("{TEMPLATE_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::rename(cluster.dir.join("data"), dir.join("data")).unwrap();
        drop(cluster);
        // remove the template once this test process has exited
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; rm -rf '{dir}'",
                pid = std::process::id(),
                dir = dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        dir
    })
}

/// A new cluster, started, copied from the template (pg_exactly created in `postgres`).
fn cluster_from_template(template: &Path) -> Cluster {
    let dir = Cluster::new_dir();
    let bin = pg_bindir();
    check(
        "cp -a template",
        Command::new("cp")
            .arg("-a")
            .arg(template.join("data"))
            .arg(dir.join("data"))
            .output()
            .unwrap(),
    );
    let options = format!(
        "-c listen_addresses='' -k {} -p {PORT} -c max_connections=200 -c fsync=off \
         -c shared_buffers=32MB -c deadlock_timeout=100ms",
        dir.display()
    );
    std::fs::write(dir.join("options"), &options).unwrap();
    let cluster = Cluster { dir, bin };
    cluster.start_server();
    cluster
}

impl Cluster {
    /// `pg_ctl stop -m fast`: sessions are ended, a shutdown checkpoint is written; the next
    /// start needs no recovery.
    pub fn stop_fast(&self) {
        check(
            "pg_ctl stop -m fast",
            server_command(&self.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-m", "fast", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop")
                .output()
                .unwrap(),
        );
    }

    /// The libpq connection string of database `postgres` (no user: the user mapping says).
    pub fn conninfo(&self) -> String {
        format!("host={} port={PORT} dbname=postgres", self.dir.display())
    }
}

/// Four numbered shards and a router in front of them.
pub struct Shards {
    pub shards: Vec<Cluster>,
    pub router: Cluster,
}

impl Shards {
    /// Start the five clusters, number the shards, set the router up and check that
    /// `exactly.router_shards()` finds every shard ok.
    pub fn start() -> Shards {
        let template = template();
        let mut clusters: Vec<Cluster> = std::thread::scope(|s| {
            let started: Vec<_> = (0..=SHARDS)
                .map(|_| s.spawn(move || cluster_from_template(template)))
                .collect();
            started.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let router = clusters.pop().unwrap();
        for (k, shard) in clusters.iter().enumerate() {
            shard
                .connect()
                .batch_execute(&format!("SELECT exactly.set_shard({k})"))
                .unwrap_or_else(|e| panic!("exactly.set_shard({k}): {}", describe(&e)));
        }
        let partitions: Vec<String> = clusters
            .iter()
            .enumerate()
            .map(|(k, c)| format!("p{k} '{}'", c.conninfo()))
            .collect();
        let setup = format!(
            "DROP EXTENSION pg_exactly CASCADE;
             DROP SCHEMA IF EXISTS exactly CASCADE;
             CREATE EXTENSION pg_exactly_router CASCADE;
             CREATE SERVER exactly FOREIGN DATA WRAPPER plproxy OPTIONS ({});
             CREATE USER MAPPING FOR PUBLIC SERVER exactly OPTIONS (user 'postgres');",
            partitions.join(", ")
        );
        router.connect().batch_execute(&setup).unwrap_or_else(|e| {
            panic!(
                "setting the router up (is pg_exactly_router installed?): {}",
                describe(&e)
            )
        });
        let shards = Shards {
            shards: clusters,
            router,
        };
        let problems = shards.router_problems();
        assert!(problems.is_empty(), "router_shards(): {problems:?}");
        shards
    }

    /// What `exactly.router_shards()` finds wrong (empty when all four are ok and numbered
    /// 0..3 in order).
    pub fn router_problems(&self) -> Vec<String> {
        let mut c = self.router();
        let rows = match raw(
            &mut c,
            "SELECT shard::text, reachable::text, set_shard::text, ok::text, coalesce(problem, '')
             FROM exactly.router_shards() ORDER BY shard",
        ) {
            Ok(rows) => rows,
            Err(e) => return vec![format!("exactly.router_shards() failed: {}", describe(&e))],
        };
        let mut problems = Vec::new();
        if rows.len() != SHARDS {
            problems.push(format!("{} rows, expected {SHARDS}", rows.len()));
        }
        for (k, r) in rows.iter().enumerate() {
            let v = |i: usize| r[i].clone().unwrap_or_else(|| "NULL".into());
            if v(0) != k.to_string() || v(1) != "true" || v(2) != k.to_string() || v(3) != "true" {
                problems.push(format!(
                    "shard {} reachable {} set_shard {} ok {} problem {:?}",
                    v(0),
                    v(1),
                    v(2),
                    v(3),
                    v(4)
                ));
            }
        }
        problems
    }

    pub fn router(&self) -> Client {
        self.router.connect()
    }

    pub fn router_config(&self) -> postgres::Config {
        self.router.config()
    }

    pub fn shard(&self, k: usize) -> Client {
        self.shards[k].connect()
    }

    /// Run `sql` on every shard (tables of the application, created identically).
    pub fn on_every_shard(&self, sql: &str) {
        for (k, shard) in self.shards.iter().enumerate() {
            shard
                .connect()
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("on shard {k}: {}", describe(&e)));
        }
    }
}

/// `exactly.shard_for(key)` through the router, checked to be a shard number.
pub fn shard_for(router: &mut Client, key: &str) -> usize {
    let sql = format!(
        "SELECT exactly.shard_for('{}')::text",
        key.replace('\'', "''")
    );
    let rows = raw(router, &sql).unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    let k: usize = rows[0][0]
        .as_deref()
        .unwrap_or_else(|| panic!("{sql} returned NULL"))
        .parse()
        .unwrap();
    assert!(k < SHARDS, "{sql} returned {k}");
    k
}

/// Keys `{prefix}{i}`, `per_shard` of them on each shard (asking the router), in shard
/// order: [(key, shard)].
pub fn keys_on_every_shard(
    router: &mut Client,
    prefix: &str,
    per_shard: usize,
) -> Vec<(String, usize)> {
    let mut found: Vec<Vec<String>> = vec![Vec::new(); SHARDS];
    let mut i = 0;
    while found.iter().any(|f| f.len() < per_shard) {
        assert!(i < 10_000, "shard_for never reached some shard: {found:?}");
        let key = format!("{prefix}{i}");
        let k = shard_for(router, &key);
        if found[k].len() < per_shard {
            found[k].push(key);
        }
        i += 1;
    }
    found
        .into_iter()
        .enumerate()
        .flat_map(|(k, keys)| keys.into_iter().map(move |key| (key, k)))
        .collect()
}
