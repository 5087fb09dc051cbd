-- The router database: pg_exactly_router, and the four shard databases of this cluster as
-- partitions p0..p3 (psql variables :host and :port name the cluster's socket).
CREATE EXTENSION pg_exactly_router CASCADE;
SELECT format('CREATE SERVER exactly FOREIGN DATA WRAPPER plproxy OPTIONS (%s)',
              string_agg(format('p%s %L', k, format('host=%s port=%s dbname=shard%s', :'host', :'port', k)), ', '))
FROM generate_series(0, 3) k \gexec
CREATE USER MAPPING FOR PUBLIC SERVER exactly OPTIONS (user 'postgres');
SELECT shard, connection, reachable, set_shard, ok FROM exactly.router_shards();
