-- Before every run: empty invoice tables (the counters go on: one row each, updated in place).
TRUNCATE invoices_at_insert, invoices_at_commit;
CHECKPOINT;
