//! The embedded schema migrations of each backend and the helpers the backends use to apply them.
//!
//! Each backend runs its pending migrations at `open`, in version order, and records every
//! applied one in `schema_migrations(version, applied_at)`; opening an up-to-date database is a
//! no-op. The SQL files are idempotent on their own (`IF NOT EXISTS`) because MySQL commits DDL
//! immediately: a run interrupted halfway must be safe to repeat.

/// One schema step: `migrations/<backend>/<version>_<description>.sql`.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration { version: 1, description: "init", sql: include_str!("../../migrations/sqlite/0001_init.sql") },
    Migration { version: 2, description: "stats_logs", sql: include_str!("../../migrations/sqlite/0002_stats_logs.sql") },
    Migration { version: 3, description: "responses", sql: include_str!("../../migrations/sqlite/0003_responses.sql") },
    Migration { version: 4, description: "api_key_limits", sql: include_str!("../../migrations/sqlite/0004_api_key_limits.sql") },
    Migration { version: 5, description: "auto_group", sql: include_str!("../../migrations/sqlite/0005_auto_group.sql") },
    Migration { version: 6, description: "compact_logs", sql: include_str!("../../migrations/sqlite/0006_compact_logs.sql") },
];

pub const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration { version: 1, description: "init", sql: include_str!("../../migrations/postgres/0001_init.sql") },
    Migration { version: 2, description: "stats_logs", sql: include_str!("../../migrations/postgres/0002_stats_logs.sql") },
    Migration { version: 3, description: "responses", sql: include_str!("../../migrations/postgres/0003_responses.sql") },
    Migration { version: 4, description: "api_key_limits", sql: include_str!("../../migrations/postgres/0004_api_key_limits.sql") },
    Migration { version: 5, description: "auto_group", sql: include_str!("../../migrations/postgres/0005_auto_group.sql") },
    Migration { version: 6, description: "compact_logs", sql: include_str!("../../migrations/postgres/0006_compact_logs.sql") },
];

pub const MYSQL_MIGRATIONS: &[Migration] = &[
    Migration { version: 1, description: "init", sql: include_str!("../../migrations/mysql/0001_init.sql") },
    Migration { version: 2, description: "stats_logs", sql: include_str!("../../migrations/mysql/0002_stats_logs.sql") },
    Migration { version: 3, description: "responses", sql: include_str!("../../migrations/mysql/0003_responses.sql") },
    Migration { version: 4, description: "api_key_limits", sql: include_str!("../../migrations/mysql/0004_api_key_limits.sql") },
    Migration { version: 5, description: "auto_group", sql: include_str!("../../migrations/mysql/0005_auto_group.sql") },
    Migration { version: 6, description: "compact_logs", sql: include_str!("../../migrations/mysql/0006_compact_logs.sql") },
];

/// The migrations not yet in `applied_versions`, in version order.
pub fn pending<'a>(migrations: &'a [Migration], applied_versions: &[i64]) -> Vec<&'a Migration> {
    let mut pending: Vec<&Migration> = migrations
        .iter()
        .filter(|migration| !applied_versions.contains(&migration.version))
        .collect();
    pending.sort_by_key(|migration| migration.version);
    pending
}

/// Logs a warning when the database holds migrations this binary does not know: a newer
/// octopus has upgraded the schema, and this one may misread it.
pub fn warn_about_unknown_versions(
    backend_name: &str,
    migrations: &[Migration],
    applied_versions: &[i64],
) {
    let newest_known = migrations
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0);
    if let Some(newest_applied) = applied_versions
        .iter()
        .copied()
        .max()
        .filter(|version| *version > newest_known)
    {
        log::warn!(
            "the {backend_name} schema is at version {newest_applied} but this build knows only up to \
             {newest_known}; upgrade octopus"
        );
    }
}

/// Splits a migration file into single statements, for drivers that run one at a time.
///
/// Whole-line `--` comments are dropped first; after that every `;` ends a statement, so the
/// files must not put one inside a string literal or a trailing comment.
pub fn split_statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect();
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::store::migrate::*;

    #[test]
    fn every_backend_has_the_same_versions_in_increasing_order() {
        for migrations in [SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS, MYSQL_MIGRATIONS] {
            let versions: Vec<i64> = migrations
                .iter()
                .map(|migration| migration.version)
                .collect();
            let sqlite_versions: Vec<i64> = SQLITE_MIGRATIONS
                .iter()
                .map(|migration| migration.version)
                .collect();
            assert_eq!(versions, sqlite_versions);
            assert!(
                versions.windows(2).all(|pair| pair[0] < pair[1]),
                "versions must increase: {versions:?}"
            );
            assert!(versions.iter().all(|version| *version > 0));
        }
    }

    #[test]
    fn pending_skips_applied_versions_and_sorts() {
        let migrations = [
            Migration {
                version: 3,
                description: "c",
                sql: "",
            },
            Migration {
                version: 1,
                description: "a",
                sql: "",
            },
            Migration {
                version: 2,
                description: "b",
                sql: "",
            },
        ];
        let pending_versions: Vec<i64> = pending(&migrations, &[2])
            .iter()
            .map(|migration| migration.version)
            .collect();
        assert_eq!(pending_versions, vec![1, 3]);
        assert!(pending(&migrations, &[1, 2, 3]).is_empty());
    }

    #[test]
    fn split_statements_drops_comment_lines_and_blank_statements() {
        let sql = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\n  -- another\nCREATE TABLE b (\n  y INT\n);\n";
        assert_eq!(
            split_statements(sql),
            vec!["CREATE TABLE a (x INT)", "CREATE TABLE b (\n  y INT\n)"]
        );
    }

    #[test]
    fn the_mysql_migrations_split_into_repeatable_statements() {
        // Only statements a repeated run tolerates: `CREATE TABLE IF NOT EXISTS`, `DROP TABLE IF
        // EXISTS`, `ALTER TABLE ... ADD COLUMN`, whose "duplicate column" error the backend skips,
        // and `INSERT IGNORE INTO ... SELECT`, whose "no such table" error it skips.
        for migration in MYSQL_MIGRATIONS {
            let statements = split_statements(migration.sql);
            assert!(!statements.is_empty());
            for statement in &statements {
                let repeatable = statement.starts_with("CREATE TABLE IF NOT EXISTS")
                    || statement.starts_with("DROP TABLE IF EXISTS")
                    || (statement.starts_with("ALTER TABLE") && statement.contains("ADD COLUMN"))
                    || (statement.starts_with("INSERT IGNORE INTO") && statement.contains("\nSELECT "));
                assert!(repeatable, "unexpected statement: {statement}");
            }
        }
    }
}
