-- Initial schema (PostgreSQL): admin account and sessions, channels and their keys, groups and
-- their items, client API keys, model prices and settings. Times are Unix seconds; lists and
-- maps are JSON text. Every statement is idempotent so a half-applied run can be repeated.

CREATE TABLE IF NOT EXISTS admin_users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT admin_users_username_unique UNIQUE (username)
);

CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_sessions_user_id ON admin_sessions (user_id);
CREATE INDEX IF NOT EXISTS admin_sessions_expires_at ON admin_sessions (expires_at);

CREATE TABLE IF NOT EXISTS channels (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    base_urls TEXT NOT NULL DEFAULT '[]',
    models TEXT NOT NULL DEFAULT '[]',
    headers TEXT NOT NULL DEFAULT '{}',
    proxy TEXT NOT NULL DEFAULT '',
    auto_sync BOOLEAN NOT NULL DEFAULT FALSE,
    match_regex TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT channels_name_unique UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS channel_keys (
    id BIGSERIAL PRIMARY KEY,
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    remark TEXT NOT NULL DEFAULT '',
    position BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS channel_keys_channel_id ON channel_keys (channel_id, position);

-- `groups` is a reserved word in MySQL; every backend uses the same table name.
CREATE TABLE IF NOT EXISTS channel_groups (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    max_attempts BIGINT NOT NULL DEFAULT 0,
    first_byte_timeout_ms BIGINT NOT NULL DEFAULT 0,
    total_timeout_ms BIGINT NOT NULL DEFAULT 0,
    sticky_seconds BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT channel_groups_name_unique UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS group_items (
    id BIGSERIAL PRIMARY KEY,
    group_id BIGINT NOT NULL REFERENCES channel_groups (id) ON DELETE CASCADE,
    channel_id BIGINT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    position BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS group_items_group_id ON group_items (group_id, position);
CREATE INDEX IF NOT EXISTS group_items_channel_id ON group_items (channel_id);

CREATE TABLE IF NOT EXISTS api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    expires_at BIGINT,
    max_cost DOUBLE PRECISION,
    allowed_models TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT api_keys_name_unique UNIQUE (name),
    CONSTRAINT api_keys_key_hash_unique UNIQUE (key_hash)
);

-- channel_scope is channel_id, or 0 for the default price of a model: a unique key over a
-- nullable column would let any number of NULL rows through.
CREATE TABLE IF NOT EXISTS model_prices (
    id BIGSERIAL PRIMARY KEY,
    model TEXT NOT NULL,
    channel_id BIGINT REFERENCES channels (id) ON DELETE CASCADE,
    channel_scope BIGINT NOT NULL DEFAULT 0,
    input DOUBLE PRECISION NOT NULL DEFAULT 0,
    output DOUBLE PRECISION NOT NULL DEFAULT 0,
    cache_read DOUBLE PRECISION NOT NULL DEFAULT 0,
    cache_write DOUBLE PRECISION NOT NULL DEFAULT 0,
    CONSTRAINT model_prices_model_scope_unique UNIQUE (model, channel_scope)
);
CREATE INDEX IF NOT EXISTS model_prices_channel_id ON model_prices (channel_id);

CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
