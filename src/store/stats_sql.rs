//! The SQL of the statistics and request-log tables, written once for the three dialects.
//!
//! These statements differ between backends only in placeholders, integer casts and the upsert
//! clause, so they are built here from a `Dialect` and each backend binds the `SqlValue`s with its
//! own driver. Keeping them in one place keeps the three backends' answers identical.

use crate::store::entities::{
    LogFilter, LogRow, RequestLog, StatsCounters, StatsGrouping, StatsKey, StatsRow, STATS_COUNTER_COLUMNS,
};
use std::sync::OnceLock;

use crate::stats::log_id::first_id_at;
use crate::store::codec::ColumnReader;
use crate::store::StoreResult;

/// Longer than any relay request can run (total timeouts are minutes).
const LONGEST_REQUEST_MS: i64 = 86_400_000;

/// The SQL dialect of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// A value bound to a placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Int(i64),
    OptionalInt(Option<i64>),
    Text(String),
    OptionalText(Option<String>),
    Bool(bool),
    Float(f64),
    OptionalFloat(Option<f64>),
}

impl Dialect {
    /// The placeholder of the `position`-th parameter (1-based).
    pub fn placeholder(self, position: usize) -> String {
        match self {
            Dialect::Postgres => format!("${position}"),
            Dialect::Sqlite | Dialect::Mysql => "?".to_string(),
        }
    }

    /// A cast of a SUM to a 64-bit integer the driver reads as one (PostgreSQL and MySQL widen
    /// sums to NUMERIC/DECIMAL).
    fn integer_sum(self, column: &str) -> String {
        let integer_type = match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
            Dialect::Mysql => "SIGNED",
        };
        format!("CAST(COALESCE(SUM({column}), 0) AS {integer_type})")
    }
}

/// `INSERT` of one `stats_hourly` row that adds to the row when it exists: parameters are the
/// five key columns then the twelve counters.
pub fn stats_upsert(dialect: Dialect) -> String {
    let key_columns = ["hour", "channel_id", "api_key_id", "group_name", "model"];
    let columns: Vec<&str> = key_columns.iter().chain(STATS_COUNTER_COLUMNS.iter()).copied().collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|position| dialect.placeholder(position)).collect();
    let insert = format!("INSERT INTO stats_hourly ({}) VALUES ({})", columns.join(", "), placeholders.join(", "));
    let additions: Vec<String> = STATS_COUNTER_COLUMNS
        .iter()
        .map(|column| match dialect {
            Dialect::Sqlite => format!("{column} = {column} + excluded.{column}"),
            Dialect::Postgres => format!("{column} = stats_hourly.{column} + EXCLUDED.{column}"),
            Dialect::Mysql => format!("{column} = {column} + VALUES({column})"),
        })
        .collect();
    match dialect {
        Dialect::Sqlite | Dialect::Postgres => format!(
            "{insert} ON CONFLICT (hour, channel_id, api_key_id, group_name, model) DO UPDATE SET {}",
            additions.join(", ")
        ),
        Dialect::Mysql => format!("{insert} ON DUPLICATE KEY UPDATE {}", additions.join(", ")),
    }
}

/// Sums of `stats_hourly` over `hour >= $1 AND hour < $2`, grouped as asked. Columns: the five
/// key columns of `StatsKey` (constants where not grouped on), then the twelve counters.
pub fn stats_grouped_query(dialect: Dialect, grouping: StatsGrouping) -> String {
    let key_columns = grouping.key_columns();
    // PostgreSQL types a bare 0 as a 32-bit integer; every key column is read as 64-bit.
    let mut select: Vec<String> = key_columns
        .iter()
        .map(|column| match (*column, dialect) {
            ("0", Dialect::Postgres) => "CAST(0 AS BIGINT)".to_string(),
            (column, _) => column.to_string(),
        })
        .collect();
    select.extend(STATS_COUNTER_COLUMNS.iter().map(|column| dialect.integer_sum(column)));
    let grouped: Vec<&str> = key_columns.iter().copied().filter(|column| !column.starts_with('0') && !column.starts_with('\'')).collect();
    let mut sql = format!(
        "SELECT {} FROM stats_hourly WHERE hour >= {} AND hour < {}",
        select.join(", "),
        dialect.placeholder(1),
        dialect.placeholder(2)
    );
    if !grouped.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", grouped.join(", ")));
    }
    sql
}

