-- Gapless per-tenant invoice numbers: one counter row per tenant.
-- Rows are created by exactly.define_invoice_sequence() or on a tenant's first number.
--
-- No CHECK constraints on purpose: PostgreSQL re-reads and re-compiles a table's CHECK
-- expressions on every UPDATE statement, which more than doubled the CPU cost of drawing a
-- number. The functions validate what they write (tenant non-empty, width 1..19, the counter
-- within bigint); write to this table only through them. fillfactor 50 keeps room beside
-- each counter row for its next version (HOT updates, no index insert), as in sql/ledger.sql.
CREATE TABLE exactly.invoice_sequences (
    tenant      text PRIMARY KEY,
    prefix      text NOT NULL,
    width       int NOT NULL DEFAULT 8,
    -- the number the next draw hands out; a rolled-back draw puts it back
    next_value  bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);
COMMENT ON TABLE exactly.invoice_sequences IS
    'pg_exactly: per-tenant gapless invoice numbering; next_value is the next number to hand out';

-- Its rows are the users' data: pg_dump must dump them.
SELECT pg_catalog.pg_extension_config_dump('exactly.invoice_sequences', '');

-- BEFORE INSERT ... FOR EACH ROW EXECUTE FUNCTION
-- exactly.assign_invoice_number('tenant_column', 'number_column'): src/invoices.rs.
CREATE FUNCTION exactly.assign_invoice_number() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'assign_invoice_number_wrapper';
