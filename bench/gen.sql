-- Benchmark dataset generator: a shop-like schema whose dump looks like real data, not like
-- pgbench's blank-padded rows. Column mix (per table, roughly by dump bytes):
--   - text of varying entropy: Zipf-distributed pseudo-words in phrases (compresses ~3x like
--     prose), names, e-mails, enum-like statuses (very low entropy), md5 tokens (high entropy);
--   - numerics, integers, floats (some rounded, some full precision), booleans, inet;
--   - timestamps (monotonic and random);
--   - jsonb (repeated keys, varying values);
--   - bytea: sha256 digests and random attachments (incompressible).
-- Everything derived from hashes of the row number is deterministic; random() adds the rest.
--
-- Run in steps (psql variables, each true/false), so the two fill steps can run in parallel
-- sessions:
--   psql -v target_mb=200 -v step=setup  -f bench/gen.sql   -- helpers, phrase pool, tables
--   psql -v target_mb=200 -v step=fill_a -f bench/gen.sql   -- customers, orders
--   psql -v target_mb=200 -v step=fill_b -f bench/gen.sql   -- documents, measurements
--   psql -v target_mb=200 -v step=finish -f bench/gen.sql   -- drop helpers, vacuum freeze analyze
-- target_mb is the wanted table data size (heap + TOAST, without indexes) in MiB.
--
-- What a row of each table holds is written once, in bench_fill(kind, table, lo, hi,
-- n_customers): it fills rows lo..hi of any table shaped like one of the four (CREATE TABLE ...
-- (LIKE orders INCLUDING ALL)). bench/parallel.sh builds its databases of many tables, and of one
-- huge table filled by several sessions at once, with it after `step=setup`, and drops the
-- helpers with `step=drop_helpers`.

\set ON_ERROR_STOP 1
SET synchronous_commit = off;
SET client_min_messages = warning;

-- Row counts from the target size. Bytes per row on disk were measured (heap + TOAST incl.
-- tuple headers); shares are of the total table data.
SELECT (:target_mb * 1048576.0 * 0.05 / 190)::bigint AS n_customers,
       (:target_mb * 1048576.0 * 0.38 / 417)::bigint AS n_orders,
       (:target_mb * 1048576.0 * 0.37 / 940)::bigint AS n_documents,
       (:target_mb * 1048576.0 * 0.20 / 60)::bigint AS n_measurements,
       200000 AS n_phrases
\gset

SELECT :'step' = 'setup' AS do_setup, :'step' = 'fill_a' AS do_fill_a, :'step' = 'fill_b' AS do_fill_b,
       :'step' = 'finish' AS do_finish, :'step' IN ('finish', 'drop_helpers') AS do_drop_helpers
\gset

\if :do_setup
-- A pseudo-word for vocabulary rank k (1 = most common): 2-10 letters, deterministic.
CREATE FUNCTION bench_word(k int) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN translate(substr(md5('w' || k), 1, 2 + (k * 7) % 9), '0123456789abcdef', 'etaoinshrdlucmfy');

-- A Zipf-like random vocabulary rank out of 20,000 (small ranks much more frequent).
CREATE FUNCTION bench_rank() RETURNS int LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN 1 + floor(20000 * power(random(), 3))::int;

-- The phrase pool: 200k phrases of 8-23 words (~25 MB, larger than zstd's window at level 3,
-- so picked phrases rarely repeat within reach of the compressor).
CREATE TABLE bench_phrases (id int PRIMARY KEY, p text NOT NULL);
INSERT INTO bench_phrases
SELECT g, array_to_string(ARRAY(SELECT bench_word(bench_rank()) FROM generate_series(1, 8 + g % 16)), ' ')
          || (ARRAY['.', '.', '.', '!', '?', ',', ';'])[1 + g % 7]
FROM generate_series(1, :n_phrases) AS g;
ANALYZE bench_phrases;

-- Phrase for a key (deterministic), and n phrases joined (one index scan).
CREATE FUNCTION bench_phrase(key bigint) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN (SELECT p FROM bench_phrases WHERE id = 1 + abs(hashint8(key)) % 200000);
CREATE FUNCTION bench_text(key bigint, n int) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN (SELECT string_agg(p, ' ') FROM bench_phrases
        WHERE id = ANY (ARRAY(SELECT 1 + abs(hashint8(key * 64 + k)) % 200000 FROM generate_series(1, n) AS k)));

CREATE TABLE customers (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    country     char(2) NOT NULL,
    city        text NOT NULL,
    created_at  timestamptz NOT NULL,
    balance     numeric(12,2) NOT NULL,
    is_active   boolean NOT NULL,
    prefs       jsonb NOT NULL
);
CREATE TABLE orders (
    id             bigint PRIMARY KEY,
    customer_id    bigint NOT NULL,
    created_at     timestamptz NOT NULL,
    status         text NOT NULL,
    amount         numeric(12,2) NOT NULL,
    currency       char(3) NOT NULL,
    items          jsonb NOT NULL,
    session_token  text NOT NULL,
    client_ip      inet,
    note           text
);
CREATE TABLE documents (
    id          bigint PRIMARY KEY,
    author_id   bigint NOT NULL,
    title       text NOT NULL,
    body        text NOT NULL,
    lang        text NOT NULL,
    created_at  timestamptz NOT NULL,
    checksum    bytea NOT NULL,
    attachment  bytea
);
CREATE TABLE measurements (
    sensor_id  integer NOT NULL,
    ts         timestamptz NOT NULL,
    value      double precision NOT NULL,
    unit       text NOT NULL,
    quality    smallint NOT NULL,
    ok         boolean NOT NULL
);

