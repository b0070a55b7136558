-- seed.sql for the SQLite store (schema.sqlite.sql): seeds <prefix>1 .. <prefix><contexts>,
-- each already holding <retention> versions (for the write tests, so that every measured
-- write adds one version and prunes one). Times are RFC 3339 text with microseconds, as the server writes them.
-- Run with the sqlite3 CLI (readfile() is one of its functions), parameters set with
-- `.parameter set`: prefix, payload_file (a file holding the compact JSON object), size,
-- contexts, retention.
BEGIN IMMEDIATE;
WITH RECURSIVE
    n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < :contexts),
    now(t) AS (SELECT replace(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'Z', '000Z'))
INSERT INTO factory_context_metadata
    (context_id, version, source, parent_id, size_bytes, has_embedding, created_at, updated_at)
SELECT :prefix || n, :retention, 'factory', NULL, :size, 0, t, t
FROM n, now;
WITH RECURSIVE
    n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < :contexts),
    v(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM v WHERE v < :retention),
    now(t) AS (SELECT replace(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'Z', '000Z')),
    p(payload) AS (SELECT CAST(readfile(:payload_file) AS TEXT))
INSERT INTO factory_context_versions
    (context_id, version, source, parent_id, data, metadata, embedding,
     change_type, changed_by, changed_at, size_bytes)
SELECT :prefix || n, v, 'factory', NULL,
       json_set(payload, '$.seq', v), '{}', NULL,
       CASE WHEN v = 1 THEN 'create' ELSE 'update' END, NULL, t, :size
FROM n, v, now, p;
COMMIT;
-- No ANALYZE: the server never runs it, so a real SQLite file has no statistics either.
PRAGMA wal_checkpoint(TRUNCATE);
