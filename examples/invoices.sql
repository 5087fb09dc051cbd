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

-- A template, and a series that starts again every fiscal year (April to March): the date
-- of the invoice picks the year.
SELECT exactly.define_invoice_sequence('acme-fy', 'INV', 4, format => '{prefix}-{fy}-{number}',
                                       reset => 'yearly', fiscal_year_start => 4);
SELECT exactly.next_invoice_number('acme-fy', on_date => '2026-03-31');
SELECT exactly.next_invoice_number('acme-fy', on_date => '2026-04-01');
SELECT exactly.next_invoice_number('acme-fy', on_date => '2027-03-31');

-- Monthly series; a numbering moved from another system continues at its next number.
SELECT exactly.define_invoice_sequence('shop', 'R', 3, format => '{yyyy}{mm}-{number}', reset => 'monthly');
SELECT exactly.set_next_invoice_number('shop', 1500, on_date => '2026-12-01');
SELECT * FROM exactly.next_invoice_numbers('shop', 2, on_date => '2026-12-24');
SELECT exactly.next_invoice_number('shop', on_date => '2027-01-02');
-- numbers only move forward
SELECT exactly.set_next_invoice_number('shop', 10, on_date => '2026-12-01');
\echo :LAST_ERROR_SQLSTATE
SELECT tenant, period, next_value FROM exactly.invoice_periods ORDER BY tenant, period;

-- One series per (tenant, document type), dated by a column, numbered when the
-- transaction commits: the tenant's lock is not held while the transaction does its work.
CREATE TABLE documents (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    kind      text NOT NULL,
    issued_on date NOT NULL,
    number    text
);
SELECT exactly.define_invoice_sequence('acme:credit-note', 'CN', 3, format => '{prefix}{yy}-{number}', reset => 'yearly');
CREATE CONSTRAINT TRIGGER document_number AFTER INSERT OR UPDATE ON documents
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant_id, kind', 'number', 'issued_on');
BEGIN;
INSERT INTO documents (tenant_id, kind, issued_on) VALUES
    ('acme', 'invoice', '2026-12-30'), ('acme', 'credit-note', '2026-12-31'),
    ('acme', 'credit-note', '2027-01-01')
    RETURNING kind, issued_on, number;   -- not numbered yet
COMMIT;
SELECT kind, issued_on, number FROM documents ORDER BY id;
-- inside the transaction: ask for the numbers just before committing
BEGIN;
INSERT INTO documents (tenant_id, kind, issued_on) VALUES ('acme', 'credit-note', '2027-01-05');
SET CONSTRAINTS document_number IMMEDIATE;
SELECT number FROM documents WHERE issued_on = '2027-01-05';
COMMIT;

-- Bad input is refused with a SQLSTATE and a hint, and changes nothing.
SELECT exactly.next_invoice_number(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.next_invoice_numbers('eu', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.define_invoice_sequence('eu', '11', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.define_invoice_sequence('eu', '11', format => 'INV-{year}-{number}');
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.define_invoice_sequence('eu', '11', format => 'INV-{number}', reset => 'yearly');
\echo :LAST_ERROR_SQLSTATE