-- Fill rows lo..hi (the row number i, from which the deterministic columns derive) of table tbl,
-- shaped like table kind. n_customers is the range of orders.customer_id.
CREATE FUNCTION bench_fill(kind text, tbl text, lo int, hi int, n_customers bigint) RETURNS void
LANGUAGE plpgsql AS $fill$
BEGIN
    CASE kind
    WHEN 'customers' THEN
        EXECUTE 'INSERT INTO ' || quote_ident(tbl) || $q$
SELECT i,
       initcap(bench_word(bench_rank())) || ' ' || initcap(bench_word(1000 + abs(hashint8(i)) % 19000)),
       bench_word(bench_rank()) || '.' || i || '@' || bench_word(1 + i % 300) || (ARRAY['.com', '.org', '.net', '.de', '.io'])[1 + i % 5],
       (ARRAY['DE', 'FR', 'US', 'JP', 'BR', 'IN', 'GB', 'ES', 'IT', 'NL'])[1 + abs(hashint8(i)) % 10],
       initcap(bench_word(1 + abs(hashint8(i * 3)) % 2000)),
       timestamptz '2015-01-01 00:00:00+00' + random() * interval '3650 days',
       round((random() * random() * 20000 - 1000)::numeric, 2),
       random() < 0.85,
       jsonb_build_object('newsletter', random() < 0.3,
                          'theme', (ARRAY['light', 'dark', 'system'])[1 + i % 3],
                          'lang', (ARRAY['en', 'de', 'fr', 'ja', 'pt'])[1 + i % 5],
                          'score', round((random() * 100)::numeric, 1))
FROM generate_series($1, $2) AS i$q$ USING lo, hi;
    WHEN 'orders' THEN
        EXECUTE 'INSERT INTO ' || quote_ident(tbl) || $q$
SELECT i,
       1 + abs(hashint8(i)) % $3,
       timestamptz '2020-01-01 00:00:00+00' + i * interval '2 seconds' + random() * interval '1 second',
       (ARRAY['placed', 'paid', 'paid', 'shipped', 'shipped', 'shipped', 'delivered', 'returned'])[1 + abs(hashint8(i * 5)) % 8],
       round((random() * 400 + 1)::numeric, 2),
       (ARRAY['EUR', 'USD', 'JPY', 'GBP'])[1 + i % 4],
       (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad((abs(hashint8(i * 8 + k)) % 50000)::text, 6, '0'),
                                            'name', bench_word(bench_rank()) || ' ' || bench_word(bench_rank()),
                                            'qty', 1 + (i + k) % 4,
                                            'price', round((random() * 100)::numeric, 2)))
        FROM generate_series(1, 1 + i % 4) AS k),
       md5(random()::text),
       ('10.' || (i % 256) || '.' || (abs(hashint8(i)) % 256) || '.' || (i % 253 + 1))::inet,
       CASE WHEN i % 10 < 3 THEN bench_phrase(i) END
FROM generate_series($1, $2) AS i$q$ USING lo, hi, n_customers;
    WHEN 'documents' THEN
        EXECUTE 'INSERT INTO ' || quote_ident(tbl) || $q$
SELECT i, 1 + abs(hashint8(i)) % 100000, title, body,
       (ARRAY['en', 'en', 'en', 'de', 'fr', 'es'])[1 + i % 6],
       timestamptz '2018-01-01 00:00:00+00' + random() * interval '2000 days',
       sha256(convert_to(body, 'UTF8')),
       CASE WHEN i % 10 = 0
            THEN (SELECT decode(string_agg(md5(random()::text || k), ''), 'hex') FROM generate_series(1, 8 + i % 48) AS k)
       END
FROM (SELECT i, initcap(left(bench_phrase(-i), 20 + i % 40)) AS title, bench_text(i, 2 + i % 10) AS body
      FROM generate_series($1, $2) AS i) AS d$q$ USING lo, hi;
    WHEN 'measurements' THEN
        EXECUTE 'INSERT INTO ' || quote_ident(tbl) || $q$
SELECT 1 + i % 5000,
       timestamptz '2024-01-01 00:00:00+00' + (i / 5000) * interval '1 minute',
       CASE WHEN i % 2 = 0 THEN round((20 + 10 * sin(i / 5000.0) + random())::numeric, 2)::float8
            ELSE 100 * random() END,
       (ARRAY['C', 'kPa', '%', 'lx', 'ppm'])[1 + (i % 5000) % 5],
       (CASE WHEN random() < 0.98 THEN 100 ELSE (random() * 100)::int END)::smallint,
       random() < 0.995
FROM generate_series($1, $2) AS i$q$ USING lo, hi;
    END CASE;
END
$fill$;
\endif

\if :do_fill_a
\o /dev/null
SELECT bench_fill('customers', 'customers', 1, :n_customers, :n_customers);
SELECT bench_fill('orders', 'orders', 1, :n_orders, :n_customers);
\o
\endif

\if :do_fill_b
\o /dev/null
SELECT bench_fill('documents', 'documents', 1, :n_documents, :n_customers);
SELECT bench_fill('measurements', 'measurements', 1, :n_measurements, :n_customers);
\o
\endif

\if :do_drop_helpers
DROP FUNCTION bench_fill(text, text, int, int, bigint), bench_text(bigint, int), bench_phrase(bigint), bench_rank(),
    bench_word(int);
DROP TABLE bench_phrases;
\endif

\if :do_finish
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX measurements_sensor_ts_idx ON measurements (sensor_id, ts);
VACUUM (FREEZE, ANALYZE);
\endif
