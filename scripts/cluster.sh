#!/usr/bin/env bash
# A throwaway PostgreSQL cluster (the first major of PG_MAJORS, see setup.sh) in a temporary
# directory, run as user `postgres`, reachable only through a unix socket in that directory.
# Sourced by demo.sh and bench/run, after setup.sh.
#   cluster_start            sets CLUSTER_DIR and PGHOST/PGPORT/PGUSER for psql and pgbench,
#                            and puts that server's psql and pgbench first on PATH
#   cluster_stop             stops it and removes the directory
CLUSTER_BIN=$("$(pg_config_of "${PG_MAJORS%% *}")" --bindir)

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"
    elif [ "$(id -un)" = postgres ]; then "$@"
    else sudo -u postgres "$@"; fi
}

cluster_start() {  # extra arguments are server options, e.g. -c max_connections=300
    CLUSTER_DIR=$(mktemp -d /tmp/pg_exactly.XXXXXX)
    chmod 755 "$CLUSTER_DIR"
    [ "$(id -un)" = postgres ] || "${SUDO[@]}" chown postgres: "$CLUSTER_DIR"
    as_postgres "$CLUSTER_BIN/initdb" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        -D "$CLUSTER_DIR/data" >/dev/null
    as_postgres "$CLUSTER_BIN/pg_ctl" -w -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" \
        -o "-c listen_addresses='' -k $CLUSTER_DIR -p 5432 $*" start >/dev/null
    export PGHOST="$CLUSTER_DIR" PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
    export PATH="$CLUSTER_BIN:$PATH"
}

cluster_stop() {
    as_postgres "$CLUSTER_BIN/pg_ctl" -w -D "$CLUSTER_DIR/data" -m fast stop >/dev/null || true
    "${SUDO[@]}" rm -rf "$CLUSTER_DIR"
}