/// Day starts (parameter 1: before this hour; 2: limit) still holding hours not rolled up.
pub fn stats_days_to_roll_up_query(dialect: Dialect) -> String {
    format!(
        "SELECT DISTINCT hour - hour % 86400 AS day FROM stats_hourly WHERE hour < {} AND hour % 86400 <> 0 ORDER BY day LIMIT {}",
        dialect.placeholder(1),
        dialect.placeholder(2)
    )
}

/// Deletes the buckets of an hour range (parameters: from, to).
pub fn stats_delete_range(dialect: Dialect) -> String {
    format!("DELETE FROM stats_hourly WHERE hour >= {} AND hour < {}", dialect.placeholder(1), dialect.placeholder(2))
}

/// The table of request logs.
pub const LOG_TABLE: &str = "request_logs";

/// The columns of `request_logs` in the order `log_insert` binds and `log_select_columns` reads:
/// the ones the admin API filters on, then everything else as one `detail` text
/// (`store::log_detail`), then the bodies kept when `log_bodies` is on.
pub const LOG_COLUMNS: [&str; 9] =
    ["id", "time_ms", "api_key_id", "group_name", "channel_id", "success", "detail", "request_body", "response_body"];

/// Row counts of the multi-row `INSERT`s a batch of logs is cut into, largest first. Fewer
/// statements mean fewer steps and resets (and, on the server databases, round trips). Only these
/// few sizes exist, so each is compiled once and then found in the driver's statement cache: a
/// statement per batch size would be compiled anew almost every second. 64 rows bind 576
/// values, far below every backend's limit.
pub const LOG_INSERT_SIZES: [usize; 4] = [64, 16, 4, 1];

/// Cuts `logs` into runs of `LOG_INSERT_SIZES` rows, largest first.
pub fn log_insert_chunks<T>(mut logs: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = LOG_INSERT_SIZES.into_iter().find(|size| *size <= logs.len())?;
        let (chunk, rest) = logs.split_at(size);
        logs = rest;
        Some(chunk)
    })
}

/// The statements that write `logs`, each with its values: one multi-row `INSERT` per run of
/// `log_insert_chunks`. Every backend executes these with its own driver.
pub fn log_insert_batches(dialect: Dialect, rows: &[LogRow]) -> impl Iterator<Item = (&'static str, Vec<SqlValue>)> + '_ {
    log_insert_chunks(rows).map(move |chunk| {
        let mut values = Vec::with_capacity(chunk.len() * LOG_COLUMNS.len());
        for row in chunk {
            push_log_values(row, &mut values);
        }
        (log_insert(dialect, chunk.len()), values)
    })
}

/// `INSERT` of `rows` (one of `LOG_INSERT_SIZES`) request logs with every column of
/// `LOG_COLUMNS`. A row whose id exists is skipped, so a batch retried after a failed commit is
/// not written twice. Built once per dialect and size.
pub fn log_insert(dialect: Dialect, rows: usize) -> &'static str {
    static STATEMENTS: OnceLock<Vec<(Dialect, usize, String)>> = OnceLock::new();
    let statements = STATEMENTS.get_or_init(|| {
        let mut statements = Vec::new();
        for dialect in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
            for rows in LOG_INSERT_SIZES {
                statements.push((dialect, rows, build_log_insert(dialect, rows)));
            }
        }
        statements
    });
    statements
        .iter()
        .find(|(known_dialect, known_rows, _)| *known_dialect == dialect && *known_rows == rows)
        .map(|(_, _, sql)| sql.as_str())
        .expect("log inserts come only in LOG_INSERT_SIZES")
}

fn build_log_insert(dialect: Dialect, rows: usize) -> String {
    let mut tuples = Vec::with_capacity(rows);
    for row in 0..rows {
        let placeholders: Vec<String> =
            (1..=LOG_COLUMNS.len()).map(|column| dialect.placeholder(row * LOG_COLUMNS.len() + column)).collect();
        tuples.push(format!("({})", placeholders.join(", ")));
    }
    let insert = format!("INTO {LOG_TABLE} ({}) VALUES {}", LOG_COLUMNS.join(", "), tuples.join(", "));
    match dialect {
        Dialect::Sqlite => format!("INSERT OR IGNORE {insert}"),
        Dialect::Postgres => format!("INSERT {insert} ON CONFLICT (id) DO NOTHING"),
        Dialect::Mysql => format!("INSERT IGNORE {insert}"),
    }
}

