-- The seed's raffle of 100,500 tickets and its 101 jobs (100 of 1000, one of 500), each
-- queued twice in random order, as Sidekiq does when a job is retried or runs twice.
CREATE EXTENSION IF NOT EXISTS pg_exactly;
INSERT INTO exactly.raffles (id, tickets_requested) VALUES (1, 100500);
CREATE SEQUENCE demo_job_slot;
CREATE TABLE demo_jobs AS
SELECT row_number() OVER (ORDER BY random()) AS slot, 1::bigint AS raffle_id, n, batch_key
FROM (SELECT 'job-' || i AS batch_key, CASE WHEN i = 101 THEN 500 ELSE 1000 END AS n
      FROM generate_series(1, 101) i) jobs, generate_series(1, 2) twice;
