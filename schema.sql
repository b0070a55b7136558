-- contextd's Postgres schema. schema.sqlite.sql holds the same tables for the embedded store;
-- a change to one is a change to both.
--
-- `contextd migrate` and `contextd serve` apply this file, under an advisory lock so that
-- instances starting together take turns. The preamble (everything before the first
-- "-- migration:" line) runs every time and must stay idempotent. Each "-- migration: N name"
-- section runs once, in its own transaction, and is recorded in contextd_schema_migrations.
-- Never edit a section that has shipped: append a new one.

CREATE TABLE IF NOT EXISTS contextd_schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- migration: 1 initial
-- One row per context: its current version and what lists and filters need.
CREATE TABLE factory_context_metadata (
    -- COLLATE "C": ids sort bytewise, as on SQLite, whatever the database's locale.
    context_id    text        COLLATE "C" PRIMARY KEY
                              CHECK (context_id ~ '^[A-Za-z0-9._:-]{1,255}$'),
    version       bigint      NOT NULL CHECK (version >= 1),
    source        text        NOT NULL CHECK (source IN ('factory', 'mcp')),
    parent_id     text        COLLATE "C",
    size_bytes    bigint      NOT NULL CHECK (size_bytes >= 0),
    has_embedding boolean     NOT NULL DEFAULT false,
    -- Factory's own timestamp of the current version, when it came from Factory sync.
    synced_at     timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX factory_context_metadata_source_idx
    ON factory_context_metadata (source, context_id);
CREATE INDEX factory_context_metadata_parent_idx
    ON factory_context_metadata (parent_id, context_id) WHERE parent_id IS NOT NULL;

-- Every kept version, the current one included (the current payload is read from here).
CREATE TABLE factory_context_versions (
    context_id  text        COLLATE "C" NOT NULL
                            REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version     bigint      NOT NULL CHECK (version >= 1),
    source      text        NOT NULL CHECK (source IN ('factory', 'mcp')),
    parent_id   text,
    data        jsonb       NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    metadata    jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- pgvector is not packaged everywhere; the vector index is derived from this column.
    embedding   real[],
    change_type text        NOT NULL
                            CHECK (change_type IN ('create', 'update', 'merge', 'restore', 'sync')),
    changed_by  text,
    changed_at  timestamptz NOT NULL,
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    PRIMARY KEY (context_id, version)
);

-- L3 of the cache: serialized contexts by key (`context:{id}`, `context:{id}:v{n}`).
CREATE TABLE factory_cache_entries (
    cache_key     text        PRIMARY KEY,
    context_id    text        NOT NULL
                              REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version       bigint      NOT NULL,
    value         bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    access_count  bigint      NOT NULL DEFAULT 0,
    last_accessed timestamptz
);
CREATE INDEX factory_cache_entries_context_idx ON factory_cache_entries (context_id);
CREATE INDEX factory_cache_entries_expires_idx
    ON factory_cache_entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX factory_cache_entries_hot_idx ON factory_cache_entries (access_count DESC);

-- Every committed change, appended by the write's own transaction, for the change feed,
-- the webhook pusher and the vector indexer.
CREATE TABLE factory_sync_outbox (
    -- Insertion order: ids are handed out before commit, so they are not commit order.
    id              bigserial   PRIMARY KEY,
    -- Commit order, the feed's and the pusher's order: numbered after commit by the
    -- sequencer (one at a time, under an advisory lock), so a change that commits late never
    -- gets a number below one a reader has already seen.
    seq             bigint      UNIQUE,
    context_id      text        COLLATE "C" NOT NULL,
    -- The version written; for a delete, the version that was deleted.
    version         bigint      NOT NULL,
    -- The context's created_at: a re-created context reuses version numbers, and this tells
    -- which incarnation's version a change was.
    incarnation     timestamptz NOT NULL,
    op              text        NOT NULL CHECK (op IN ('upsert', 'delete')),
    change_type     text        CHECK (change_type IN ('create', 'update', 'merge', 'restore', 'sync')),
    -- The clock at the insert, the write's last statement: when the change committed, near enough.
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text
);
CREATE INDEX factory_sync_outbox_unsequenced_idx
    ON factory_sync_outbox (id) WHERE seq IS NULL;
CREATE INDEX factory_sync_outbox_pending_idx
    ON factory_sync_outbox (seq) WHERE delivered_at IS NULL AND seq IS NOT NULL;
CREATE INDEX factory_sync_outbox_context_idx ON factory_sync_outbox (context_id, id);
CREATE INDEX factory_sync_outbox_created_idx ON factory_sync_outbox (created_at);

-- How far each derived index (the vector indexer) has applied the outbox.
CREATE TABLE contextd_indexer_state (
    name        text        PRIMARY KEY,
    seq         bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- migration: 2 api keys
-- API keys: only the SHA-256 of each key is kept. A revoked key stays, for the record.
CREATE TABLE api_keys (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    prefix       text        CHECK (prefix IS NULL OR prefix ~ '^[A-Za-z0-9._:-]{1,255}$'),
    key_hash     bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- migration: 3 lean cache
-- L3 moves to a leaner table: keyed by the context id alone (L3 holds current versions only),
-- the record compressed by contextd, nothing kept twice. The old table is emptied, not dropped,
-- so that instances of the previous release still running during a rolling upgrade write to it
-- harmlessly; a later migration drops it.
CREATE TABLE factory_cache_records (
    context_id    text        COLLATE "C" PRIMARY KEY
                              REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version       bigint      NOT NULL,
    -- The cache record (every field of the version as compact JSON), raw-deflate compressed.
    record        bytea       NOT NULL,
    expires_at    timestamptz NOT NULL,
    access_count  bigint      NOT NULL DEFAULT 0,
    last_accessed timestamptz
);
CREATE INDEX factory_cache_records_expires_idx ON factory_cache_records (expires_at);
CREATE INDEX factory_cache_records_hot_idx ON factory_cache_records (access_count DESC);
TRUNCATE factory_cache_entries;
-- Nothing reads the outbox by context: its index only cost bytes and write time.
DROP INDEX factory_sync_outbox_context_idx;
-- A version's `data` is kept as `json`: the text contextd wrote (compact, canonical). Nothing in
-- SQL looks inside it, and `jsonb`'s binary form, with a header for every key and value, took
-- about 40% more room than that text for the nested notes agents keep. (This rewrites the
-- table once.) `metadata` stays `jsonb`, for filters.
ALTER TABLE factory_context_versions
    DROP CONSTRAINT factory_context_versions_data_check,
    ALTER COLUMN data TYPE json USING data::json,
    ADD CONSTRAINT factory_context_versions_data_check CHECK (json_typeof(data) = 'object');

-- migration: 4 server embeddings
-- The embedding contextd's embedder made of a context's text, for contexts written without one
-- (`embedding_source: server`). One row per context, of the version it was made for: a row of
-- an older version is stale and never read as the current one's (the next is made by then, or
-- the old one taken over when `text_sha256` says the text did not change). A client's
-- embedding stays in `factory_context_versions.embedding` and is never replaced by this one.
CREATE TABLE contextd_server_embeddings (
    context_id  text        COLLATE "C" PRIMARY KEY
                            REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version     bigint      NOT NULL CHECK (version >= 1),
    -- The embedder that made it (`local:<model directory>`, `openai:<model>`): an embedding of
    -- another is made again.
    model       text        NOT NULL,
    -- SHA-256 of the text embedded.
    text_sha256 bytea       NOT NULL CHECK (octet_length(text_sha256) = 32),
    embedding   real[]      NOT NULL,
    embedded_at timestamptz NOT NULL DEFAULT now()
);
