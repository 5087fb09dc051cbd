-- The reference: the careful PL/pgSQL a user would write for seed 002, for one table. Look
-- the key up; if it is missing, INSERT ... ON CONFLICT DO NOTHING RETURNING; if another
-- caller won that race, look again. ref_find_or_create gives the caller what
-- exactly.find_or_create gives (the row as jsonb, and created); ref_find_or_create_row
-- returns the row itself, which spares it the jsonb conversion.
-- The counter: one INSERT ... ON CONFLICT DO UPDATE.
-- pg_exactly's functions work on an identical table of their own, counter_caches.
CREATE TABLE counter_caches (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    value      bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE ref_counter_caches (LIKE counter_caches INCLUDING ALL);
ALTER TABLE ref_counter_caches ALTER COLUMN id SET DEFAULT nextval(pg_get_serial_sequence('counter_caches', 'id'));

CREATE FUNCTION ref_find_or_create(p_key text) RETURNS TABLE (data jsonb, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        SELECT to_jsonb(c) INTO data FROM ref_counter_caches c WHERE c.key = p_key;
        IF FOUND THEN
            created := false;
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO ref_counter_caches AS c (key) VALUES (p_key)
        ON CONFLICT (key) DO NOTHING
        RETURNING to_jsonb(c) INTO data;
        IF FOUND THEN
            created := true;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION ref_find_or_create_row(p_key text, OUT data ref_counter_caches, OUT created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        SELECT * INTO data FROM ref_counter_caches WHERE key = p_key;
        IF FOUND THEN
            created := false;
            RETURN;
        END IF;
        INSERT INTO ref_counter_caches (key) VALUES (p_key)
        ON CONFLICT (key) DO NOTHING
        RETURNING * INTO data;
        IF FOUND THEN
            created := true;
            RETURN;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION ref_increment(p_key text, p_by bigint DEFAULT 1) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_value bigint;
BEGIN
    INSERT INTO ref_counter_caches AS c (key, value) VALUES (p_key, p_by)
    ON CONFLICT (key) DO UPDATE SET value = c.value + excluded.value
    RETURNING c.value INTO new_value;
    RETURN new_value;
END $$;
