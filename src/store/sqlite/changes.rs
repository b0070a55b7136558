//! The SQLite store: the outbox. The commit signal, the change feed in commit order, delivery to the
//! webhook, and pruning.

use super::*;

#[async_trait]
impl ChangeLog for SqliteStore {
    fn signal_spans_processes(&self) -> bool {
        false
    }

    fn commits(&self) -> broadcast::Receiver<CommitNotice> {
        self.commits.subscribe()
    }

    async fn sequence_outbox(&self) -> Result<(), StoreError> {
        // Numbered in each write's own transaction already: one writer, so commit order.
        Ok(())
    }

    async fn changes(
        &self,
        since: i64,
        limit: usize,
        visible: &Visible,
    ) -> Result<Vec<Change>, StoreError> {
        let id_prefix = visible.prefix();
        let prefix = id_prefix.map(str::to_owned);
        self.read_with(move |conn| {
            let sql = format!(
                "{CHANGE_COLUMNS} WHERE o.seq > ?1 \
                 AND (?3 IS NULL OR substr(o.context_id, 1, length(?3)) = ?3) \
                 ORDER BY o.seq LIMIT ?2"
            );
            let mut statement = conn.prepare_cached(&sql).map_err(db_error)?;
            let rows = statement
                .query_map(
                    rusqlite::params![since, limit as i64, prefix],
                    change_from_row,
                )
                .map_err(db_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
        })
        .await
    }

    async fn deliver_pending(
        &self,
        limit: usize,
        deliver: Deliver,
    ) -> Result<DeliverOutcome, StoreError> {
        let Ok(_turn) = self.pusher.try_lock() else {
            return Ok(DeliverOutcome::Busy);
        };
        let claimed = self
            .read_with(move |conn| {
                let sql = format!(
                    "{CHANGE_COLUMNS} WHERE o.delivered_at IS NULL ORDER BY o.seq LIMIT ?1"
                );
                let mut statement = conn.prepare_cached(&sql).map_err(db_error)?;
                let rows = statement
                    .query_map([limit as i64], |row| {
                        let not_before: Option<String> = row.get(9)?;
                        Ok((change_from_row(row)?, not_before))
                    })
                    .map_err(db_error)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_error)
            })
            .await?;
        let Some((_, not_before)) = claimed.first() else {
            return Ok(DeliverOutcome::Idle);
        };
        let next_attempt_at = not_before
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        if let Some(waiting) = DeliverOutcome::waiting_for(next_attempt_at) {
            return Ok(waiting);
        }
        let changes: Vec<Change> = claimed.into_iter().map(|(change, _)| change).collect();
        let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
        let delivery = deliver(changes.clone()).await;
        self.write_with(move |conn| {
            let tx = conn.transaction().map_err(db_error)?;
            for seq in &seqs {
                match &delivery {
                    Delivery::Delivered => tx.prepare_cached(MARK_DELIVERED).and_then(|mut s| {
                        s.execute(rusqlite::params![seq, time_text(&Utc::now())])
                    }),
                    Delivery::Failed { retry_at, error } => {
                        tx.prepare_cached(MARK_FAILED).and_then(|mut s| {
                            s.execute(rusqlite::params![seq, time_text(retry_at), error])
                        })
                    }
                }
                .map_err(db_error)?;
            }
            tx.commit().map_err(db_error)?;
            Ok(match delivery {
                Delivery::Delivered => DeliverOutcome::Delivered(changes),
                Delivery::Failed { .. } => DeliverOutcome::Failed,
            })
        })
        .await
    }

    async fn latest_seq(&self) -> Result<i64, StoreError> {
        self.read_with(|conn| {
            conn.query_row(LATEST_SEQ, [], |row| row.get(0))
                .map_err(db_error)
        })
        .await
    }

    async fn pending_changes(&self) -> Result<i64, StoreError> {
        self.read_with(|conn| {
            conn.query_row(PENDING_CHANGES, [], |row| row.get(0))
                .map_err(db_error)
        })
        .await
    }

    async fn prune_outbox(&self, before: DateTime<Utc>, all: bool) -> Result<u64, StoreError> {
        self.write_with(move |conn| {
            conn.prepare_cached(PRUNE_OUTBOX)
                .and_then(|mut s| s.execute(rusqlite::params![time_text(&before), all]))
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }
}

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

const MARK_DELIVERED: &str = "
    UPDATE factory_sync_outbox SET delivered_at = ?2, attempts = attempts + 1
    WHERE seq = ?1";

const MARK_FAILED: &str = "
    UPDATE factory_sync_outbox
    SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
    WHERE seq = ?1";

const LATEST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM factory_sync_outbox";

const PENDING_CHANGES: &str = "SELECT count(*) FROM factory_sync_outbox WHERE delivered_at IS NULL";

const PRUNE_OUTBOX: &str = "
    DELETE FROM factory_sync_outbox
    WHERE created_at < ?1 AND (delivered_at IS NOT NULL OR ?2)";

fn change_from_row(row: &Row) -> rusqlite::Result<Change> {
    let op: String = row.get(3)?;
    let data: Option<String> = row.get(6)?;
    let content = match data {
        Some(_) => Some(ChangedContent {
            data: object(row, 6)?,
            metadata: object(row, 7)?,
            changed_at: time(row, 8)?,
        }),
        None => None,
    };
    Ok(Change {
        seq: row.get(0)?,
        id: context_id(row, 1)?.ok_or_else(|| corrupt("a null context_id"))?,
        version: row.get(2)?,
        op: match op.as_str() {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            other => return Err(corrupt(format!("op {other:?}"))),
        },
        committed_at: time(row, 4)?,
        attempts: row.get(5)?,
        content,
    })
}
