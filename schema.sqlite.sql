-- contextd's SQLite schema: the same tables as schema.sql, in SQLite's types. Times are
-- RFC 3339 UTC text with microseconds (they sort as they compare), JSON is compact text, and an
-- embedding is a blob of little-endian 32-bit floats.
--
-- Applied by `contextd migrate` and `contextd serve` exactly as schema.sql is: the preamble
-- every time, each "-- migration: N name" section once, in its own transaction, recorded in
-- contextd_schema_migrations. Never edit a section that has shipped: append a new one, here
-- and in schema.sql.

CREATE TABLE IF NOT EXISTS contextd_schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    applied_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- migration: 1 initial
CREATE TABLE factory_context_metadata (
    context_id    TEXT    NOT NULL PRIMARY KEY CHECK (length(context_id) BETWEEN 1 AND 255),
    version       INTEGER NOT NULL CHECK (version >= 1),
    source        TEXT    NOT NULL CHECK (source IN ('factory', 'mcp')),
    parent_id     TEXT,
    size_bytes    INTEGER NOT NULL CHECK (size_bytes >= 0),
    has_embedding INTEGER NOT NULL DEFAULT 0 CHECK (has_embedding IN (0, 1)),
    synced_at     TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
);
CREATE INDEX factory_context_metadata_source_idx
    ON factory_context_metadata (source, context_id);
CREATE INDEX factory_context_metadata_parent_idx
    ON factory_context_metadata (parent_id, context_id) WHERE parent_id IS NOT NULL;

CREATE TABLE factory_context_versions (
    context_id  TEXT    NOT NULL
                        REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version >= 1),
    source      TEXT    NOT NULL CHECK (source IN ('factory', 'mcp')),
    parent_id   TEXT,
    data        TEXT    NOT NULL CHECK (json_type(data) = 'object'),
    metadata    TEXT    NOT NULL DEFAULT '{}' CHECK (json_type(metadata) = 'object'),
    embedding   BLOB,
    change_type TEXT    NOT NULL
                        CHECK (change_type IN ('create', 'update', 'merge', 'restore', 'sync')),
    changed_by  TEXT,
    changed_at  TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    PRIMARY KEY (context_id, version)
) WITHOUT ROWID;

-- The L3 cache is skipped on SQLite (it would live in the same file as the data it caches);
-- the table is kept so that both stores have the same tables.
CREATE TABLE factory_cache_entries (
    cache_key     TEXT    NOT NULL PRIMARY KEY,
    context_id    TEXT    NOT NULL
                          REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    value         BLOB    NOT NULL,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at    TEXT,
    access_count  INTEGER NOT NULL DEFAULT 0,
    last_accessed TEXT
);
CREATE INDEX factory_cache_entries_context_idx ON factory_cache_entries (context_id);

-- One writer at a time, so a change is numbered (seq) in its own transaction, in commit order.
CREATE TABLE factory_sync_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    seq             INTEGER UNIQUE,
    context_id      TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    incarnation     TEXT    NOT NULL,
    op              TEXT    NOT NULL CHECK (op IN ('upsert', 'delete')),
    change_type     TEXT    CHECK (change_type IN ('create', 'update', 'merge', 'restore', 'sync')),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at    TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT
);
CREATE INDEX factory_sync_outbox_pending_idx
    ON factory_sync_outbox (seq) WHERE delivered_at IS NULL;
CREATE INDEX factory_sync_outbox_context_idx ON factory_sync_outbox (context_id, id);
CREATE INDEX factory_sync_outbox_created_idx ON factory_sync_outbox (created_at);

-- How far each derived index (the vector indexer) has applied the outbox.
CREATE TABLE contextd_indexer_state (
    name        TEXT    NOT NULL PRIMARY KEY,
    seq         INTEGER NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- migration: 2 api keys
-- API keys: only the SHA-256 of each key is kept. A revoked key stays, for the record.
CREATE TABLE api_keys (
    id           TEXT NOT NULL PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    prefix       TEXT,
    key_hash     BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at TEXT,
    revoked_at   TEXT
);

-- migration: 3 lean cache
-- Versions move to an ordinary (rowid) table. A WITHOUT ROWID table keeps at most about 1,000
-- bytes of a row in its b-tree page (with 4 KB pages) and puts the rest in overflow pages of
-- their own, so a 1 KB context took 4.7 KB on disk; a rowid table keeps rows of up to about
-- 4 KB in the page. The copy runs once, in this migration's transaction.
CREATE TABLE factory_context_versions_rowid (
    context_id  TEXT    NOT NULL
                        REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version >= 1),
    source      TEXT    NOT NULL CHECK (source IN ('factory', 'mcp')),
    parent_id   TEXT,
    data        TEXT    NOT NULL CHECK (json_type(data) = 'object'),
    metadata    TEXT    NOT NULL DEFAULT '{}' CHECK (json_type(metadata) = 'object'),
    embedding   BLOB,
    change_type TEXT    NOT NULL
                        CHECK (change_type IN ('create', 'update', 'merge', 'restore', 'sync')),
    changed_by  TEXT,
    changed_at  TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
    PRIMARY KEY (context_id, version)
);
INSERT INTO factory_context_versions_rowid
    SELECT context_id, version, source, parent_id, data, metadata, embedding, change_type,
           changed_by, changed_at, size_bytes
    FROM factory_context_versions ORDER BY context_id, version;
DROP TABLE factory_context_versions;
ALTER TABLE factory_context_versions_rowid RENAME TO factory_context_versions;

-- The same cache table as schema.sql's migration 3 (L3 itself stays off on SQLite).
CREATE TABLE factory_cache_records (
    context_id    TEXT    NOT NULL PRIMARY KEY
                          REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    record        BLOB    NOT NULL,
    expires_at    TEXT    NOT NULL,
    access_count  INTEGER NOT NULL DEFAULT 0,
    last_accessed TEXT
);
DELETE FROM factory_cache_entries;
DROP INDEX factory_sync_outbox_context_idx;

-- migration: 4 server embeddings
-- The same table as schema.sql's migration 4: the embedding contextd made of a context's text,
-- of the version it was made for (a row of an older version is stale).
CREATE TABLE contextd_server_embeddings (
    context_id  TEXT    NOT NULL PRIMARY KEY
                        REFERENCES factory_context_metadata (context_id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version >= 1),
    model       TEXT    NOT NULL,
    text_sha256 BLOB    NOT NULL CHECK (length(text_sha256) = 32),
    embedding   BLOB    NOT NULL,
    embedded_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
