//! The Postgres store: the outbox. The commit signal, the change feed in commit order, delivery to the
//! webhook, and pruning.

use super::*;

#[async_trait]
impl ChangeLog for PostgresStore {
    fn signal_spans_processes(&self) -> bool {
        true
    }

    fn commits(&self) -> broadcast::Receiver<CommitNotice> {
        self.commits.subscribe()
    }

    async fn sequence_outbox(&self) -> Result<(), StoreError> {
        self.bounded(true, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            // One simple query, so the server runs the lock before the UPDATE takes its snapshot.
            // (Two pipelined unprepared statements are prepared first, and `join!` may then send
            // the UPDATE ahead of the lock: two sequencers would then number the same rows.)
            tx.batch_execute(&format!("{SEQUENCER_LOCK}; {SEQUENCE_OUTBOX}"))
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        })
        .await
    }

    async fn changes(
        &self,
        since: i64,
        limit: usize,
        visible: &Visible,
    ) -> Result<Vec<Change>, StoreError> {
        let id_prefix = visible.prefix();
        self.bounded(false, async move {
            let client = self.client().await?;
            let sql = format!(
                "{CHANGE_COLUMNS} WHERE o.seq > $1 \
                 AND ($3::text IS NULL OR left(o.context_id, length($3)) = $3) \
                 ORDER BY o.seq LIMIT $2"
            );
            let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client
                .query(&statement, &[&since, &(limit as i64), &id_prefix])
                .await
                .map_err(db_error)?;
            rows.iter().map(change_from_row).collect()
        })
        .await
    }

    async fn deliver_pending(
        &self,
        limit: usize,
        deliver: Deliver,
    ) -> Result<DeliverOutcome, StoreError> {
        let mut client = self.client().await?;
        let sql = format!(
            "{CHANGE_COLUMNS} WHERE o.delivered_at IS NULL AND o.seq IS NOT NULL \
             ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED"
        );
        let claim = client.prepare_cached(&sql).await.map_err(db_error)?;
        let tx = client.transaction().await.map_err(db_error)?;
        let limit = limit as i64;
        // The lock first, and only then the claim: a claim made without the lock would hold
        // rows for a moment, and the pusher that does hold it would skip them and push later
        // changes first.
        let ours: bool = tx
            .query_one(PUSHER_LOCK, &[])
            .await
            .map_err(db_error)?
            .try_get(0)
            .map_err(column_error)?;
        if !ours {
            return Ok(DeliverOutcome::Busy);
        }
        let rows = tx.query(&claim, &[&limit]).await.map_err(db_error)?;
        let Some(first) = rows.first() else {
            return Ok(DeliverOutcome::Idle);
        };
        let not_before: Option<DateTime<Utc>> = first.try_get(9).map_err(column_error)?;
        if let Some(waiting) = DeliverOutcome::waiting_for(not_before) {
            return Ok(waiting);
        }
        let changes: Vec<Change> = rows.iter().map(change_from_row).collect::<Result<_, _>>()?;
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let outcome = match deliver(changes.clone()).await {
            Delivery::Delivered => {
                tx.execute(MARK_DELIVERED, &[&seqs])
                    .await
                    .map_err(db_error)?;
                DeliverOutcome::Delivered(changes)
            }
            Delivery::Failed { retry_at, error } => {
                tx.execute(MARK_FAILED, &[&seqs, &retry_at, &error])
                    .await
                    .map_err(db_error)?;
                DeliverOutcome::Failed
            }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(outcome)
    }

    async fn latest_seq(&self) -> Result<i64, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client.query_one(LATEST_SEQ, &[]).await.map_err(db_error)?;
            row.try_get(0).map_err(column_error)
        })
        .await
    }

    async fn pending_changes(&self) -> Result<i64, StoreError> {
        self.bounded(false, async move {
            let client = self.client().await?;
            let row = client
                .query_one(PENDING_CHANGES, &[])
                .await
                .map_err(db_error)?;
            row.try_get(0).map_err(column_error)
        })
        .await
    }

    async fn prune_outbox(&self, before: DateTime<Utc>, all: bool) -> Result<u64, StoreError> {
        self.bounded(true, async move {
            let client = self.client().await?;
            client
                .execute(PRUNE_OUTBOX, &[&before, &all])
                .await
                .map_err(db_error)
        })
        .await
    }
}

/// Only one sequencer at a time, in the whole cluster.
const SEQUENCER_LOCK: &str = "SELECT pg_advisory_xact_lock(7165263487346373001)";

/// Numbers the committed changes that have no number yet, in insertion order, after the highest
/// number given. Under the sequencer lock, and seeing only committed rows, it never gives a
/// number below one already given: readers paging by number miss nothing.
const SEQUENCE_OUTBOX: &str = "
    WITH base AS (SELECT coalesce(max(seq), 0) AS n FROM factory_sync_outbox),
         pending AS (
             SELECT id, row_number() OVER (ORDER BY id) AS k
             FROM factory_sync_outbox WHERE seq IS NULL
             ORDER BY id LIMIT 10000
         )
    UPDATE factory_sync_outbox o SET seq = base.n + pending.k
    FROM base, pending WHERE o.id = pending.id";

/// Changes with the content of their version, when it is still kept and of the same
/// incarnation (a re-created context reuses version numbers).
const CHANGE_COLUMNS: &str = "
    SELECT o.seq, o.context_id, o.version, o.op, o.created_at, o.attempts,
           v.data, v.metadata, v.changed_at, o.next_attempt_at
    FROM factory_sync_outbox o
    LEFT JOIN factory_context_metadata m
           ON o.op = 'upsert' AND m.context_id = o.context_id AND m.created_at = o.incarnation
    LEFT JOIN factory_context_versions v
           ON v.context_id = m.context_id AND v.version = o.version";

/// Only one pusher at a time, in the whole cluster; the others skip their turn.
const PUSHER_LOCK: &str = "SELECT pg_try_advisory_xact_lock(7165263487346373002)";

const MARK_DELIVERED: &str = "
    UPDATE factory_sync_outbox
    SET delivered_at = clock_timestamp(), attempts = attempts + 1
    WHERE seq = ANY($1)";

const MARK_FAILED: &str = "
    UPDATE factory_sync_outbox
    SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
    WHERE seq = ANY($1)";

const LATEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM factory_sync_outbox";

const PENDING_CHANGES: &str = "SELECT count(*) FROM factory_sync_outbox WHERE delivered_at IS NULL";

const PRUNE_OUTBOX: &str = "
    DELETE FROM factory_sync_outbox
    WHERE created_at < $1 AND (delivered_at IS NOT NULL OR $2)";

fn change_from_row(row: &Row) -> Result<Change, StoreError> {
    let raw: &str = row.try_get(1).map_err(column_error)?;
    let op: &str = row.try_get(3).map_err(column_error)?;
    let data: Option<Jsonb> = row.try_get(6).map_err(column_error)?;
    let content = match data {
        Some(data) => Some(ChangedContent {
            data: object(data)?,
            metadata: object(row.try_get(7).map_err(column_error)?)?,
            changed_at: row.try_get(8).map_err(column_error)?,
        }),
        None => None,
    };
    Ok(Change {
        seq: row.try_get(0).map_err(column_error)?,
        id: ContextId::parse(raw).map_err(|e| corrupt(format!("id {raw:?}: {e}")))?,
        version: row.try_get(2).map_err(column_error)?,
        op: match op {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            other => return Err(corrupt(format!("op {other:?}"))),
        },
        committed_at: row.try_get(4).map_err(column_error)?,
        attempts: row.try_get(5).map_err(column_error)?,
        content,
    })
}
