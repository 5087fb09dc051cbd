-- Running-balance ledgers (seed 004).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The seed's single ledger: append amounts, get each entry back with its running balance.
SELECT id, account, amount, running_balance FROM exactly.append_payment(100);
SELECT id, account, amount, running_balance FROM exactly.append_payment(-30.50);

-- Accounts are created on first use, or beforehand to set a minimum balance.
INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', 0);
SELECT id, account, amount, running_balance FROM exactly.append_payment('alice', 50);

-- A withdrawal that would go below the minimum is refused; nothing is appended.
SELECT id, account, amount, running_balance FROM exactly.append_payment('alice', -80);
\echo :LAST_ERROR_SQLSTATE

-- With an idempotency key, a retried job gets the first entry back and appends nothing.
SELECT id, account, amount, running_balance FROM exactly.append_payment('alice', -20, 'refund-7');
SELECT id, account, amount, running_balance FROM exactly.append_payment('alice', -20, 'refund-7');
SELECT exactly.append_payment('alice', -25, 'refund-7');
\echo :LAST_ERROR_SQLSTATE

-- Many amounts under one lock, in order.
SELECT id, account, amount, running_balance FROM exactly.append_payments('bob', ARRAY[10, 20, -5]::numeric[]);

SELECT account, balance, entries, min_balance FROM exactly.accounts ORDER BY account;
SELECT * FROM exactly.verify_ledger();

-- Your own table: the trigger fills the running balance and keeps the ledger append-only.
CREATE TABLE transactions (
    id              bigserial PRIMARY KEY,
    wallet          text NOT NULL,
    amount          numeric NOT NULL,
    running_balance numeric,
    memo            text
);
CREATE TRIGGER running_balance BEFORE INSERT OR UPDATE OR DELETE ON transactions FOR EACH ROW
    EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'running_balance', 'wallet');
INSERT INTO transactions (wallet, amount) VALUES ('w1', 10), ('w2', 5), ('w1', 2.5)
    RETURNING wallet, amount, running_balance;
UPDATE transactions SET memo = 'checked';
UPDATE transactions SET amount = 11 WHERE wallet = 'w1' AND amount = 10;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM transactions;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO transactions (wallet, amount, memo) VALUES ('w1', -10, 'reverses the first entry')
    RETURNING wallet, amount, running_balance, memo;

-- Bad input is refused with a SQLSTATE and a hint, and changes nothing.
SELECT exactly.append_payment('alice', 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.append_payment(NULL, 1);
\echo :LAST_ERROR_SQLSTATE
