-- The seed's first attempt: read what is left, insert the batch, count it, without locking
-- the raffle. The sleep stands for the application's round trip between read and write.
CREATE FUNCTION naive_batch_create_tickets(p_raffle bigint, p_n int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE k int;
BEGIN
    SELECT least(p_n, tickets_requested - tickets_created) INTO k FROM exactly.raffles WHERE id = p_raffle;
    PERFORM pg_sleep(0.005);
    INSERT INTO exactly.tickets (raffle_id, code)
    SELECT p_raffle, upper(substr(md5(random()::text || i), 1, 12)) FROM generate_series(1, k) i;
    UPDATE exactly.raffles SET tickets_created = tickets_created + k WHERE id = p_raffle;
    RETURN k;
END $$;
