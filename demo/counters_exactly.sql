-- The same table with the unique index that makes "one row per key" true.
CREATE EXTENSION pg_exactly;
CREATE TABLE counter_caches (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    value      integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
