-- 1000 jobs over 10 keys: there should be 10 rows, one per key, counting 1000 jobs. A key's
-- count is what find_by(key:) reads: the value of its first row.
WITH first_rows AS (SELECT DISTINCT ON (key) key, value FROM counter_caches ORDER BY key, id)
SELECT (SELECT count(*) FROM counter_caches) AS rows, count(*) AS keys, sum(value) AS jobs_counted,
       CASE WHEN (SELECT count(*) FROM counter_caches) = 10 AND sum(value) = 1000
            THEN 'ok: one row per key, every job counted'
            ELSE 'WRONG: ' || ((SELECT count(*) FROM counter_caches) - count(*)) || ' duplicate rows, '
                 || (1000 - sum(value)) || ' jobs not counted' END AS verdict
FROM first_rows;
