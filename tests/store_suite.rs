//! The shared store suite: every case in `cases` runs unchanged against SQLite (always, in a
//! fresh temporary directory), PostgreSQL (`TEST_POSTGRES_URL`) and MySQL/MariaDB
//! (`TEST_MYSQL_URL`).
//!
//! A server URL names an admin database; each test creates its own uniquely named database
//! through it and drops it afterwards, so tests run in parallel without seeing each other's
//! rows. When a URL is unset the test fails under CI (`CI=true`) and otherwise prints a notice
//! and returns. `eval "$(scripts/test-databases)"` starts both servers and sets both URLs.
//! The suite needs all three backends compiled in (the default features).

#![cfg(all(feature = "sqlite", feature = "postgres", feature = "mysql"))]

mod support;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use octopus::store::backup::Backup;
use octopus::store::entities::{
    AdminSession, ApiKey, AutoGroup, Channel, ChannelKey, ChannelType, Group, GroupItem, GroupMode, LogFilter, LogRow, LoggedAttempt,
    ModelPrice, RequestLog, StatsCounters, StatsKey, StatsRow,
};
use octopus::store::migrate::{
    MYSQL_MIGRATIONS, Migration, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS,
};
use octopus::store::pool::StorePool;
use octopus::store::{self, Store, StoreError};
use octopus::util::sha256_hex;

use support::databases;

/// Generates one `#[test]` per case and backend: `sqlite::case`, `postgres::case`, `mysql::case`.
macro_rules! store_cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { crate::run_case(crate::Backend::Sqlite, crate::cases::$case); } )*
        }
        mod postgres {
            $( #[test] fn $case() { crate::run_case(crate::Backend::Postgres, crate::cases::$case); } )*
        }
        mod mysql {
            $( #[test] fn $case() { crate::run_case(crate::Backend::Mysql, crate::cases::$case); } )*
        }
    };
}

store_cases!(
    migrations_are_idempotent,
    admin_seed_lookup_and_password_update,
    sessions_create_lookup_delete_and_expire,
    channel_round_trip_keeps_key_ids_stable,
    deleting_a_channel_removes_its_group_items_and_prices,
    duplicate_names_are_reported_and_roll_back,
    references_to_missing_channels_are_reported,
    group_round_trip_keeps_item_order,
    api_key_round_trip_and_lookup_by_hash,
    prices_upsert_by_model_and_channel,
    settings_round_trip,
    replace_configuration_keeps_ids_and_is_all_or_nothing,
    pool_serves_threads_and_coroutines,
    pool_survives_a_panicking_job,
    stored_responses_save_read_delete_and_prune,
    wide_request_logs_are_carried_into_the_compact_table,
    logs_without_keys_channels_or_bodies_read_back_empty_after_logs_with_them,
);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    fn database_type(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
            Backend::Mysql => MYSQL_MIGRATIONS,
        }
    }
}

fn run_case(backend: Backend, case: fn(&TestDatabase)) {
    if let Some(database) = TestDatabase::create(backend) {
        case(&database);
    }
}

/// A fresh, empty database for one test, removed again when the value is dropped.
struct TestDatabase {
    backend: Backend,
    /// The SQLite file path, or the server URL of the test database.
    location: String,
    /// Owns the database (or the SQLite directory) and removes it on drop.
    _database: databases::TestDatabase,
}

impl TestDatabase {
    /// None when the server's URL is not configured outside CI (a notice has been printed).
    fn create(backend: Backend) -> Option<TestDatabase> {
        let database = match backend {
            Backend::Sqlite => databases::sqlite(),
            Backend::Postgres => databases::postgres()?,
            Backend::Mysql => databases::mysql()?,
        };
        let location = match backend {
            // A missing parent directory must be created by the store itself.
            Backend::Sqlite => std::path::Path::new(&database.path)
                .with_file_name("nested")
                .join("data.db")
                .to_string_lossy()
                .into_owned(),
            Backend::Postgres | Backend::Mysql => database.path.clone(),
        };
        Some(TestDatabase { backend, location, _database: database })
    }

    fn open(&self) -> Box<dyn Store> {
        store::open(self.backend.database_type(), &self.location).unwrap_or_else(|error| {
            panic!("cannot open the {:?} test database: {error}", self.backend)
        })
    }

    fn pool(&self, connections: usize) -> StorePool {
        StorePool::open(self.backend.database_type(), &self.location, connections)
            .unwrap_or_else(|error| panic!("cannot open a {:?} pool: {error}", self.backend))
    }

