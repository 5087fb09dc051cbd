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
    -- for a numbering that never resets: the number the next draw hands out; a rolled-back
    -- draw puts it back
    next_value  bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the template ('INV-{yyyy}-{number}'); NULL: '{prefix}-{number}', the bare number when
    -- the prefix is empty
    format      text,
    -- 'never', 'yearly' (the fiscal year starting on the 1st of month fiscal_year_start),
    -- 'monthly' or 'daily': numbering starts again at 1 in every period, in
    -- exactly.invoice_periods
    reset       text NOT NULL DEFAULT 'never',
    fiscal_year_start int NOT NULL DEFAULT 1
) WITH (fillfactor = 50);
COMMENT ON TABLE exactly.invoice_sequences IS
    'pg_exactly: per-tenant gapless invoice numbering; next_value is the next number to hand out';

-- One counter per (tenant, period) of a numbering that resets; a period is named by its
-- first day. Created on the period's first number.
CREATE TABLE exactly.invoice_periods (
    tenant      text NOT NULL,
    period      date NOT NULL,
    next_value  bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant, period)
) WITH (fillfactor = 50);
COMMENT ON TABLE exactly.invoice_periods IS
    'pg_exactly: per tenant and period, the next invoice number to hand out';

-- Their rows are the users' data: pg_dump must dump them.
SELECT pg_catalog.pg_extension_config_dump('exactly.invoice_sequences', '');
SELECT pg_catalog.pg_extension_config_dump('exactly.invoice_periods', '');

-- BEFORE INSERT ... FOR EACH ROW EXECUTE FUNCTION
-- exactly.assign_invoice_number('tenant_column', 'number_column'): src/invoices.rs.
CREATE FUNCTION exactly.assign_invoice_number() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'assign_invoice_number_wrapper';

-- CREATE CONSTRAINT TRIGGER ... AFTER INSERT OR UPDATE ... DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
-- EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant_columns', 'number_column'):
-- src/invoices.rs.
CREATE FUNCTION exactly.assign_invoice_number_at_commit() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'assign_invoice_number_at_commit_wrapper';
