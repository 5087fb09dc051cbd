-- Before every run: both tables hold the same 100,000 existing keys k1..k100000.
TRUNCATE counter_caches, ref_counter_caches;
INSERT INTO counter_caches (key) SELECT 'k' || i FROM generate_series(1, 100000) i;
INSERT INTO ref_counter_caches (key) SELECT 'k' || i FROM generate_series(1, 100000) i;
ANALYZE counter_caches, ref_counter_caches;
CHECKPOINT;
