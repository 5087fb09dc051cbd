-- Every resource should reach the third party exactly once and be marked synced.
SELECT count(*) AS deliveries, count(DISTINCT resource_id) AS resources_delivered,
       (SELECT count(*) FROM resources WHERE synced_at IS NULL) AS still_pending,
       CASE WHEN count(*) = 20000 AND count(DISTINCT resource_id) = 20000
                 AND NOT EXISTS (SELECT FROM resources WHERE synced_at IS NULL)
            THEN 'ok: each resource sent exactly once'
            ELSE 'WRONG: ' || (count(*) - count(DISTINCT resource_id)) || ' resources sent twice or more' END AS verdict
FROM deliveries;
