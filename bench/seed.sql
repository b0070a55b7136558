-- Seeds contexts <prefix>1 .. <prefix><contexts>, each already holding <retention> versions:
-- the write tests' bench_put_ contexts (so that every measured write, server PUT or pgbench
-- transaction, is in the steady state: it adds one version and prunes one), or the metrics
-- test's bench_m_ ones. psql variables: prefix, payload (compact JSON object), size,
-- contexts, retention.
BEGIN;
INSERT INTO factory_context_metadata
    (context_id, version, source, parent_id, size_bytes, has_embedding, created_at, updated_at)
SELECT :'prefix' || n, :retention, 'factory', NULL, :size, false, now(), now()
FROM generate_series(1, :contexts) AS n;
INSERT INTO factory_context_versions
    (context_id, version, source, parent_id, data, metadata, embedding,
     change_type, changed_by, changed_at, size_bytes)
SELECT :'prefix' || n, v, 'factory', NULL,
       :'payload'::jsonb || jsonb_build_object('seq', v), '{}'::jsonb, NULL,
       CASE WHEN v = 1 THEN 'create' ELSE 'update' END, NULL, now(), :size
FROM generate_series(1, :contexts) AS n, generate_series(1, :retention) AS v;
COMMIT;
VACUUM ANALYZE factory_context_metadata, factory_context_versions, factory_sync_outbox;
