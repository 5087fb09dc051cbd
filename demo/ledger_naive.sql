-- The seed's first attempt: read the last payment's running balance, add, insert.
-- (The sleep stands for the application's round trip between its read and its write.)
CREATE TABLE naive_payments (id bigserial PRIMARY KEY, account text, amount numeric, running_balance numeric);
CREATE FUNCTION naive_append(p_account text, p_amount numeric) RETURNS void LANGUAGE plpgsql AS $$
DECLARE last numeric;
BEGIN
    SELECT running_balance INTO last FROM naive_payments WHERE account = p_account ORDER BY id DESC LIMIT 1;
    PERFORM pg_sleep(0.001);
    INSERT INTO naive_payments (account, amount, running_balance) VALUES (p_account, p_amount, coalesce(last, 0) + p_amount);
END $$;
