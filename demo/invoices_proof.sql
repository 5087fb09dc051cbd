-- Per tenant: how many invoices, how many distinct numbers, and whether they are exactly 1..N.
WITH numbered AS (
    SELECT tenant_identifier AS tenant,
           split_part(invoice_number, '-', 2)::bigint AS n
    FROM invoices
)
SELECT tenant,
       count(*) AS invoices,
       count(DISTINCT n) AS distinct_numbers,
       min(n) AS lowest,
       max(n) AS highest,
       count(*) = count(DISTINCT n) AND min(n) = 1 AND max(n) = count(*) AS exactly_1_to_n
FROM numbered
GROUP BY tenant
ORDER BY tenant;