/// The `WHERE` clause (possibly empty) and its values for a log filter; placeholders start at 1.
pub fn log_filter_clause(dialect: Dialect, filter: &LogFilter) -> (String, Vec<SqlValue>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    let mut add = |condition: &str, value: SqlValue, values: &mut Vec<SqlValue>| {
        values.push(value);
        conditions.push(format!("{condition} {}", dialect.placeholder(values.len())));
    };
    if let Some(group) = &filter.group {
        add("group_name =", SqlValue::Text(group.clone()), &mut values);
    }
    if let Some(channel_id) = filter.channel_id {
        add("channel_id =", SqlValue::Int(channel_id), &mut values);
    }
    if let Some(api_key_id) = filter.api_key_id {
        add("api_key_id =", SqlValue::Int(api_key_id), &mut values);
    }
    if let Some(success) = filter.success {
        add("success =", SqlValue::Bool(success), &mut values);
    }
    // Ids grow with the time a request finished, which is never before it started: a start-time
    // bound is also an id bound, which the primary key serves (logs have no other index). The
    // upper id bound is loosened by a day, the longest a request can run, so a request that
    // started before `to` and finished after it still matches.
    if let Some(from_ms) = filter.from_ms {
        add("id >=", SqlValue::Int(first_id_at(from_ms)), &mut values);
        add("time_ms >=", SqlValue::Int(from_ms), &mut values);
    }
    if let Some(to_ms) = filter.to_ms {
        add("id <", SqlValue::Int(first_id_at(to_ms.saturating_add(LONGEST_REQUEST_MS))), &mut values);
        add("time_ms <", SqlValue::Int(to_ms), &mut values);
    }
    if conditions.is_empty() {
        (String::new(), values)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), values)
    }
}

/// A page of logs, newest first: the filter's values, then limit and offset.
pub fn log_page_query(dialect: Dialect, filter: &LogFilter, with_bodies: bool) -> (String, Vec<SqlValue>) {
    let (clause, values) = log_filter_clause(dialect, filter);
    let sql = format!(
        "SELECT {} FROM {LOG_TABLE}{clause} ORDER BY id DESC LIMIT {} OFFSET {}",
        log_select_columns(with_bodies),
        dialect.placeholder(values.len() + 1),
        dialect.placeholder(values.len() + 2)
    );
    (sql, values)
}

/// The columns read back for a log; without bodies they are read as NULL to keep pages small.
pub fn log_select_columns(with_bodies: bool) -> String {
    if with_bodies {
        LOG_COLUMNS.join(", ")
    } else {
        let mut columns: Vec<&str> = LOG_COLUMNS[..LOG_COLUMNS.len() - 2].to_vec();
        columns.extend(["NULL", "NULL"]);
        columns.join(", ")
    }
}

/// The values of `stats_upsert` for one row.
pub fn stats_row_values(row: &StatsRow) -> Vec<SqlValue> {
    let mut values = vec![
        SqlValue::Int(row.key.hour),
        SqlValue::Int(row.key.channel_id),
        SqlValue::Int(row.key.api_key_id),
        SqlValue::Text(row.key.group.clone()),
        SqlValue::Text(row.key.model.clone()),
    ];
    values.extend(row.counters.to_array().into_iter().map(SqlValue::Int));
    values
}

/// Reads one row of `stats_grouped_query`.
pub fn decode_stats_row(row: &dyn ColumnReader) -> StoreResult<StatsRow> {
    let key = StatsKey {
        hour: row.int(0)?,
        channel_id: row.int(1)?,
        api_key_id: row.int(2)?,
        group: row.text(3)?,
        model: row.text(4)?,
    };
    let mut counters = [0_i64; 12];
    for (index, counter) in counters.iter_mut().enumerate() {
        *counter = row.int(5 + index)?;
    }
    Ok(StatsRow { key, counters: StatsCounters::from_array(counters) })
}

/// Appends the values of `log_insert` for one log, in `LOG_COLUMNS` order.
fn push_log_values(row: &LogRow, values: &mut Vec<SqlValue>) {
    values.extend([
        SqlValue::Int(row.id),
        SqlValue::Int(row.time_ms),
        SqlValue::OptionalInt(row.api_key_id),
        SqlValue::Text(row.group.clone()),
        SqlValue::OptionalInt(row.channel_id),
        SqlValue::Bool(row.success),
        SqlValue::Text(row.detail.clone()),
        SqlValue::OptionalText(row.request_body.clone()),
        SqlValue::OptionalText(row.response_body.clone()),
    ]);
}

