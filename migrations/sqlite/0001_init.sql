-- Initial schema (SQLite): admin account and sessions, channels and their keys, groups and
-- their items, client API keys, model prices and settings. Times are Unix seconds; lists and
-- maps are JSON text. Every statement is idempotent so a half-applied run can be repeated.

CREATE TABLE IF NOT EXISTS admin_users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_sessions_user_id ON admin_sessions (user_id);
CREATE INDEX IF NOT EXISTS admin_sessions_expires_at ON admin_sessions (expires_at);

CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    base_urls TEXT NOT NULL DEFAULT '[]',
    models TEXT NOT NULL DEFAULT '[]',
    headers TEXT NOT NULL DEFAULT '{}',
    proxy TEXT NOT NULL DEFAULT '',
    auto_sync INTEGER NOT NULL DEFAULT 0,
    match_regex TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS channel_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    "key" TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    remark TEXT NOT NULL DEFAULT '',
    position INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS channel_keys_channel_id ON channel_keys (channel_id, position);

-- `groups` is a reserved word in MySQL; every backend uses the same table name.
CREATE TABLE IF NOT EXISTS channel_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    max_attempts INTEGER NOT NULL DEFAULT 0,
    first_byte_timeout_ms INTEGER NOT NULL DEFAULT 0,
    total_timeout_ms INTEGER NOT NULL DEFAULT 0,
    sticky_seconds INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS group_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id INTEGER NOT NULL REFERENCES channel_groups (id) ON DELETE CASCADE,
    channel_id INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    weight INTEGER NOT NULL DEFAULT 1,
    position INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS group_items_group_id ON group_items (group_id, position);
CREATE INDEX IF NOT EXISTS group_items_channel_id ON group_items (channel_id);

CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    expires_at INTEGER,
    max_cost REAL,
    allowed_models TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- channel_scope is channel_id, or 0 for the default price of a model: a unique key over a
-- nullable column would let any number of NULL rows through.
CREATE TABLE IF NOT EXISTS model_prices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    channel_id INTEGER REFERENCES channels (id) ON DELETE CASCADE,
    channel_scope INTEGER NOT NULL DEFAULT 0,
    input REAL NOT NULL DEFAULT 0,
    output REAL NOT NULL DEFAULT 0,
    cache_read REAL NOT NULL DEFAULT 0,
    cache_write REAL NOT NULL DEFAULT 0,
    UNIQUE (model, channel_scope)
);
CREATE INDEX IF NOT EXISTS model_prices_channel_id ON model_prices (channel_id);

CREATE TABLE IF NOT EXISTS settings (
    "key" TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