    /// Runs statements with the driver directly, outside the store.
    fn execute_raw(&self, statements: &[&str]) {
        match self.backend {
            Backend::Sqlite => {
                let connection = ::rusqlite::Connection::open(&self.location).expect("open the SQLite file");
                for statement in statements {
                    connection.execute_batch(statement).unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
            }
            Backend::Postgres => {
                let mut client = octopus::store::postgres_client::connect(&self.location).expect("connect");
                for statement in statements {
                    client.batch_execute(statement).unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
            }
            Backend::Mysql => {
                let mut connection = octopus::store::mysql_client::connect(&self.location).expect("connect");
                for statement in statements {
                    connection.query_drop(statement).unwrap_or_else(|error| panic!("{statement}: {error}"));
                }
            }
        }
    }

    /// The rows of `schema_migrations`, read with the driver directly.
    fn applied_migration_versions(&self) -> Vec<i64> {
        let sql = "SELECT version FROM schema_migrations ORDER BY version";
        match self.backend {
            Backend::Sqlite => {
                let connection =
                    ::rusqlite::Connection::open(&self.location).expect("open the SQLite file");
                let mut statement = connection.prepare(sql).expect("prepare");
                statement
                    .query_map([], |row| row.get(0))
                    .expect("query")
                    .map(|row| row.expect("row"))
                    .collect()
            }
            Backend::Postgres => {
                let mut client = octopus::store::postgres_client::connect(&self.location)
                    .expect("connect");
                client
                    .query(sql, &[])
                    .expect("query")
                    .iter()
                    .map(|row| row.get(0).expect("version"))
                    .collect()
            }
            Backend::Mysql => {
                let mut connection = octopus::store::mysql_client::connect(&self.location).expect("connect");
                connection.query(sql).expect("query")
            }
        }
    }
}

fn sample_channel(name: &str) -> Channel {
    Channel {
        id: 0,
        name: name.to_owned(),
        channel_type: ChannelType::OpenaiChat,
        enabled: true,
        base_urls: vec![
            "https://api.example.com/v1".to_owned(),
            "https://backup.example.com/v1".to_owned(),
        ],
        keys: vec![
            ChannelKey {
                id: 0,
                key: "sk-first".to_owned(),
                enabled: true,
                remark: "main".to_owned(),
            },
            ChannelKey {
                id: 0,
                key: "sk-second".to_owned(),
                enabled: false,
                remark: "spare 🔑".to_owned(),
            },
            ChannelKey {
                id: 0,
                key: "sk-third".to_owned(),
                enabled: true,
                remark: String::new(),
            },
        ],
        models: vec!["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()],
        headers: BTreeMap::from([
            ("X-Team".to_owned(), "núcleo".to_owned()),
            ("X-Trace".to_owned(), "1".to_owned()),
        ]),
        proxy: "socks5://127.0.0.1:1080".to_owned(),
        auto_sync: true,
        match_regex: "^gpt-".to_owned(),
        auto_group: AutoGroup::Fuzzy,
        created_at: 0,
        updated_at: 0,
    }
}

fn item(channel_id: i64, model: &str, priority: i32, weight: u32) -> GroupItem {
    GroupItem {
        channel_id,
        model: model.to_owned(),
        priority,
        weight,
    }
}

fn sample_group(name: &str, items: Vec<GroupItem>) -> Group {
    Group {
        id: 0,
        name: name.to_owned(),
        mode: GroupMode::Weighted,
        items,
        max_attempts: 3,
        first_byte_timeout_ms: 15_000,
        total_timeout_ms: 120_000,
        sticky_seconds: 300,
        match_regex: "^(gpt|o)[0-9-]".to_owned(),
        created_at: 0,
        updated_at: 0,
    }
}

fn sample_api_key(name: &str, secret: &str) -> ApiKey {
    ApiKey {
        id: 0,
        name: name.to_owned(),
        key_hash: sha256_hex(secret.as_bytes()),
        key_prefix: secret.chars().take(15).collect(),
        enabled: true,
        expires_at: Some(2_000_000_000),
        max_cost: Some(12.5),
        allowed_models: vec!["fast".to_owned(), "smart".to_owned()],
        rpm: 60,
        tpm: 100_000,
        created_at: 0,
        updated_at: 0,
    }
}

fn price(model: &str, channel_id: Option<i64>, input: f64) -> ModelPrice {
    ModelPrice {
        id: 0,
        model: model.to_owned(),
        channel_id,
        input,
        output: input * 4.0,
        cache_read: 0.075,
        cache_write: 0.375,
    }
}

fn assert_duplicate<T: std::fmt::Debug>(result: Result<T, StoreError>, expected_text: &str) {
    match result {
        Err(StoreError::Duplicate(what)) => assert!(
            what.contains(expected_text),
            "{what:?} should name {expected_text:?}"
        ),
        other => panic!("expected Duplicate naming {expected_text:?}, got {other:?}"),
    }
}

fn assert_missing_reference<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    expected_text: &str,
) {
    match result {
        Err(StoreError::MissingReference(what)) => {
            assert!(
                what.contains(expected_text),
                "{what:?} should name {expected_text:?}"
            )
        }
        other => panic!("expected MissingReference naming {expected_text:?}, got {other:?}"),
    }
}

/// may's settings are global: the app's stack size, and a single worker so that a blocked
/// worker would stall every other coroutine (which `pool_wait_parks_the_coroutine` detects).
fn configure_may() {
    static CONFIGURE: Once = Once::new();
    CONFIGURE.call_once(|| {
        may::config().set_stack_size(0x8000).set_workers(1);
    });
}

mod cases {
    use crate::*;

    pub fn migrations_are_idempotent(database: &TestDatabase) {
        let mut first = database.open();
        first.set_setting("marker", "kept").unwrap();
        drop(first);
        let mut second = database.open();
        assert_eq!(second.setting("marker").unwrap().as_deref(), Some("kept"));
        drop(second);
        let expected: Vec<i64> = database
            .backend
            .migrations()
            .iter()
            .map(|migration| migration.version)
            .collect();
        assert_eq!(database.applied_migration_versions(), expected);
    }

    /// A database written before migration 6 keeps its request logs: the wide `relay_logs` rows
    /// are carried into `request_logs` and read back field for field.
    pub fn wide_request_logs_are_carried_into_the_compact_table(database: &TestDatabase) {
        drop(database.open());
        // Put the database back to version 5: the wide table of migration 2, with two rows.
        let version_2 = database.backend.migrations().iter().find(|migration| migration.version == 2).unwrap().sql;
        let wide_table_start = version_2.find("CREATE TABLE IF NOT EXISTS relay_logs").expect("migration 2 creates relay_logs");
        let wide_table = &version_2[wide_table_start..];
        let wide_table = &wide_table[..wide_table.find(';').unwrap()];
        let (yes, no) = if database.backend == Backend::Postgres { ("TRUE", "FALSE") } else { ("1", "0") };
        let columns = "id, time_ms, api_key_id, api_key_name, group_name, channel_id, channel_name, model, \
                       client_format, status_code, success, attempts, input_tokens, output_tokens, cache_read_tokens, \
                       cache_write_tokens, reasoning_tokens, cost_micros, ttft_ms, latency_ms, stream, error, \
                       attempt_details, request_body, response_body";
        let answered = format!(
            "INSERT INTO relay_logs ({columns}) VALUES (101, 1780000000000, 3, 'laptop \"x\"', 'smart', 2, 'openai', \
             'gpt-4o-mini', 'openai_chat', 200, {yes}, 1, 10, 5, 4, 1, 2, 20000, 35, 120, {yes}, '', \
             '[{{\"channel_id\":2,\"channel_name\":\"openai\",\"key_id\":7,\"base_url\":\"http://127.0.0.1:9/v1\",\
             \"model\":\"gpt-4o-mini\",\"outcome\":\"success\",\"status\":200,\"duration_ms\":118}}]', \
             '{{\"model\":\"smart\"}}', NULL)"
        );
        let failed = format!(
            "INSERT INTO relay_logs ({columns}) VALUES (102, 1780000001000, NULL, '', 'other', NULL, '', '', \
             'anthropic', 404, {no}, 0, 0, 0, 0, 0, 0, 0, NULL, 3, {no}, 'no group named other', '[]', NULL, NULL)"
        );
        database.execute_raw(&[
            "DROP TABLE request_logs",
            wide_table,
            &answered,
            &failed,
            "DELETE FROM schema_migrations WHERE version = 6",
        ]);

        let mut store = database.open();
        let expected_answered = RequestLog {
            id: 101,
            time_ms: 1_780_000_000_000,
            api_key_id: Some(3),
            api_key_name: "laptop \"x\"".to_string(),
            group: "smart".to_string(),
            channel_id: Some(2),
            channel_name: "openai".to_string(),
            model: "gpt-4o-mini".to_string(),
            client_format: "openai_chat".to_string(),
            status_code: 200,
            success: true,
            attempts: 1,
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 4,
            cache_write_tokens: 1,
            reasoning_tokens: 2,
            cost_micros: 20_000,
            ttft_ms: Some(35),
            latency_ms: 120,
            stream: true,
            error: String::new(),
            attempt_details: vec![LoggedAttempt {
                channel_id: 2,
                channel_name: "openai".to_string(),
                key_id: 7,
                base_url: "http://127.0.0.1:9/v1".to_string(),
                model: "gpt-4o-mini".to_string(),
                outcome: "success".to_string(),
                status: Some(200),
                duration_ms: 118,
            }],
            request_body: Some(r#"{"model":"smart"}"#.to_string()),
            response_body: None,
        };
        assert_eq!(store.log_by_id(101).unwrap(), Some(expected_answered));
        let expected_failed = RequestLog {
            id: 102,
            time_ms: 1_780_000_001_000,
            group: "other".to_string(),
            client_format: "anthropic".to_string(),
            status_code: 404,
            latency_ms: 3,
            error: "no group named other".to_string(),
            ..RequestLog::default()
        };
        assert_eq!(store.log_by_id(102).unwrap(), Some(expected_failed));
        let (page, total) = store.list_logs(&LogFilter { success: Some(false), ..LogFilter::default() }, 0, 10).unwrap();
        assert_eq!((total, page.len(), page[0].id), (1, 1, 102));

        // New rows go into the same table, and the migrated database opens again unchanged.
        let new_log = RequestLog { id: 103, time_ms: 1_780_000_002_000, group: "smart".to_string(), success: true, ..RequestLog::default() };
        store.insert_logs(&[LogRow::of(&new_log)]).unwrap();
        drop(store);
        let mut reopened = database.open();
        let (page, total) = reopened.list_logs(&LogFilter { group: Some("smart".to_string()), ..LogFilter::default() }, 0, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(page.iter().map(|log| log.id).collect::<Vec<_>>(), vec![103, 101]);
        assert_eq!(page[0], new_log);
    }

    /// A batch of logs with every optional value, then batches without them (one row and four,
    /// so both go through statements the first batch used): the missing values read back as
    /// missing, not as the earlier rows' values. SQLite leaves missing values unbound and relies
    /// on reused statements being cleared.
    pub fn logs_without_keys_channels_or_bodies_read_back_empty_after_logs_with_them(database: &TestDatabase) {
        let mut store = database.open();
        let full = |id: i64| RequestLog {
            id,
            time_ms: 1_780_000_000_000 + id,
            api_key_id: Some(7),
            channel_id: Some(3),
            group: "full".to_string(),
            success: true,
            request_body: Some(format!("request {id}")),
            response_body: Some(format!("response {id}")),
            ..RequestLog::default()
        };
        let bare = |id: i64| RequestLog { id, time_ms: 1_780_000_000_000 + id, group: "bare".to_string(), ..RequestLog::default() };
        let full_logs: Vec<RequestLog> = (1..=5).map(full).collect();
        let bare_logs: Vec<RequestLog> = (11..=15).map(bare).collect();
        store.insert_logs(&full_logs.iter().map(LogRow::of).collect::<Vec<_>>()).unwrap();
        store.insert_logs(&bare_logs.iter().map(LogRow::of).collect::<Vec<_>>()).unwrap();
        for expected in full_logs.iter().chain(&bare_logs) {
            assert_eq!(store.log_by_id(expected.id).unwrap().as_ref(), Some(expected), "log {}", expected.id);
        }
    }

    pub fn admin_seed_lookup_and_password_update(database: &TestDatabase) {
        let mut store = database.open();
        assert_eq!(store.admin_by_username("admin").unwrap(), None);
        assert!(!store.has_admin().unwrap());
        assert!(store.seed_admin("admin", "hash-one").unwrap());
        assert!(store.has_admin().unwrap());
        assert!(
            !store.seed_admin("admin", "hash-two").unwrap(),
            "a second seed must not replace the admin"
        );
        assert!(
            !store.seed_admin("someone", "hash-two").unwrap(),
            "there is only ever one seeded admin"
        );

        let admin = store
            .admin_by_username("admin")
            .unwrap()
            .expect("the seeded admin");
        assert_eq!(admin.username, "admin");
        assert_eq!(admin.password_hash, "hash-one");
        assert!(
            admin.must_change_password,
            "the seeded admin must change the default password"
        );
        assert_eq!(store.admin_by_id(admin.id).unwrap(), Some(admin.clone()));
        assert_eq!(store.admin_by_username("someone").unwrap(), None);
        assert_eq!(
            store.admin_by_username("ADMIN").unwrap(),
            None,
            "usernames compare case-sensitively"
        );
        assert_eq!(store.admin_by_id(admin.id + 1000).unwrap(), None);

        store
            .update_admin_password(admin.id, "hash-three", false)
            .unwrap();
        let updated = store
            .admin_by_id(admin.id)
            .unwrap()
            .expect("admin still there");
        assert_eq!(updated.password_hash, "hash-three");
        assert!(!updated.must_change_password);
        // Writing identical values again still finds the row.
        store
            .update_admin_password(admin.id, "hash-three", false)
            .unwrap();
        assert_missing_reference(
            store.update_admin_password(admin.id + 1000, "hash", false),
            "admin user",
        );
    }

    pub fn sessions_create_lookup_delete_and_expire(database: &TestDatabase) {
        let mut store = database.open();
        store.seed_admin("admin", "hash").unwrap();
        let admin = store.admin_by_username("admin").unwrap().expect("admin");
        let short = AdminSession {
            token_hash: sha256_hex(b"token-short"),
            user_id: admin.id,
            expires_at: 2_000,
            created_at: 1_000,
        };
        let long = AdminSession {
            token_hash: sha256_hex(b"token-long"),
            expires_at: 9_000,
            ..short.clone()
        };
        store.create_session(&short).unwrap();
        store.create_session(&long).unwrap();
        assert_eq!(
            store.session_by_token_hash(&short.token_hash).unwrap(),
            Some(short.clone())
        );
        assert_eq!(
            store.session_by_token_hash(&long.token_hash).unwrap(),
            Some(long.clone())
        );
        assert_eq!(
            store
                .session_by_token_hash(&sha256_hex(b"unknown"))
                .unwrap(),
            None
        );

        assert_duplicate(store.create_session(&short), "session");
        let orphan = AdminSession {
            token_hash: sha256_hex(b"orphan"),
            user_id: admin.id + 1000,
            ..short.clone()
        };
        assert_missing_reference(store.create_session(&orphan), "admin user");

        assert_eq!(store.delete_expired_sessions(1_999).unwrap(), 0);
        assert_eq!(
            store.delete_expired_sessions(2_000).unwrap(),
            1,
            "expires_at == now counts as expired"
        );
        assert_eq!(
            store.session_by_token_hash(&short.token_hash).unwrap(),
            None
        );
        assert_eq!(
            store.session_by_token_hash(&long.token_hash).unwrap(),
            Some(long.clone())
        );

        assert_eq!(store.delete_sessions_of_user(admin.id).unwrap(), 1);
        assert_eq!(store.delete_sessions_of_user(admin.id).unwrap(), 0);
        assert_eq!(store.session_by_token_hash(&long.token_hash).unwrap(), None);
    }

    pub fn channel_round_trip_keeps_key_ids_stable(database: &TestDatabase) {
        let mut store = database.open();
        let input = sample_channel("primary ✓ 渠道");
        let created = store.create_channel(&input).unwrap();
        assert!(created.id > 0);
        assert!(created.created_at > 0);
        assert_eq!(created.updated_at, created.created_at);
        let key_ids: Vec<i64> = created.keys.iter().map(|key| key.id).collect();
        assert!(key_ids.iter().all(|id| *id > 0));
        assert!(key_ids[0] != key_ids[1] && key_ids[1] != key_ids[2] && key_ids[0] != key_ids[2]);
        let expected = Channel {
            id: created.id,
            keys: input
                .keys
                .iter()
                .zip(&key_ids)
                .map(|(key, id)| ChannelKey {
                    id: *id,
                    ..key.clone()
                })
                .collect(),
            created_at: created.created_at,
            updated_at: created.updated_at,
            ..input.clone()
        };
        assert_eq!(created, expected);
        assert_eq!(
            store.channel_by_id(created.id).unwrap(),
            Some(created.clone())
        );
        assert_eq!(store.list_channels().unwrap(), vec![created.clone()]);

        // Keep the third key (moved first), edit the first, drop the second, add a new one.
        let changed = Channel {
            name: "primary renamed".to_owned(),
            channel_type: ChannelType::Anthropic,
            enabled: false,
            base_urls: vec!["https://api.anthropic.example/v1".to_owned()],
            keys: vec![
                ChannelKey {
                    remark: "moved first".to_owned(),
                    ..created.keys[2].clone()
                },
                ChannelKey {
                    key: "sk-first-rotated".to_owned(),
                    enabled: false,
                    ..created.keys[0].clone()
                },
                ChannelKey {
                    id: 0,
                    key: "sk-new".to_owned(),
                    enabled: true,
                    remark: "added".to_owned(),
                },
            ],
            models: vec![],
            headers: BTreeMap::new(),
            proxy: String::new(),
            auto_sync: false,
            match_regex: String::new(),
            auto_group: AutoGroup::Regex,
            ..created.clone()
        };
        let updated = store
            .update_channel(&changed)
            .unwrap()
            .expect("the channel exists");
        assert_eq!(updated.keys.len(), 3);
        assert_eq!(updated.keys[0].id, key_ids[2]);
        assert_eq!(updated.keys[1].id, key_ids[0]);
        assert!(updated.keys[2].id > 0 && !key_ids.contains(&updated.keys[2].id));
        assert_eq!(updated.created_at, created.created_at);
        assert!(updated.updated_at >= created.updated_at);
        let expected = Channel {
            keys: updated.keys.clone(),
            updated_at: updated.updated_at,
            ..changed.clone()
        };
        assert_eq!(updated, expected);
        assert_eq!(
            store.channel_by_id(created.id).unwrap(),
            Some(updated.clone())
        );

        // A key id belonging to another channel is stored as a new key there, not moved.
        let other = store.create_channel(&sample_channel("other")).unwrap();
        let borrowing = Channel {
            keys: vec![updated.keys[0].clone()],
            ..other.clone()
        };
        let other_updated = store
            .update_channel(&borrowing)
            .unwrap()
            .expect("other exists");
        assert_eq!(other_updated.keys.len(), 1);
        assert!(!key_ids.contains(&other_updated.keys[0].id));
        assert_eq!(
            store.channel_by_id(created.id).unwrap(),
            Some(updated.clone())
        );
        assert_eq!(
            store.list_channels().unwrap(),
            vec![updated.clone(), other_updated.clone()]
        );

        let missing = Channel {
            id: other.id + 1000,
            ..changed.clone()
        };
        assert_eq!(store.update_channel(&missing).unwrap(), None);
        assert!(store.delete_channel(created.id).unwrap());
        assert!(!store.delete_channel(created.id).unwrap());
        assert_eq!(store.channel_by_id(created.id).unwrap(), None);
        assert_eq!(store.list_channels().unwrap(), vec![other_updated]);
    }

    pub fn deleting_a_channel_removes_its_group_items_and_prices(database: &TestDatabase) {
        let mut store = database.open();
        let doomed = store.create_channel(&sample_channel("doomed")).unwrap();
        let survivor = store.create_channel(&sample_channel("survivor")).unwrap();
        let group = store
            .create_group(&sample_group(
                "mixed",
                vec![
                    item(doomed.id, "m-1", 0, 1),
                    item(survivor.id, "m-2", 1, 2),
                    item(doomed.id, "m-3", 2, 3),
                ],
            ))
            .unwrap();
        let global_price = store.upsert_price(&price("m-1", None, 1.0)).unwrap();
        store
            .upsert_price(&price("m-1", Some(doomed.id), 2.0))
            .unwrap();

        assert!(store.delete_channel(doomed.id).unwrap());
        let remaining = store
            .group_by_id(group.id)
            .unwrap()
            .expect("the group itself stays");
        assert_eq!(remaining.items, vec![item(survivor.id, "m-2", 1, 2)]);
        assert_eq!(store.list_prices().unwrap(), vec![global_price]);
        assert_eq!(store.list_channels().unwrap().len(), 1);
    }

    pub fn duplicate_names_are_reported_and_roll_back(database: &TestDatabase) {
        let mut store = database.open();
        let first = store.create_channel(&sample_channel("same")).unwrap();
        assert_duplicate(store.create_channel(&sample_channel("same")), "same");
        // Names compare case-sensitively on every backend.
        let second = store.create_channel(&sample_channel("Same")).unwrap();
        // A rejected update changes nothing, keys included.
        let clash = Channel {
            name: "same".to_owned(),
            keys: vec![],
            ..second.clone()
        };
        assert_duplicate(store.update_channel(&clash), "same");
        assert_eq!(
            store.channel_by_id(second.id).unwrap(),
            Some(second.clone())
        );
        assert_eq!(store.list_channels().unwrap(), vec![first.clone(), second]);

        let group = store
            .create_group(&sample_group("fast", vec![item(first.id, "m", 0, 1)]))
            .unwrap();
        assert_duplicate(store.create_group(&sample_group("fast", vec![])), "fast");
        let other_group = store
            .create_group(&sample_group("slow", vec![item(first.id, "m", 0, 1)]))
            .unwrap();
        assert_duplicate(
            store.update_group(&Group {
                name: "fast".to_owned(),
                items: vec![],
                ..other_group.clone()
            }),
            "fast",
        );
        assert_eq!(store.list_groups().unwrap(), vec![group, other_group]);

        let api_key = store
            .create_api_key(&sample_api_key("team", "sk-octopus-one"))
            .unwrap();
        assert_duplicate(
            store.create_api_key(&sample_api_key("team", "sk-octopus-two")),
            "team",
        );
        assert_duplicate(
            store.create_api_key(&sample_api_key("another team", "sk-octopus-one")),
            "hash",
        );
        let other_key = store
            .create_api_key(&sample_api_key("ops", "sk-octopus-three"))
            .unwrap();
        assert_duplicate(
            store.update_api_key(&ApiKey {
                name: "team".to_owned(),
                ..other_key.clone()
            }),
            "team",
        );
        assert_eq!(store.list_api_keys().unwrap(), vec![api_key, other_key]);
    }

    pub fn references_to_missing_channels_are_reported(database: &TestDatabase) {
        let mut store = database.open();
        let channel = store.create_channel(&sample_channel("real")).unwrap();
        let missing_id = channel.id + 1000;
        let broken = sample_group(
            "broken",
            vec![item(channel.id, "m", 0, 1), item(missing_id, "m", 0, 1)],
        );
        assert_missing_reference(store.create_group(&broken), &missing_id.to_string());
        assert!(
            store.list_groups().unwrap().is_empty(),
            "a failed create must leave no group behind"
        );

        let group = store
            .create_group(&sample_group("ok", vec![item(channel.id, "m", 0, 1)]))
            .unwrap();
        let broken_update = Group {
            items: vec![item(missing_id, "m", 0, 1)],
            ..group.clone()
        };
        assert_missing_reference(store.update_group(&broken_update), &missing_id.to_string());
        assert_eq!(store.group_by_id(group.id).unwrap(), Some(group));

        assert_missing_reference(
            store.upsert_price(&price("m", Some(missing_id), 1.0)),
            &missing_id.to_string(),
        );
        assert!(store.list_prices().unwrap().is_empty());
    }

    pub fn group_round_trip_keeps_item_order(database: &TestDatabase) {
        let mut store = database.open();
        let alpha = store.create_channel(&sample_channel("alpha")).unwrap();
        let beta = store.create_channel(&sample_channel("beta")).unwrap();
        let input = sample_group(
            "smart",
            vec![
                item(beta.id, "model-b", 2, 5),
                item(alpha.id, "model-a", -1, 1),
                item(beta.id, "model-c", 0, 10),
            ],
        );
        let created = store.create_group(&input).unwrap();
        assert!(created.id > 0 && created.created_at > 0);
        let expected = Group {
            id: created.id,
            created_at: created.created_at,
            updated_at: created.created_at,
            ..input
        };
        assert_eq!(created, expected);
        assert_eq!(
            store.group_by_id(created.id).unwrap(),
            Some(created.clone())
        );

        let changed = Group {
            name: "smarter".to_owned(),
            mode: GroupMode::Failover,
            items: vec![
                item(alpha.id, "model-a", 0, 1),
                item(beta.id, "model-c", 1, 1),
            ],
            max_attempts: 7,
            first_byte_timeout_ms: 0,
            total_timeout_ms: 600_000,
            sticky_seconds: 0,
            match_regex: String::new(),
            ..created.clone()
        };
        let updated = store
            .update_group(&changed)
            .unwrap()
            .expect("the group exists");
        assert_eq!(
            updated,
            Group {
                updated_at: updated.updated_at,
                ..changed.clone()
            }
        );
        assert_eq!(updated.created_at, created.created_at);

        let empty = store
            .create_group(&Group {
                mode: GroupMode::RoundRobin,
                ..sample_group("empty", vec![])
            })
            .unwrap();
        assert!(empty.items.is_empty());
        assert_eq!(
            store.list_groups().unwrap(),
            vec![updated.clone(), empty.clone()]
        );

        assert_eq!(
            store
                .update_group(&Group {
                    id: empty.id + 1000,
                    ..changed
                })
                .unwrap(),
            None
        );
        assert!(store.delete_group(updated.id).unwrap());
        assert!(!store.delete_group(updated.id).unwrap());
        assert_eq!(store.group_by_id(updated.id).unwrap(), None);
        assert_eq!(store.list_groups().unwrap(), vec![empty]);
        assert_eq!(
            store.list_channels().unwrap().len(),
            2,
            "deleting a group leaves its channels alone"
        );
    }

    pub fn api_key_round_trip_and_lookup_by_hash(database: &TestDatabase) {
        let mut store = database.open();
        let input = sample_api_key("team", "sk-octopus-AbCdEfGhIjKl");
        let created = store.create_api_key(&input).unwrap();
        assert!(created.id > 0 && created.created_at > 0);
        assert_eq!(
            created,
            ApiKey {
                id: created.id,
                created_at: created.created_at,
                updated_at: created.created_at,
                ..input.clone()
            }
        );
        assert_eq!(
            store.api_key_by_id(created.id).unwrap(),
            Some(created.clone())
        );
        assert_eq!(
            store.api_key_by_hash(&input.key_hash).unwrap(),
            Some(created.clone())
        );
        assert_eq!(
            store
                .api_key_by_hash(&sha256_hex(b"sk-octopus-unknown"))
                .unwrap(),
            None
        );
        assert_eq!(store.api_key_by_id(created.id + 1000).unwrap(), None);

        // key_hash, key_prefix and created_at are not updatable.
        let changed = ApiKey {
            name: "team-renamed".to_owned(),
            key_hash: sha256_hex(b"sk-octopus-other"),
            key_prefix: "sk-octopus-Zz".to_owned(),
            enabled: false,
            expires_at: None,
            max_cost: None,
            allowed_models: vec![],
            rpm: 5,
            tpm: 0,
            created_at: 1,
            ..created.clone()
        };
        let updated = store
            .update_api_key(&changed)
            .unwrap()
            .expect("the key exists");
        assert_eq!(
            updated,
            ApiKey {
                key_hash: created.key_hash.clone(),
                key_prefix: created.key_prefix.clone(),
                created_at: created.created_at,
                updated_at: updated.updated_at,
                ..changed.clone()
            }
        );
        assert_eq!(
            store.api_key_by_hash(&created.key_hash).unwrap(),
            Some(updated.clone())
        );
        assert_eq!(store.list_api_keys().unwrap(), vec![updated.clone()]);

        assert_eq!(
            store
                .update_api_key(&ApiKey {
                    id: created.id + 1000,
                    ..changed
                })
                .unwrap(),
            None
        );
        assert!(store.delete_api_key(created.id).unwrap());
        assert!(!store.delete_api_key(created.id).unwrap());
        assert_eq!(store.api_key_by_hash(&created.key_hash).unwrap(), None);
        assert!(store.list_api_keys().unwrap().is_empty());
    }

    pub fn prices_upsert_by_model_and_channel(database: &TestDatabase) {
        let mut store = database.open();
        let channel = store.create_channel(&sample_channel("priced")).unwrap();
        let global = store.upsert_price(&price("gpt-x", None, 0.15)).unwrap();
        assert!(global.id > 0);
        let specific = store
            .upsert_price(&price("gpt-x", Some(channel.id), 0.1))
            .unwrap();
        assert_ne!(
            specific.id, global.id,
            "a channel price is distinct from the model's default price"
        );

        let replaced_global = store.upsert_price(&price("gpt-x", None, 2.5)).unwrap();
        assert_eq!(
            replaced_global.id, global.id,
            "the same model without channel replaces in place"
        );
        let replaced_specific = store
            .upsert_price(&price("gpt-x", Some(channel.id), 3.75))
            .unwrap();
        assert_eq!(replaced_specific.id, specific.id);
        let other_model = store
            .upsert_price(&price("a-model", None, 0.000_15))
            .unwrap();

        assert_eq!(
            store.list_prices().unwrap(),
            vec![
                other_model.clone(),
                replaced_global.clone(),
                replaced_specific.clone()
            ]
        );
        assert!(store.delete_price(replaced_specific.id).unwrap());
        assert!(!store.delete_price(replaced_specific.id).unwrap());
        assert_eq!(
            store.list_prices().unwrap(),
            vec![other_model, replaced_global]
        );
    }

    pub fn stored_responses_save_read_delete_and_prune(database: &TestDatabase) {
        use octopus::store::entities::StoredResponse;
        let mut store = database.open();
        let response = |id: &str, created_at: i64, expires_at: i64, size_bytes: i64| StoredResponse {
            id: id.to_owned(),
            api_key_id: 7,
            created_at,
            expires_at,
            model: "team-model".to_owned(),
            response_json: format!(r#"{{"id":"{id}","object":"response"}}"#),
            input_items: r#"[{"role":"user","content":"héllo 🐙"}]"#.to_owned(),
            output_items: "x".repeat(70_000),
            size_bytes,
        };
        assert_eq!(store.response_by_id("resp_a").unwrap(), None);
        let first = response("resp_a", 100, 1_000, 40);
        store.save_response(&first).unwrap();
        assert_eq!(store.response_by_id("resp_a").unwrap(), Some(first.clone()));
        // Saving the same id again replaces the row.
        let replaced = StoredResponse { expires_at: 2_000, ..first.clone() };
        store.save_response(&replaced).unwrap();
        assert_eq!(store.response_by_id("resp_a").unwrap(), Some(replaced));
        store.save_response(&response("resp_b", 200, 5_000, 40)).unwrap();
        store.save_response(&response("resp_c", 300, 5_000, 40)).unwrap();
        store.save_response(&response("resp_old", 50, 500, 1)).unwrap();

        // The expired one goes first; then the oldest beyond 100 bytes in all (resp_a).
        assert_eq!(store.prune_responses(600, 100).unwrap(), 2);
        assert_eq!(store.response_by_id("resp_old").unwrap(), None);
        assert_eq!(store.response_by_id("resp_a").unwrap(), None);
        assert!(store.response_by_id("resp_b").unwrap().is_some());
        assert_eq!(store.prune_responses(600, 1_000).unwrap(), 0);

        assert!(store.delete_response("resp_b").unwrap());
        assert!(!store.delete_response("resp_b").unwrap());
        assert!(store.response_by_id("resp_c").unwrap().is_some());
        assert_eq!(store.prune_responses(5_000, 1_000).unwrap(), 1);
        assert_eq!(store.response_by_id("resp_c").unwrap(), None);
    }

    pub fn settings_round_trip(database: &TestDatabase) {
        let mut store = database.open();
        assert_eq!(store.setting("site_name").unwrap(), None);
        assert!(store.list_settings().unwrap().is_empty());
        store.set_setting("site_name", "Octopus").unwrap();
        store.set_setting("empty", "").unwrap();
        store.set_setting("site_name", "Octopus 🐙").unwrap();
        let large = "x".repeat(200_000);
        store.set_setting("large", &large).unwrap();
        assert_eq!(
            store.setting("site_name").unwrap().as_deref(),
            Some("Octopus 🐙")
        );
        assert_eq!(store.setting("empty").unwrap().as_deref(), Some(""));
        assert_eq!(
            store.list_settings().unwrap(),
            vec![
                ("empty".to_owned(), String::new()),
                ("large".to_owned(), large),
                ("site_name".to_owned(), "Octopus 🐙".to_owned())
            ]
        );
    }

    pub fn replace_configuration_keeps_ids_and_is_all_or_nothing(database: &TestDatabase) {
        let mut store = database.open();
        store.create_channel(&sample_channel("before")).unwrap();
        store.create_api_key(&sample_api_key("before", "sk-octopus-before")).unwrap();
        store.set_setting("setting.log_bodies", "true").unwrap();
        store.set_setting("other.key", "kept").unwrap();

        let mut first = sample_channel("first");
        first.id = 40;
        first.created_at = 1_700_000_000;
        first.updated_at = 1_700_000_100;
        for (index, key) in first.keys.iter_mut().enumerate() {
            key.id = 70 + index as i64;
        }
        let mut second = sample_channel("second");
        second.id = 41;
        second.channel_type = ChannelType::Anthropic;
        second.keys = vec![ChannelKey { id: 75, key: "sk-ant".to_owned(), enabled: true, remark: String::new() }];
        let mut group = sample_group("imported", vec![item(41, "claude", 0, 1), item(40, "gpt-4o", 2, 5)]);
        group.id = 9;
        let mut api_key = sample_api_key("imported", "sk-octopus-imported");
        api_key.id = 12;
        api_key.max_cost = None;
        let mut default_price = price("claude", None, 3.0);
        default_price.id = 5;
        let mut channel_price = price("claude", Some(41), 1.5);
        channel_price.id = 6;
        let stats = vec![StatsRow {
            key: StatsKey { hour: 7_200, channel_id: 41, api_key_id: 12, group: "imported".to_owned(), model: "claude".to_owned() },
            counters: StatsCounters { requests: 3, success: 2, failed: 1, cost_micros: 99, ..StatsCounters::default() },
        }];
        let backup = Backup {
            channels: vec![first, second],
            groups: vec![group],
            api_keys: vec![api_key],
            prices: vec![default_price, channel_price],
            settings: vec![("setting.log_max_rows".to_owned(), "7".to_owned())],
            stats: Some(stats.clone()),
        };
        store.replace_configuration(&backup).unwrap();

        assert_eq!(store.list_channels().unwrap(), backup.channels);
        assert_eq!(store.list_groups().unwrap(), backup.groups);
        assert_eq!(store.list_api_keys().unwrap(), backup.api_keys);
        assert_eq!(store.list_prices().unwrap(), backup.prices);
        assert_eq!(
            store.list_settings().unwrap(),
            vec![("other.key".to_owned(), "kept".to_owned()), ("setting.log_max_rows".to_owned(), "7".to_owned())]
        );
        assert_eq!(store.all_stats_rows().unwrap(), stats);

        // New rows get ids past the imported ones.
        let created = store.create_channel(&sample_channel("after")).unwrap();
        assert!(created.id > 41, "channel id {}", created.id);
        assert!(created.keys.iter().all(|key| key.id > 75), "{:?}", created.keys);
        let created_group = store.create_group(&sample_group("after", Vec::new())).unwrap();
        assert!(created_group.id > 9, "group id {}", created_group.id);
        let created_key = store.create_api_key(&sample_api_key("after", "sk-octopus-after")).unwrap();
        assert!(created_key.id > 12, "api key id {}", created_key.id);
        let created_price = store.upsert_price(&price("after", None, 1.0)).unwrap();
        assert!(created_price.id > 6, "price id {}", created_price.id);

        // A failing statement (an item naming no channel) undoes every one before it.
        let channels_before = store.list_channels().unwrap();
        let prices_before = store.list_prices().unwrap();
        let settings_before = store.list_settings().unwrap();
        let mut broken = backup.clone();
        broken.channels.truncate(1);
        broken.prices.clear();
        broken.groups[0].items = vec![item(999, "nothing", 0, 1)];
        broken.stats = Some(Vec::new());
        assert!(store.replace_configuration(&broken).is_err());
        assert_eq!(store.list_channels().unwrap(), channels_before);
        assert_eq!(store.list_prices().unwrap(), prices_before);
        assert_eq!(store.list_settings().unwrap(), settings_before);
        assert_eq!(store.all_stats_rows().unwrap(), stats);

        // Without statistics in the backup, the statistics stay.
        let mut without_stats = backup.clone();
        without_stats.stats = None;
        store.replace_configuration(&without_stats).unwrap();
        assert_eq!(store.all_stats_rows().unwrap(), stats);
        assert_eq!(store.list_channels().unwrap(), backup.channels);
    }

    pub fn pool_serves_threads_and_coroutines(database: &TestDatabase) {
        configure_may();
        let pool = database.pool(4);
        assert_eq!(pool.backend_name(), database.backend.database_type());
        let thread_handles: Vec<_> = (0..4)
            .map(|index| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    pool.call(move |store| store.set_setting(&format!("thread-{index}"), "t"))
                })
            })
            .collect();
        let coroutine_handles: Vec<_> = (0..4)
            .map(|index| {
                let pool = pool.clone();
                may::go!(move || pool
                    .call(move |store| store.set_setting(&format!("coroutine-{index}"), "c")))
            })
            .collect();
        for handle in thread_handles {
            handle.join().expect("thread finished").unwrap();
        }
        for handle in coroutine_handles {
            handle.join().expect("coroutine finished").unwrap();
        }
        let settings = pool.call(|store| store.list_settings()).unwrap();
        assert_eq!(settings.len(), 8, "{settings:?}");
    }

    pub fn pool_survives_a_panicking_job(database: &TestDatabase) {
        // One thread only: if the panic killed it, nothing would answer the next call.
        let pool = database.pool(1);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.call(|_store| -> () { panic!("job failed on purpose") });
        }));
        let payload = outcome.expect_err("the job's panic reaches the caller");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"job failed on purpose")
        );
        pool.call(|store| store.set_setting("after", "panic"))
            .unwrap();
        assert_eq!(
            pool.call(|store| store.setting("after"))
                .unwrap()
                .as_deref(),
            Some("panic")
        );
    }
}

