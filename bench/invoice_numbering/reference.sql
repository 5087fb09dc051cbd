-- Invoice numbering as invoicing needs it (templates, periods, scopes, commit-time numbers),
-- measured against pg_exactly's own plain numbering: here "reference" is
--   * for the triggers: the insert-time trigger exactly.assign_invoice_number, whose
--     tenant lock is held from the INSERT to the end of the transaction;
--   * for templates and periods: a tenant with today's default numbering.
CREATE TABLE invoices_at_insert (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    issued_on date NOT NULL DEFAULT current_date,
    number    text UNIQUE
);
CREATE TRIGGER invoice_number BEFORE INSERT ON invoices_at_insert FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number('tenant_id', 'number', 'issued_on');

CREATE TABLE invoices_at_commit (LIKE invoices_at_insert INCLUDING ALL);
CREATE CONSTRAINT TRIGGER invoice_number AFTER INSERT OR UPDATE ON invoices_at_commit
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION exactly.assign_invoice_number_at_commit('tenant_id', 'number', 'issued_on');

-- the same numbering for both tables' tenant
SELECT exactly.define_invoice_sequence('hot', 'INV', 8, format => '{prefix}-{yyyy}-{number}', reset => 'yearly');
-- a plain tenant, and one with a template and a monthly series
SELECT exactly.define_invoice_sequence('plain', 'INV', 8);
SELECT exactly.define_invoice_sequence('monthly', 'INV', 8, format => '{prefix}-{yyyy}{mm}-{number}', reset => 'monthly');
