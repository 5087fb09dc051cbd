SET client_min_messages = warning;  -- not a NOTICE per cascaded table each run
-- Before every run: both sides' 11 accounts at balance 0 with no transfers or entries.
-- pgledger: its transfers and entries emptied, its accounts (ids kept: the scripts look them
-- up) put back to balance 0, version 0.
TRUNCATE pgledger_entries, pgledger_transfers;
UPDATE pgledger_accounts SET balance = 0, version = 0, updated_at = created_at;
-- ours: accounts, entries, transfers and holds emptied (CASCADE: with whatever else may
-- refer to them) and the accounts inserted again as reference.psql does, as new.
TRUNCATE exactly.accounts, exactly.payments, exactly.transfers, exactly.holds RESTART IDENTITY CASCADE;
INSERT INTO exactly.accounts (account, currency)
SELECT name, 'USD' FROM bench_pgledger_accounts ORDER BY n;
CHECKPOINT;
