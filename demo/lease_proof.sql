-- A write that lands after a write made under a newer grant came from a holder whose lease
-- had been taken over: the stale write the fence is there to stop.
SELECT count(*) AS writes,
       count(*) FILTER (WHERE fence < newer_before) AS stale_writes_landed,
       CASE WHEN count(*) FILTER (WHERE fence < newer_before) = 0
            THEN 'ok: no write landed after a newer holder''s'
            ELSE 'WRONG: stale holders overwrote newer ones' END AS verdict
FROM (SELECT fence, max(fence) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newer_before
      FROM sync_writes) w;
