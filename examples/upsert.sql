-- Find-or-create and counters on your own tables (seed 002).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The seed's table, with the unique index that makes "one row per key" true.
CREATE TABLE counter_caches (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    value      integer NOT NULL DEFAULT 0,
    label      text
);

-- The first call creates the row (defaults apply only then), every later call finds it.
SELECT * FROM exactly.find_or_create('counter_caches', '{"key": "books"}', '{"label": "Books"}');
SELECT * FROM exactly.find_or_create('counter_caches', '{"key": "books"}', '{"label": "ignored"}');

-- The seed's counter: create if missing and add, atomically; returns the new value.
SELECT exactly.increment('counter_caches', '{"key": "books"}', 'value');
SELECT exactly.increment('counter_caches', '{"key": "pens"}', 'value', 5);
SELECT key, value, label FROM counter_caches ORDER BY id;

-- The key must be exactly the columns of a unique index.
SELECT * FROM exactly.find_or_create('counter_caches', '{"label": "Books"}');
\echo :LAST_ERROR_SQLSTATE

-- Unknown columns are refused by name; nothing in a key is ever run as SQL.
SELECT * FROM exactly.find_or_create('counter_caches', '{"key; drop table counter_caches; --": 1}');
\echo :LAST_ERROR_SQLSTATE

-- Only number columns can be counted.
SELECT exactly.increment('counter_caches', '{"key": "books"}', 'label');
\echo :LAST_ERROR_SQLSTATE
