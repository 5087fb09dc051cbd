//! A throwaway PostgreSQL cluster per test, run as user `postgres`, on a unix socket in a
//! temporary directory of its own: tests never touch a cluster they did not start.
//! The extension must be installed (`cargo pgrx test` does that before these tests run).
#![allow(dead_code)] // each test file uses its own part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub mod crash;
pub mod decimal;
pub mod hostile;
pub mod ledger_checks;
pub mod shards;
pub mod text;

/// Panics, listing them with their count, unless `faults` is empty.
pub fn assert_no_faults(faults: &[String]) {
    assert!(
        faults.is_empty(),
        "{} faults:\n{}",
        faults.len(),
        faults.join("\n")
    );
}

const PORT: u16 = 5432; // unix socket only, in our own directory: nothing to collide with

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
}

fn pg_bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .expect("run pg_config");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Postgres refuses to run as root: as root, run server commands as `postgres`.
fn server_command(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// initdb + start a cluster with the extension created in database `postgres`.
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// A new directory of our own for a cluster, owned by the user that runs the server.
    fn new_dir() -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pg_exactly-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            check(
                "chown",
                Command::new("chown")
                    .arg("postgres:")
                    .arg(&dir)
                    .output()
                    .unwrap(),
            );
        }
        dir
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started, in a directory of
    /// its own, with the same options. Name it in the primary's `synchronous_standby_names`
    /// as `walreceiver` (or `*`) to make it synchronous.
    pub fn start_standby(&self) -> Cluster {
        let dir = Cluster::new_dir();
        check(
            "pg_basebackup",
            server_command(&self.bin.join("pg_basebackup"))
                .arg("-h")
                .arg(&self.dir)
                .args([
                    "-p",
                    &PORT.to_string(),
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-D",
                ])
                .arg(dir.join("data"))
                .output()
                .unwrap(),
        );
        let options = std::fs::read_to_string(self.dir.join("options"))
            .unwrap()
            .replace(
                &format!("-k {}", self.dir.display()),
                &format!("-k {}", dir.display()),
            );
        std::fs::write(dir.join("options"), options).unwrap();
        let standby = Cluster {
            dir,
            bin: self.bin.clone(),
        };
        standby.start_server();
        standby
    }

    /// `start` with extra server options, e.g. "-c fsync=on -c synchronous_commit=on".
    pub fn start_with(extra_options: &str) -> Cluster {
        let dir = Cluster::new_dir();
        let bin = pg_bindir();
        let data = dir.join("data");
        check(
            "initdb",
            server_command(&bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-D",
                ])
                .arg(&data)
                .output()
                .unwrap(),
        );
        let options = format!(
            "-c listen_addresses='' -k {} -p {PORT} -c max_connections=200 -c fsync=off \
             -c shared_buffers=128MB -c deadlock_timeout=100ms {extra_options}",
            dir.display()
        );
        std::fs::write(dir.join("options"), &options).unwrap();
        let cluster = Cluster { dir, bin };
        cluster.start_server();
        cluster.connect().batch_execute("CREATE EXTENSION pg_exactly").expect(
            "CREATE EXTENSION pg_exactly (is the extension installed? `cargo pgrx install` or `cargo pgrx test`)",
        );
        cluster
    }

    /// Start the cluster's server (again), with the options it was created with; waits
    /// until it accepts connections (crash recovery included).
    pub fn start_server(&self) {
        let options = std::fs::read_to_string(self.dir.join("options")).unwrap();
        check(
            "pg_ctl start",
            server_command(&self.bin.join("pg_ctl"))
                .args(["-w", "-t", "120", "-D"])
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-o", &options, "start"])
                .output()
                .unwrap(),
        );
    }

    /// `pg_ctl stop -m immediate`: every backend quits at once, no checkpoint; the next start
    /// runs crash recovery.
    pub fn stop_immediate(&self) {
        check(
            "pg_ctl stop -m immediate",
            server_command(&self.bin.join("pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.dir.join("data"))
                .arg("stop")
                .output()
                .unwrap(),
        );
    }

    /// The postmaster's pid (first line of postmaster.pid).
    pub fn postmaster_pid(&self) -> i32 {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        pidfile.lines().next().unwrap().trim().parse().unwrap()
    }

    /// `kill -9` of the postmaster (a process this test started), then of every backend it
    /// left behind (children of that postmaster), and wait until all are gone: as after a
    /// crash of the machine's server process, the next start runs crash recovery.
    pub fn kill9(&self) {
        let postmaster = self.postmaster_pid();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster.to_string()])
            .output()
            .unwrap();
        let _ = Command::new("kill")
            .args(["-9", &postmaster.to_string()])
            .status();
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", child]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = Command::new("pgrep")
                .args(["-P", &postmaster.to_string()])
                .output()
                .unwrap();
            let alive = Path::new(&format!("/proc/{postmaster}")).exists();
            if !alive && left.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postmaster {postmaster} did not go away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The cluster's directory (socket, data/, server.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's bin directory (psql, pg_ctl, pg_waldump, pg_isolation_regress's peers).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The server log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Connection settings for database `postgres` as `user` (created by the test; trust auth).
    pub fn config_as(&self, user: &str) -> postgres::Config {
        let mut config = self.config();
        config.user(user);
        config
    }

    pub fn connect_as(&self, user: &str) -> Client {
        self.config_as(user)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    pub fn config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(PORT)
            .user("postgres")
            .dbname("postgres");
        config
    }

    pub fn connect(&self) -> Client {
        self.config()
            .connect(NoTls)
            .expect("connect to the test cluster")
    }

    /// Run a SQL file through psql as a user would, returning what psql printed (errors in
    /// place, as psql flushes its output before each message).
    pub fn psql_file(&self, file: &Path) -> String {
        let output_path = self.dir.join("psql.out");
        let output = std::fs::File::create(&output_path).unwrap();
        let status = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-a", "-v", "ON_ERROR_STOP=0", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ])
            .stdin(std::fs::File::open(file).unwrap())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .status()
            .unwrap();
        assert!(status.success(), "psql could not run {}", file.display());
        std::fs::read_to_string(output_path).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = server_command(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PgBouncer in front of a test cluster, on a unix socket in the cluster's directory,
/// run as `postgres` (it refuses root); stopped when dropped.
pub struct PgBouncer {
    dir: PathBuf,
}

impl PgBouncer {
    const PORT: u16 = 6432;

    /// Start one with `pool_mode` (e.g. "transaction") and `pool_size` server connections.
    pub fn start(cluster: &Cluster, pool_mode: &str, pool_size: usize) -> PgBouncer {
        let dir = cluster.dir.clone();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\npostgres = host={dir} port={PORT} dbname=postgres user=postgres\n\
                 [pgbouncer]\nlisten_addr =\nunix_socket_dir = {dir}\nlisten_port = {bouncer}\n\
                 auth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 200\n\
                 logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
                dir = dir.display(),
                bouncer = Self::PORT,
            ),
        )
        .unwrap();
        check(
            "pgbouncer",
            server_command(Path::new("/usr/sbin/pgbouncer"))
                .arg("-d")
                .arg(dir.join("pgbouncer.ini"))
                .output()
                .unwrap(),
        );
        let bouncer = PgBouncer { dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bouncer.config().connect(NoTls).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    pub fn config(&self) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(Self::PORT)
            .user("postgres")
            .dbname("postgres");
        config
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).output();
        }
    }
}

/// The SQLSTATE of a failed statement, e.g. "22023".
pub fn sqlstate(result: Result<impl Sized, postgres::Error>) -> String {
    match result {
        Ok(_) => panic!("expected an error, the statement succeeded"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("no SQLSTATE: {e}")),
    }
}

/// Wait until backend `pid` is sleeping on a lock (so a test knows a waiter is queued).
pub fn wait_until_blocked(client: &mut Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        if row.get::<_, String>(0) == "Lock" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never waited on a lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small deterministic generator, so each thread gets its own reproducible mix.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Shuffle in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// Run `work(i, client)` on `connections` threads, each with a connection (a backend) of its
/// own, all starting at the same moment; returns their results in thread order.
pub fn at_once<T, F>(cluster: &Cluster, connections: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, &mut Client) -> T + Send + Sync + 'static,
{
    at_once_through(cluster.config(), connections, work)
}

/// `at_once` with connections made from `config` (e.g. through a PgBouncer).
pub fn at_once_through<T, F>(config: postgres::Config, connections: usize, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, &mut Client) -> T + Send + Sync + 'static,
{
    let (start, work) = (Arc::new(Barrier::new(connections)), Arc::new(work));
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let (config, start, work) = (config.clone(), start.clone(), work.clone());
            std::thread::spawn(move || {
                let mut client = config.connect(NoTls).expect("connect to the test cluster");
                start.wait();
                work(i, &mut client)
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

/// Run every `examples/NAME.sql` through psql, each on a fresh cluster with the extension
/// created, and compare its output with `examples/NAME.sql.out`; returns what differs.
/// With EXACTLY_BLESS set, rewrites the .out files instead.
pub fn examples_that_differ() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut sql_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    sql_files.sort();
    assert!(!sql_files.is_empty(), "no examples in {}", dir.display());
    let mut failures = Vec::new();
    for sql in &sql_files {
        // a cluster per example: each starts from a freshly created extension
        let actual = Cluster::start().psql_file(sql);
        let expected_path = sql.with_extension("sql.out");
        if std::env::var_os("EXACTLY_BLESS").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n{}",
                sql.display(),
                first_difference(&expected, &actual)
            ));
        }
    }
    failures
}

/// The first differing lines, enough to see what changed.
fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    let first = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let show = |lines: &[&str]| {
        lines
            .iter()
            .skip(first)
            .take(5)
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "  from line {}:\n  expected:\n{}\n  actual:\n{}",
        first + 1,
        show(&e),
        show(&a)
    )
}
