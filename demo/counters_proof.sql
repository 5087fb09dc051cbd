-- 1000 jobs over 10 keys: there should be 10 rows, one per key, counting 1000 jobs.
SELECT count(*) AS rows, count(DISTINCT key) AS keys, sum(value) AS jobs_counted,
       CASE WHEN count(*) = 10 AND sum(value) = 1000 THEN 'ok: one row per key, every job counted'
            ELSE 'WRONG: ' || (count(*) - count(DISTINCT key)) || ' duplicate rows, '
                 || (1000 - sum(value)) || ' jobs lost' END AS verdict
FROM counter_caches;