#[test]
fn pool_wait_parks_the_coroutine_not_the_worker() {
    configure_may();
    let database = TestDatabase::create(Backend::Sqlite).expect("SQLite is always available");
    let pool = database.pool(1);
    let (started_sender, started_receiver) = std::sync::mpsc::channel();
    let slow_caller = may::go!(move || {
        pool.call(move |store| {
            let _ = started_sender.send(());
            std::thread::sleep(Duration::from_millis(400));
            store.setting("anything").unwrap();
        });
        Instant::now()
    });
    started_receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow job started");
    // With one may worker, this coroutine can only run if the slow caller parked.
    let other_coroutine = may::go!(Instant::now);
    let other_finished = other_coroutine.join().expect("the other coroutine ran");
    let slow_finished = slow_caller.join().expect("the slow caller finished");
    assert!(
        other_finished < slow_finished,
        "a waiting pool caller blocked the may worker"
    );
}

#[test]
fn unknown_database_types_are_rejected() {
    for result in [
        store::open("oracle", "x").map(|_| ()),
        StorePool::open("oracle", "x", 1).map(|_| ()),
    ] {
        match result {
            Err(StoreError::Backend(message)) => assert!(message.contains("oracle"), "{message}"),
            other => panic!("expected a Backend error, got {other:?}"),
        }
    }
}

