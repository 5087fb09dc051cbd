-- Gapless per-tenant invoice numbers (seed 001).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- Two tenants, as in the seed: EU numbers with prefix 11, US numbers with prefix 12.
SELECT exactly.define_invoice_sequence(tenant => 'eu', prefix => '11');
SELECT exactly.define_invoice_sequence(tenant => 'us', prefix => '12', width => 8);

-- Draw numbers directly...
SELECT exactly.next_invoice_number('eu');
SELECT exactly.next_invoice_number('eu');
SELECT * FROM exactly.next_invoice_numbers('us', 3);

-- ...or let a trigger fill the number column of your own table.
CREATE TABLE invoices (
    id                bigserial PRIMARY KEY,
    tenant_identifier text NOT NULL,
    invoice_number    text UNIQUE,
    amount            numeric NOT NULL
);
CREATE TRIGGER invoice_number BEFORE INSERT ON invoices FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number('tenant_identifier', 'invoice_number');

INSERT INTO invoices (tenant_identifier, amount) VALUES ('eu', 100), ('us', 250)
    RETURNING tenant_identifier, invoice_number;

-- A rolled-back number is handed out again: no gap.
BEGIN;
INSERT INTO invoices (tenant_identifier, amount) VALUES ('eu', 5) RETURNING invoice_number;
ROLLBACK;
INSERT INTO invoices (tenant_identifier, amount) VALUES ('eu', 7) RETURNING invoice_number;

-- A tenant nobody defined is created on first use, with its name as the prefix.
SELECT exactly.next_invoice_number('acme');

-- Numbers wider than the width are printed whole, never truncated.
SELECT exactly.define_invoice_sequence('small', 'S', 2);
SELECT exactly.next_invoice_numbers('small', 100) OFFSET 97;

SELECT tenant, prefix, width, next_value FROM exactly.invoice_sequences ORDER BY tenant;

-- Bad input is refused with a SQLSTATE and a hint, and changes nothing.
SELECT exactly.next_invoice_number(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.next_invoice_numbers('eu', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.define_invoice_sequence('eu', '11', 0);
\echo :LAST_ERROR_SQLSTATE
