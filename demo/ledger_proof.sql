-- Every running balance must be the previous one plus the amount (psql variable :payments
-- names the table), and the last one the sum of all amounts.
SELECT count(*) AS payments,
       count(*) FILTER (WHERE running_balance <> previous + amount) AS wrong_running_balances,
       sum(amount) AS sum_of_amounts,
       (array_agg(running_balance ORDER BY id DESC))[1] AS last_running_balance
FROM (SELECT *, coalesce(lag(running_balance) OVER (ORDER BY id), 0) AS previous FROM :payments) entries;
