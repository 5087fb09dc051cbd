#!/usr/bin/env bash
# bash scripts/package.sh            builds target/debian/postgresql-{15,17,18}-pg-exactly_<version>_amd64.deb
#                                    and postgresql-15-pg-exactly-router_<version>_all.deb
# PG=17 bash scripts/package.sh      only the package for PostgreSQL 17
# PROFILE=debug bash scripts/package.sh   a debug build (faster to build; the tests use it)
#
# Each package is a release build in the Debian layout for its PostgreSQL major: the
# library in /usr/lib/postgresql/<v>/lib, the control file and every install and upgrade
# script in /usr/share/postgresql/<v>/extension, made with `cargo pgrx package` and
# `dpkg-deb`. `apt install ./postgresql-15-pg-exactly_0.6.0_amd64.deb` installs it; it needs
# no Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

version=$(awk -F'"' '/^version =/ { print $2; exit }' Cargo.toml)
arch=$(dpkg --print-architecture)
mkdir -p target/debian

for major in ${PG:-15 17 18}; do
    pg_config=$(pg_config_of "$major")
    flags=(--pg-config "$pg_config" --no-default-features --features "pg$major")
    [ "${PROFILE:-release}" = debug ] && flags+=(--debug)
    staged="target/debian/stage-pg$major"
    rm -rf "$staged"
    echo "== cargo pgrx package for PostgreSQL $major (${PROFILE:-release})"
    cargo pgrx package "${flags[@]}" --out-dir "$staged/build" >/dev/null
    # pg_config's own directories, as cargo pgrx laid them out, moved to Debian's
    root="target/debian/postgresql-$major-pg-exactly_${version}_$arch"
    rm -rf "$root"
    mkdir -p "$root/DEBIAN" "$root/usr/lib/postgresql/$major/lib" "$root/usr/share/postgresql/$major/extension"
    cp "$staged/build$("$pg_config" --pkglibdir)/pg_exactly.so" "$root/usr/lib/postgresql/$major/lib/"
    [ "${PROFILE:-release}" = debug ] || strip --strip-unneeded "$root/usr/lib/postgresql/$major/lib/pg_exactly.so"
    cp "$staged/build$("$pg_config" --sharedir)"/extension/pg_exactly* "$root/usr/share/postgresql/$major/extension/"
    size=$(du -sk "$root/usr" | cut -f1)
    cat >"$root/DEBIAN/control" <<EOF
Package: postgresql-$major-pg-exactly
Version: $version
Architecture: $arch
Maintainer: pg_exactly developers <noreply@invalid>
Depends: postgresql-$major, libc6
Section: database
Priority: optional
Installed-Size: $size
Description: race-free building blocks for PostgreSQL $major
 pg_exactly gives applications race-free SQL functions that run inside the
 server: gapless per-tenant invoice numbers, idempotent bounded batch creation,
 running-balance ledgers, atomic find-or-create and counters, named locks and
 exactly-once work claims. CREATE EXTENSION pg_exactly; after installing.
EOF
    dpkg-deb --root-owner-group --build "$root" "target/debian/" >/dev/null
    rm -rf "$root" "$staged"
    echo "target/debian/postgresql-$major-pg-exactly_${version}_$arch.deb"
done

# The router (SQL only) for PostgreSQL 15, the major Debian ships PL/Proxy for.
if [[ " ${PG:-15 17 18} " == *" 15 "* ]]; then
    root="target/debian/postgresql-15-pg-exactly-router_${version}_all"
    rm -rf "$root"
    mkdir -p "$root/DEBIAN"
    make -s -C router install DESTDIR="$PWD/$root" PG_CONFIG="$(pg_config_of 15)" >/dev/null
    make -s -C router clean >/dev/null
    cat >"$root/DEBIAN/control" <<EOF
Package: postgresql-15-pg-exactly-router
Version: $version
Architecture: all
Maintainer: pg_exactly developers <noreply@invalid>
Depends: postgresql-15, postgresql-15-plproxy
Section: database
Priority: optional
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: routes pg_exactly's calls to the shard that owns their key
 pg_exactly_router is installed in a router database: every function of
 pg_exactly runs, through PL/Proxy, on the shard database that owns its key
 (tenant, account, raffle, name). CREATE EXTENSION pg_exactly_router CASCADE;
EOF
    dpkg-deb --root-owner-group --build "$root" "target/debian/" >/dev/null
    rm -rf "$root"
    echo "target/debian/postgresql-15-pg-exactly-router_${version}_all.deb"
fi
