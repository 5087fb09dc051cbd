-- Seed 003: 20,000 resources to send to a third party; the third party's state is recorded
-- in `deliveries` (one row per resource it received).
CREATE TABLE resources (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL,
    synced_at timestamptz
);
CREATE INDEX ON resources (id) WHERE synced_at IS NULL;
INSERT INTO resources (name) SELECT 'resource ' || i FROM generate_series(1, 20000) i;
CREATE TABLE deliveries (resource_id bigint NOT NULL, delivered_at timestamptz DEFAULT clock_timestamp());
