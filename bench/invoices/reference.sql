-- The reference: the careful PL/pgSQL a user would write for gapless per-tenant numbers.
-- A counter row per tenant, moved on with UPDATE ... RETURNING (the row lock is held to
-- commit, so a rollback gives the number back), created race-free on first use.
CREATE TABLE ref_invoice_sequences (
    tenant     text PRIMARY KEY,
    prefix     text NOT NULL,
    width      int NOT NULL DEFAULT 8,
    next_value bigint NOT NULL DEFAULT 1
);

CREATE FUNCTION ref_next_invoice_number(p_tenant text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    UPDATE ref_invoice_sequences SET next_value = next_value + 1
     WHERE tenant = p_tenant
    RETURNING prefix, width, next_value - 1 AS n INTO r;
    IF NOT FOUND THEN
        INSERT INTO ref_invoice_sequences (tenant, prefix) VALUES (p_tenant, p_tenant)
        ON CONFLICT (tenant) DO NOTHING;
        UPDATE ref_invoice_sequences SET next_value = next_value + 1
         WHERE tenant = p_tenant
        RETURNING prefix, width, next_value - 1 AS n INTO r;
    END IF;
    -- lpad() would cut a number wider than the width: never truncate
    RETURN r.prefix || '-' || lpad(r.n::text, greatest(r.width, length(r.n::text)), '0');
END $$;
