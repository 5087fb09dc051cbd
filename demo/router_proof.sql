-- Every tenant's accounts on one shard, every ledger exact on every shard, every tenant's
-- money summing to zero, every tenant's invoice numbers 1..N on its shard.
SELECT exactly.shard_for('t' || t) AS shard, count(*) AS tenants,
       string_agg('t' || t, ' ' ORDER BY t) AS which
FROM generate_series(1, 16) t GROUP BY 1 ORDER BY 1;
SELECT count(*) AS accounts, count(*) FILTER (WHERE ok) AS verified_ok,
       sum(split_part(detail, 'balance ', 2)::numeric) AS sum_of_all_balances
FROM exactly.verify_ledger();
-- each of the 800 jobs took one invoice number of its tenant: N per tenant, 800 in all
SELECT sum(split_part(exactly.next_invoice_number('t' || t), '-', 2)::int - 1) AS invoice_numbers_handed_out
FROM generate_series(1, 16) t;
SELECT 't' || t AS other FROM generate_series(2, 16) t
WHERE exactly.shard_for('t' || t) <> exactly.shard_for('t1') LIMIT 1 \gset
\echo '-- a transfer from tenant t1 to tenant' :other 'on another shard is refused:'
\set ON_ERROR_STOP off
\set SHOW_CONTEXT never
SELECT exactly.transfer('t1:acct1', :'other' || ':acct1', 10);