/// Reads one row selected with `log_select_columns`.
pub fn decode_log(row: &dyn ColumnReader) -> StoreResult<RequestLog> {
    LogRow {
        id: row.int(0)?,
        time_ms: row.int(1)?,
        api_key_id: row.optional_int(2)?,
        group: row.text(3)?,
        channel_id: row.optional_int(4)?,
        success: row.boolean(5)?,
        detail: row.text(6)?,
        request_body: row.optional_text(7)?,
        response_body: row.optional_text(8)?,
    }
    .into_log()
}

/// Deletes the logs finished before a time (parameter: `first_id_at` of it).
pub fn log_prune_by_age(dialect: Dialect) -> String {
    format!("DELETE FROM {LOG_TABLE} WHERE id < {}", dialect.placeholder(1))
}

/// The newest log id past which everything is pruned to keep `keep_rows` rows: parameter is the
/// offset (`keep_rows`); no row means there is nothing to prune.
pub fn log_prune_boundary_query(dialect: Dialect) -> String {
    format!("SELECT id FROM {LOG_TABLE} ORDER BY id DESC LIMIT 1 OFFSET {}", dialect.placeholder(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_adds_to_every_counter_in_each_dialect() {
        let sqlite = stats_upsert(Dialect::Sqlite);
        assert!(sqlite.contains("ttft_count = ttft_count + excluded.ttft_count"));
        assert!(sqlite.contains("?, ?"));
        let postgres = stats_upsert(Dialect::Postgres);
        assert!(postgres.contains("requests = stats_hourly.requests + EXCLUDED.requests"));
        assert!(postgres.contains("$17)"));
        let mysql = stats_upsert(Dialect::Mysql);
        assert!(mysql.contains("ON DUPLICATE KEY UPDATE requests = requests + VALUES(requests)"));
    }

    #[test]
    fn grouped_queries_group_only_on_real_columns() {
        let by_model = stats_grouped_query(Dialect::Postgres, StatsGrouping::ChannelModel);
        assert!(by_model.starts_with("SELECT CAST(0 AS BIGINT), channel_id, CAST(0 AS BIGINT), '', model, CAST(COALESCE(SUM(requests), 0) AS BIGINT)"), "{by_model}");
        assert!(by_model.ends_with("GROUP BY channel_id, model"));
        let total = stats_grouped_query(Dialect::Mysql, StatsGrouping::Total);
        assert!(!total.contains("GROUP BY"));
        assert!(total.contains("AS SIGNED"));
    }

    #[test]
    fn log_batches_use_only_the_cached_insert_sizes() {
        let logs: Vec<u32> = (0..64 + 16 + 16 + 4 + 3).collect();
        let sizes: Vec<usize> = log_insert_chunks(&logs).map(<[u32]>::len).collect();
        assert_eq!(sizes, vec![64, 16, 16, 4, 1, 1, 1]);
        assert_eq!(log_insert_chunks::<u32>(&[]).count(), 0);
        let one_row = log_insert(Dialect::Postgres, 1);
        assert!(one_row.ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING"), "{one_row}");
        let four_rows = log_insert(Dialect::Postgres, 4);
        assert!(four_rows.contains("($28, $29, $30, $31, $32, $33, $34, $35, $36) ON CONFLICT"), "{four_rows}");
        assert_eq!(log_insert(Dialect::Sqlite, 64).matches("(?, ?, ?, ?, ?, ?, ?, ?, ?)").count(), 64);
        assert!(log_insert(Dialect::Mysql, 16).starts_with("INSERT IGNORE INTO request_logs (id, time_ms, "));
    }

    #[test]
    fn log_filters_number_their_placeholders() {
        let filter = LogFilter { group: Some("g".to_string()), success: Some(false), ..LogFilter::default() };
        let (sql, values) = log_page_query(Dialect::Postgres, &filter, false);
        assert!(sql.contains("WHERE group_name = $1 AND success = $2 ORDER BY id DESC LIMIT $3 OFFSET $4"), "{sql}");
        assert_eq!(values, vec![SqlValue::Text("g".to_string()), SqlValue::Bool(false)]);
    }
}
