-- Idempotent bounded batch creation of raffle tickets (seed 000).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- A raffle is created by inserting its row, as Raffle.create! would.
INSERT INTO exactly.raffles (tickets_requested) VALUES (2500) RETURNING id, tickets_requested, tickets_created, code_length;

-- Batch jobs create tickets; each returns how many it created.
SELECT exactly.batch_create_tickets(raffle => 1, n => 1000, batch_key => 'job-1');
SELECT exactly.batch_create_tickets(raffle => 1, n => 1000, batch_key => 'job-2');

-- A job that runs twice creates nothing the second time and answers its first count.
SELECT exactly.batch_create_tickets(raffle => 1, n => 1000, batch_key => 'job-1');

-- The raffle never gets more than requested: the last job creates only what remains.
SELECT exactly.batch_create_tickets(raffle => 1, n => 1000, batch_key => 'job-3');
SELECT exactly.batch_create_tickets(raffle => 1, n => 1000, batch_key => 'job-4');

SELECT tickets_requested, tickets_created,
       (SELECT count(*) FROM exactly.tickets WHERE raffle_id = 1) AS tickets,
       (SELECT count(DISTINCT code) FROM exactly.tickets WHERE raffle_id = 1) AS distinct_codes,
       (SELECT bool_and(code ~ '^[0-9A-F]{12}$') FROM exactly.tickets WHERE raffle_id = 1) AS codes_are_12_hex_digits
FROM exactly.raffles WHERE id = 1;

SELECT batch_key, raffle_id, n, created FROM exactly.ticket_batches ORDER BY batch_key;

-- n = 0 creates nothing and answers 0.
SELECT exactly.batch_create_tickets(1, 0);

-- Calling again with the same key and arguments is a replay, not an error.
SELECT exactly.batch_create_tickets(1, 1000, 'job-1');

-- Bad input is refused with a SQLSTATE and a hint, and changes nothing.
SELECT exactly.batch_create_tickets(1, 999, 'job-1');
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.batch_create_tickets(42, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.batch_create_tickets(1, -1);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.batch_create_tickets(NULL, 10);
\echo :LAST_ERROR_SQLSTATE

-- Batch keys are kept until purged; keep them longer than any job may be retried.
SELECT exactly.purge_ticket_batches(older_than => '30 days');
