-- The same table, numbered by pg_exactly.
CREATE EXTENSION IF NOT EXISTS pg_exactly;
CREATE TABLE invoices (id bigserial PRIMARY KEY, tenant_identifier text NOT NULL,
                       invoice_number text UNIQUE, amount numeric NOT NULL DEFAULT 0);
CREATE TRIGGER invoice_number BEFORE INSERT ON invoices FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number('tenant_identifier', 'invoice_number');