#[test]
fn sqlite_reports_a_path_it_cannot_create() {
    let database = TestDatabase::create(Backend::Sqlite).expect("SQLite is always available");
    let blocker = PathBuf::from(&database.location)
        .parent()
        .expect("parent")
        .to_path_buf();
    std::fs::create_dir_all(blocker.parent().expect("grandparent")).unwrap();
    // A plain file where the parent directory should be.
    std::fs::write(&blocker, b"not a directory").unwrap();
    match store::open("sqlite", &database.location) {
        Err(StoreError::Backend(message)) => assert!(message.contains("nested"), "{message}"),
        Err(other) => panic!("expected a Backend error, got {other:?}"),
        Ok(_) => panic!("opening below a file must fail"),
    }
}

#[test]
fn postgres_connection_errors_name_the_server_but_not_the_password() {
    match store::open(
        "postgres",
        "postgres://octopus:hunter2secret@127.0.0.1:1/octopus_db",
    ) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains("127.0.0.1:1/octopus_db"), "{message}");
            assert!(!message.contains("hunter2secret"), "{message}");
        }
        other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
    }
    let Some(admin_url) = databases::server_admin_url("postgres") else {
        return;
    };
    let missing = databases::unique_name("octopus_missing");
    match store::open("postgres", &databases::url_with_database(&admin_url, &missing)) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains(&missing), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn mysql_connection_errors_name_the_server_but_not_the_password() {
    match store::open(
        "mysql",
        "mysql://octopus:hunter2secret@127.0.0.1:1/octopus_db",
    ) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains("127.0.0.1:1/octopus_db"), "{message}");
            assert!(!message.contains("hunter2secret"), "{message}");
        }
        other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
    }
    let Some(admin_url) = databases::server_admin_url("mysql") else {
        return;
    };
    let missing = databases::unique_name("octopus_missing");
    match store::open("mysql", &databases::url_with_database(&admin_url, &missing)) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains(&missing), "{message}");
            assert!(message.contains("Unknown database"), "{message}");
        }
        other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
    }
    // A wrong password is refused without echoing it.
    let with_password = admin_url.replacen("://root@", "://root:hunter2secret@", 1);
    if with_password != admin_url {
        match store::open("mysql", &with_password) {
            Err(StoreError::Backend(message)) => {
                assert!(!message.contains("hunter2secret"), "{message}")
            }
            other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn url_with_database_replaces_only_the_path() {
    assert_eq!(
        databases::url_with_database("mysql://root@127.0.0.1:3306/mysql", "x"),
        "mysql://root@127.0.0.1:3306/x"
    );
    assert_eq!(
        databases::url_with_database("postgres://u:p@h:5432/db?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(databases::url_with_database("postgres://u@h", "x"), "postgres://u@h/x");
}
