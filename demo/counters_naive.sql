-- Seed 002's model as the seed first wrote it: no unique index, find_or_create_by! is a
-- SELECT and then an INSERT, and the counter is read, then written back plus one.
CREATE TABLE counter_caches (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL,
    value      integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
