SELECT r.tickets_requested, r.tickets_created,
       count(t.*) AS tickets,
       count(DISTINCT t.code) AS distinct_codes,
       count(t.*) = r.tickets_requested AND count(DISTINCT t.code) = count(t.*)
         AND r.tickets_created = count(t.*) AS exactly_as_requested
FROM exactly.raffles r LEFT JOIN exactly.tickets t ON t.raffle_id = r.id
WHERE r.id = 1
GROUP BY r.id;
