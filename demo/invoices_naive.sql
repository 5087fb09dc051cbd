-- The seed's first attempt, as a trigger: read the highest number, add one, write.
-- (No unique index, so its duplicates are kept and counted instead of raised as errors;
-- the sleep stands for the application's round trip between its read and its write.)
CREATE TABLE invoices (id bigserial PRIMARY KEY, tenant_identifier text NOT NULL,
                       invoice_number text, amount numeric NOT NULL DEFAULT 0);
CREATE FUNCTION naive_invoice_number() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    SELECT coalesce(max(split_part(invoice_number, '-', 2)::bigint), 0) + 1 INTO n
      FROM invoices WHERE tenant_identifier = NEW.tenant_identifier;
    PERFORM pg_sleep(0.001);
    NEW.invoice_number := NEW.tenant_identifier || '-' || lpad(n::text, 8, '0');
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_number BEFORE INSERT ON invoices FOR EACH ROW
    EXECUTE FUNCTION naive_invoice_number();
