-- Double-entry transfers, holds, limits and history (docs/ledger.md).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- Accounts: a currency and limits, set by inserting them beforehand.
INSERT INTO exactly.accounts (account, currency, min_balance) VALUES ('alice', 'EUR', 0);
INSERT INTO exactly.accounts (account, currency) VALUES ('bob', 'EUR'), ('fees', 'EUR');
INSERT INTO exactly.accounts (account, currency, max_balance) VALUES ('wallet', 'EUR', 50);
SELECT running_balance FROM exactly.append_payment('alice', 100);   -- opening balance

-- A transfer: one row, two entries (-30 on alice, +30 on bob) with running balances.
SELECT id, from_account, to_account, amount, currency, metadata
FROM exactly.transfer('alice', 'bob', 30, idempotency_key => 'order-17', metadata => '{"order": 17}');
-- the same request again (a retried job): the first transfer, nothing new
SELECT id, amount FROM exactly.transfer('alice', 'bob', 30.00, idempotency_key => 'order-17', metadata => '{"order": 17}');
-- the key with another request: refused
SELECT exactly.transfer('alice', 'bob', 31, idempotency_key => 'order-17');
\echo :LAST_ERROR_SQLSTATE

-- Several legs, all or none: the accounts are locked once each, in pg_exactly's order.
SELECT id, leg, from_account, to_account, amount
FROM exactly.transfers('[{"from": "bob", "to": "alice", "amount": 10},
                         {"from": "bob", "to": "fees", "amount": "0.50"}]');
-- a later leg that breaks a limit refuses the whole call
SELECT exactly.transfers('[{"from": "bob", "to": "wallet", "amount": 5},
                           {"from": "alice", "to": "fees", "amount": 1000}]');
\echo :LAST_ERROR_SQLSTATE
-- and money does not move between currencies
INSERT INTO exactly.accounts (account, currency) VALUES ('dollars', 'USD');
SELECT exactly.transfer('alice', 'dollars', 1);
\echo :LAST_ERROR_SQLSTATE

-- A hold reserves money: alice's available balance drops, nothing moves yet.
SELECT id, from_account, to_account, amount, state FROM exactly.hold('alice', 'bob', 50, timeout => '15 minutes');
SELECT account, balance, pending_debits, pending_credits FROM exactly.accounts WHERE account IN ('alice', 'bob') ORDER BY account;
-- with 80 - 50 available, a transfer of 40 breaks alice's min_balance 0
SELECT exactly.transfer('alice', 'fees', 40);
\echo :LAST_ERROR_SQLSTATE
-- capture 42 of the 50: a transfer; the other 8 are released
SELECT id, from_account, to_account, amount, hold_id FROM exactly.post_hold(1, 42);
SELECT id, state, posted_amount FROM exactly.holds;
-- another hold, voided
SELECT id, state FROM exactly.hold('alice', 'bob', 5);
SELECT id, state FROM exactly.void_hold(2);
-- max_balance counts pending credits: a hold into the wallet beyond 50 is refused
SELECT exactly.hold('bob', 'wallet', 51);
\echo :LAST_ERROR_SQLSTATE

-- History: balance_at sums the entries that happened by then (a transfer's at its event_at).
SELECT id, amount FROM exactly.transfer('bob', 'alice', 7, event_at => '2026-01-01 12:00+00');
SELECT exactly.balance_at('alice', '2026-01-01 13:00+00') AS alice_on_new_years_day;
SELECT account, balance, pending_debits, pending_credits FROM exactly.accounts ORDER BY account;
SELECT account, amount, running_balance, transfer_id FROM exactly.payments ORDER BY id;
SELECT * FROM exactly.verify_ledger();
