#!/usr/bin/env bash
# Installs what building and testing pg_exactly needs, skipping whatever is already there:
# Debian packages, cargo-pgrx 0.18.0, and `cargo pgrx init` against the system PostgreSQL 15.
# Meant to be sourced by the other scripts (it exports PATH and PG_CONFIG); safe to re-run.
set -euo pipefail

export HOME="${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}"
export PATH="$HOME/.cargo/bin:$PATH"
export PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi

packages=(postgresql-15 postgresql-server-dev-15 postgresql-client-15 libclang-dev clang sudo pgbouncer)
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

if ! grep -qs "^pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    echo "== cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Installs the extension (debug build, or release with `release` as first argument) into
# the system PostgreSQL 15.
install_extension() {
    local flags=(--pg-config "$PG_CONFIG")
    [ "${1:-}" = release ] && flags+=(--release)
    [ "$(id -u)" = 0 ] || flags+=(--sudo)
    cargo pgrx install "${flags[@]}"
}
