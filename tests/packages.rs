//! The package scripts/package.sh builds for the server under test installs and works as a
//! user would use it: the PostgreSQL 15 one with `dpkg -i` on this machine's server; the 17
//! and 18 ones, whose Debian servers this machine does not have, by putting the package's
//! files into the self-built server where Debian's would have them. Then the examples run on
//! a fresh cluster with `CREATE EXTENSION pg_exactly`, and the package comes off again. The
//! files `cargo pgrx test` had installed are put back afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn pg_config(arg: &str) -> String {
    let pg_config =
        std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    output(&pg_config, &[arg])
}

/// pg_exactly's files in the server's directories right now: (path, contents, permissions).
fn installed_files(libdir: &Path, extension_dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::fs::Permissions)> {
    let mut files = vec![];
    for dir in [libdir, extension_dir] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().starts_with("pg_exactly") {
                let permissions = std::fs::metadata(&path).unwrap().permissions();
                files.push((path.clone(), std::fs::read(&path).unwrap(), permissions));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[test]
fn the_package_installs_creates_the_extension_runs_the_examples_and_comes_off_again() {
    let major = pg_config("--version").split_whitespace().nth(1).unwrap().split('.').next().unwrap().to_string();
    let (libdir, extension_dir) =
        (PathBuf::from(pg_config("--pkglibdir")), PathBuf::from(pg_config("--sharedir")).join("extension"));
    let arch = output("dpkg", &["--print-architecture"]);
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("postgresql-{major}-pg-exactly");
    let deb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/debian/{name}_{version}_{arch}.deb"));
    assert!(deb.exists(), "{} is missing: run scripts/package.sh (scripts/test.sh does)", deb.display());
    let deb = deb.to_str().unwrap();

    // a proper Debian package, in Debian's layout for its major
    assert_eq!(output("dpkg-deb", &["--field", deb, "Package"]), name);
    assert_eq!(output("dpkg-deb", &["--field", deb, "Version"]), version);
    assert_eq!(output("dpkg-deb", &["--field", deb, "Architecture"]), arch);
    assert!(output("dpkg-deb", &["--field", deb, "Depends"]).contains(&format!("postgresql-{major}")));
    let contents = output("dpkg-deb", &["--contents", deb]);
    let lib = format!("./usr/lib/postgresql/{major}/lib/pg_exactly.so");
    let share = format!("./usr/share/postgresql/{major}/extension/");
    let expected = [
        lib.clone(),
        format!("{share}pg_exactly.control"),
        format!("{share}pg_exactly--{version}.sql"),
        format!("{share}pg_exactly--0.1.0--0.2.0.sql"),
        format!("{share}pg_exactly--0.2.0--0.3.0.sql"),
        format!("{share}pg_exactly--0.3.0--0.4.0.sql"),
        format!("{share}pg_exactly--0.4.0--0.5.0.sql"),
        format!("{share}pg_exactly--0.5.0--0.6.0.sql"),
    ];
    for file in &expected {
        assert!(contents.lines().any(|l| l.ends_with(file.as_str())), "{file} not in the package:\n{contents}");
    }

    let before = installed_files(&libdir, &extension_dir);
    let unpacked = std::env::temp_dir().join(format!("pg_exactly-package-{}", std::process::id()));
    if major == "15" {
        // the real thing: this machine's PostgreSQL 15 is Debian's
        output("dpkg", &["-i", deb]);
        assert!(output("dpkg-query", &["-W", "-f=${Status}", &name]).contains("install ok installed"));
    } else {
        output("dpkg-deb", &["-x", deb, unpacked.to_str().unwrap()]);
        for (from, to) in [
            (unpacked.join(format!("usr/lib/postgresql/{major}/lib")), &libdir),
            (unpacked.join(format!("usr/share/postgresql/{major}/extension")), &extension_dir),
        ] {
            for entry in std::fs::read_dir(from).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let failures = common::examples_that_differ();

    // off again, and what was there before back
    if major == "15" {
        output("dpkg", &["-r", &name]);
        assert!(!libdir.join("pg_exactly.so").exists(), "dpkg -r left the library behind");
    } else {
        let _ = std::fs::remove_dir_all(&unpacked);
    }
    for (path, _, _) in installed_files(&libdir, &extension_dir) {
        std::fs::remove_file(path).unwrap();
    }
    for (path, bytes, permissions) in &before {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, permissions.clone()).unwrap();
    }
    assert!(failures.is_empty(), "with the package installed, examples differ:\n{}", failures.join("\n"));
}

#[test]
#[cfg(feature = "pg15")] // PL/Proxy, so the router, is packaged for PostgreSQL 15 only
fn the_router_package_holds_the_router_extension_and_needs_plproxy() {
    let version = env!("CARGO_PKG_VERSION");
    let deb = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/debian/postgresql-15-pg-exactly-router_{version}_all.deb"));
    assert!(deb.exists(), "{} is missing: run scripts/package.sh (scripts/test.sh does)", deb.display());
    let deb = deb.to_str().unwrap();
    assert_eq!(output("dpkg-deb", &["--field", deb, "Architecture"]), "all");
    assert!(output("dpkg-deb", &["--field", deb, "Depends"]).contains("postgresql-15-plproxy"));
    let contents = output("dpkg-deb", &["--contents", deb]);
    for file in [
        "./usr/share/postgresql/15/extension/pg_exactly_router.control".to_string(),
        format!("./usr/share/postgresql/15/extension/pg_exactly_router--{version}.sql"),
    ] {
        assert!(contents.lines().any(|l| l.ends_with(file.as_str())), "{file} not in the package:\n{contents}");
    }
}
