//! Migrations: `schema.sql` (Postgres) and `schema.sqlite.sql` (SQLite) split into numbered
//! sections, and the Postgres runner, which applies each once however many instances start at
//! once. The SQLite runner lives with the SQLite store.

use anyhow::Context as _;
use tokio_postgres::Client;

/// The schemas, compiled in so the binary migrates without its source tree.
pub const SCHEMA: &str = include_str!("../../schema.sql");
pub const SQLITE_SCHEMA: &str = include_str!("../../schema.sqlite.sql");

/// Any fixed number works as long as nothing else in the database uses it.
const MIGRATION_LOCK: i64 = 0x636f_6e74_6578_7464; // "contextd"

const MARKER: &str = "-- migration:";

/// One numbered section of `schema.sql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub sql: String,
}

/// Splits `schema.sql` into its always-run preamble and its numbered sections.
pub fn parse(schema: &str) -> anyhow::Result<(String, Vec<Migration>)> {
    let mut preamble = String::new();
    let mut migrations: Vec<Migration> = Vec::new();
    for line in schema.lines() {
        if let Some(header) = line.strip_prefix(MARKER) {
            let (version, name) = header
                .trim()
                .split_once(' ')
                .with_context(|| format!("schema.sql: `{line}` needs a number and a name"))?;
            let version: i32 = version
                .parse()
                .with_context(|| format!("schema.sql: `{line}` has a bad number"))?;
            if let Some(last) = migrations.last()
                && version != last.version + 1
            {
                anyhow::bail!("schema.sql: migration {version} follows {}", last.version);
            }
            migrations.push(Migration {
                version,
                name: name.trim().to_owned(),
                sql: String::new(),
            });
        } else {
            let target = match migrations.last_mut() {
                Some(m) => &mut m.sql,
                None => &mut preamble,
            };
            target.push_str(line);
            target.push('\n');
        }
    }
    Ok((preamble, migrations))
}

/// Applies what is missing. A session advisory lock makes concurrent callers wait their turn;
/// each then finds the sections already recorded and skips them.
pub async fn run(client: &mut Client) -> anyhow::Result<Vec<i32>> {
    let (preamble, migrations) = parse(SCHEMA)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let result = apply(client, &preamble, &migrations).await;
    // Unlock even after a failure; a lost connection releases the lock by itself anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn apply(
    client: &mut Client,
    preamble: &str,
    migrations: &[Migration],
) -> anyhow::Result<Vec<i32>> {
    client
        .batch_execute(preamble)
        .await
        .context("running the schema preamble")?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM contextd_schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(&migration.sql).await.with_context(|| {
            format!(
                "applying migration {} ({})",
                migration.version, migration.name
            )
        })?;
        tx.execute(
            "INSERT INTO contextd_schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = migration.version, name = %migration.name, "applied migration");
        newly.push(migration.version);
    }
    Ok(newly)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_schema_parses_into_numbered_sections() {
        let (preamble, migrations) = parse(SCHEMA).unwrap();
        assert!(preamble.contains("contextd_schema_migrations"));
        assert_eq!(migrations[0].version, 1);
        for table in [
            "factory_context_metadata",
            "factory_context_versions",
            "factory_cache_records",
            "factory_sync_outbox",
        ] {
            assert!(
                migrations.iter().any(|m| m.sql.contains(table)),
                "{table} is missing from schema.sql"
            );
        }
    }

    #[test]
    fn both_schemas_have_the_same_tables_and_migrations() {
        let (_, postgres) = parse(SCHEMA).unwrap();
        let (_, sqlite) = parse(SQLITE_SCHEMA).unwrap();
        let names = |m: &[Migration]| {
            m.iter()
                .map(|m| (m.version, m.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&postgres), names(&sqlite));
        // The tables each schema leaves, following its CREATE, DROP and RENAME statements.
        let tables = |schema: &str| {
            let mut tables: Vec<String> = Vec::new();
            let name = |rest: &str| -> String {
                let rest = rest.trim_start_matches("IF NOT EXISTS ");
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches(';')
                    .to_owned()
            };
            for line in schema.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                    tables.push(name(rest));
                } else if let Some(rest) = line.strip_prefix("DROP TABLE ") {
                    let dropped = name(rest);
                    tables.retain(|t| *t != dropped);
                } else if let Some(rest) = line.strip_prefix("ALTER TABLE ")
                    && let Some((from, to)) = rest.split_once(" RENAME TO ")
                {
                    let (from, to) = (name(from), name(to));
                    tables.retain(|t| *t != to);
                    for t in &mut tables {
                        if *t == from {
                            t.clone_from(&to);
                        }
                    }
                }
            }
            tables.sort();
            tables
        };
        assert_eq!(tables(SCHEMA), tables(SQLITE_SCHEMA));
    }

    #[test]
    fn a_gap_in_the_numbering_is_an_error() {
        let schema = "-- migration: 1 a\nSELECT 1;\n-- migration: 3 c\nSELECT 3;\n";
        assert!(parse(schema).is_err());
    }
}
