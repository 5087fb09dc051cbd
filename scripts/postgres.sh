#!/usr/bin/env bash
# The PostgreSQL servers pg_exactly is built and tested against. Sourced by setup.sh.
#   pg_config_of 15|17|18    prints the pg_config of that major, building it first if needed
#
# 15 is Debian bookworm's own package. Bookworm has no 17 or 18: they are built once from
# Debian's own source packages (postgresql-17 from trixie, postgresql-18 from sid; the
# upstream tarball is the package's .orig.tar) into ~/.cache/pg_exactly/pgNN, fetched
# through the Debian mirror this machine's apt is configured with. The versions are pinned,
# with their SHA-256, so every machine builds the same server.

declare -A PG_RELEASE=([17]=17.11 [18]=18.6)
declare -A PG_SHA256=(
    [17]=dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979
    [18]=555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f
)
PG_CACHE="${PG_CACHE:-$HOME/.cache/pg_exactly}"

# The first Debian mirror in apt's sources (deb822 .sources files, then sources.list).
debian_mirror() {
    local uri
    uri=$(awk '$1 == "URIs:" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] || { echo "no Debian mirror in apt's sources" >&2; return 1; }
    echo "${uri%/}"
}

pg_config_of() {
    local major=$1
    if [ "$major" = 15 ]; then
        echo /usr/lib/postgresql/15/bin/pg_config
        return
    fi
    local release=${PG_RELEASE[$major]:?"PostgreSQL $major is not one pg_exactly supports (15, 17, 18)"}
    local prefix="$PG_CACHE/pg$major"
    if [ ! -x "$prefix/bin/pg_config" ] || [ "$(cat "$prefix/.release" 2>/dev/null)" != "$release" ]; then
        build_postgres "$major" "$release" "$prefix" >&2
    fi
    let_postgres_reach "$prefix"
    echo "$prefix/bin/pg_config"
}

build_postgres() {
    local major=$1 release=$2 prefix=$3
    local tarball="postgresql-${major}_${release}.orig.tar.bz2"
    local work="$PG_CACHE/build-$major"
    echo "== building PostgreSQL $release (once) into $prefix"
    mkdir -p "$PG_CACHE/src"
    if ! echo "${PG_SHA256[$major]}  $PG_CACHE/src/$tarball" | sha256sum -c --status 2>/dev/null; then
        curl -sSf -o "$PG_CACHE/src/$tarball" "$(debian_mirror)/pool/main/p/postgresql-$major/$tarball"
        echo "${PG_SHA256[$major]}  $PG_CACHE/src/$tarball" | sha256sum -c --quiet
    fi
    rm -rf "$work" "$prefix"
    mkdir -p "$work"
    tar -xjf "$PG_CACHE/src/$tarball" -C "$work" --strip-components=1
    (
        cd "$work"
        ./configure --prefix="$prefix" --without-icu --without-readline --without-zlib >configure.log
        make -s -j"$(nproc)" >make.log 2>&1
        make -s install >>make.log 2>&1
    ) || { echo "PostgreSQL $release did not build: see $work/*.log" >&2; return 1; }
    echo "$release" >"$prefix/.release"
    chmod -R a+rX "$prefix"
    rm -rf "$work"
}

# The server runs as `postgres`, which must reach the self-built one's files. A home
# directory that only its owner may enter (root's, usually) gets search permission for
# others: they can open what they know the path of, and still cannot list it.
let_postgres_reach() {
    local prefix=$1
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$prefix/bin/postgres"; then
        echo "== giving others search (x) permission on $HOME, so user postgres can run $prefix/bin/postgres" >&2
        chmod o+x "$HOME"
    fi
}
