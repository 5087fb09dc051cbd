#!/usr/bin/env bash
# Installs what building and testing pg_exactly needs, skipping whatever is already there:
# Debian packages, cargo-pgrx 0.18.0, the PostgreSQL servers of the majors in PG_MAJORS
# (default 15: Debian's own; 17 and 18 are built once from Debian's source packages, see
# postgres.sh) and `cargo pgrx init` for every server this machine has.
# Meant to be sourced by the other scripts (it exports PATH and defines pg_config_of and
# install_extension); safe to re-run.
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH"
PG_MAJORS="${PG_MAJORS:-15}"
if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
source "$(dirname "${BASH_SOURCE[0]}")/postgres.sh"

packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15 libclang-dev clang sudo
          pgbouncer postgresql-15-plproxy bison flex curl bzip2 make gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0$'; then
    echo "== installing cargo-pgrx 0.18.0 (about 5 minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked
fi

# `cargo pgrx init` writes its whole configuration anew: give it every server this machine
# has (those asked for now and those initialised before), so none drops out.
pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
init_args=()
init_needed=0
for major in 15 17 18; do
    if [[ " $PG_MAJORS " == *" $major "* ]] || grep -qs "^pg$major = " "$pgrx_config"; then
        pg_config=$(pg_config_of "$major")
        init_args+=("--pg$major" "$pg_config")
        grep -qs "^pg$major = \"$pg_config\"" "$pgrx_config" || init_needed=1
    fi
done
if [ "$init_needed" = 1 ]; then
    echo "== cargo pgrx init ${init_args[*]}"
    cargo pgrx init "${init_args[@]}"
fi

# Installs the extension (debug build, or release with `release` as first argument) into
# the server of PostgreSQL major $2 (default: the first of PG_MAJORS).
install_extension() {
    local major="${2:-${PG_MAJORS%% *}}"
    local flags=(--pg-config "$(pg_config_of "$major")")
    [ "${1:-}" = release ] && flags+=(--release)
    [ "$(id -u)" = 0 ] || flags+=(--sudo)
    cargo pgrx install "${flags[@]}"
}

# Installs pg_exactly_router (SQL only, the PGXS way) into Debian's PostgreSQL 15, the one
# major Debian ships PL/Proxy for.
install_router() {
    "${SUDO[@]}" make -s -C "$(dirname "${BASH_SOURCE[0]}")/../router" install PG_CONFIG="$(pg_config_of 15)"
}
