-- pgbench script: the bare Postgres cost of contextd's write transaction, for an update of an
-- existing context (src/store/postgres.rs: LOCK_CONTEXT, SELECT_CURRENT, UPSERT_METADATA,
-- INSERT_VERSION, PRUNE_VERSIONS, APPEND_OUTBOX), sent the way the server sends it:
-- prepared statements (-M prepared) in four round trips — BEGIN; lock + read pipelined;
-- the four writes pipelined; COMMIT.
--
-- Variables (pgbench -D): payload (compact JSON object, ~1 KB), size (its length in bytes),
-- contexts (how many bench_put_<n> exist), retention (versions kept per context).
--
-- The server computes the next version from the row it read; pgbench cannot feed a result
-- into a pipeline (\gset is not allowed there), so the version is computed in SQL instead:
-- the upsert bumps it, and the later statements read it back from the (already locked,
-- just updated) metadata row — one extra index probe each, nothing more.
\set n random(1, :contexts)
BEGIN;
\startpipeline
SELECT pg_advisory_xact_lock(hashtextextended('bench_put_' || :n, 0));
SELECT m.version, m.source, m.parent_id, m.size_bytes, m.created_at, m.updated_at,
       v.data, v.metadata, v.embedding
FROM factory_context_metadata m
JOIN factory_context_versions v ON v.context_id = m.context_id AND v.version = m.version
WHERE m.context_id = 'bench_put_' || :n;
\endpipeline
\startpipeline
INSERT INTO factory_context_metadata
    (context_id, version, source, parent_id, size_bytes, has_embedding, created_at, updated_at)
VALUES ('bench_put_' || :n, 1, 'factory', NULL, :size, false, now(), now())
ON CONFLICT (context_id) DO UPDATE SET
    version = factory_context_metadata.version + 1,
    source = EXCLUDED.source,
    parent_id = EXCLUDED.parent_id,
    size_bytes = EXCLUDED.size_bytes,
    has_embedding = EXCLUDED.has_embedding,
    synced_at = NULL,
    updated_at = EXCLUDED.updated_at;
INSERT INTO factory_context_versions
    (context_id, version, source, parent_id, data, metadata, embedding,
     change_type, changed_by, changed_at, size_bytes)
SELECT m.context_id, m.version, 'factory', NULL,
       :payload::jsonb || jsonb_build_object('seq', m.version), '{}'::jsonb, NULL,
       'update', NULL, now(), :size
FROM factory_context_metadata m
WHERE m.context_id = 'bench_put_' || :n;
DELETE FROM factory_context_versions
WHERE context_id = 'bench_put_' || :n
  AND version < (SELECT m.version - :retention + 1
                 FROM factory_context_metadata m WHERE m.context_id = 'bench_put_' || :n);
INSERT INTO factory_sync_outbox (context_id, version, op, change_type)
SELECT m.context_id, m.version, 'upsert', 'update'
FROM factory_context_metadata m
WHERE m.context_id = 'bench_put_' || :n;
\endpipeline
COMMIT;
