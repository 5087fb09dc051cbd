-- Before every run: 1,000,000 pending rows on each side, more than a run can sync.
TRUNCATE resources, ref_resources, exactly.claims, exactly.claim_attempts;
INSERT INTO resources (name) SELECT 'resource ' || i FROM generate_series(1, 1000000) i;
INSERT INTO ref_resources (name) SELECT 'resource ' || i FROM generate_series(1, 1000000) i;
ANALYZE resources, ref_resources;
CHECKPOINT;
