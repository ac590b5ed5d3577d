-- Initial schema (MySQL and MariaDB): admin account and sessions, channels and their keys,
-- groups and their items, client API keys, model prices and settings. Times are Unix seconds;
-- lists and maps are JSON text. Every statement is idempotent so a half-applied run (MySQL
-- cannot roll back DDL) can be repeated. Indexes are declared inside CREATE TABLE because
-- MySQL has no CREATE INDEX IF NOT EXISTS. utf8mb4_bin makes names compare case-sensitively,
-- as they do on SQLite and PostgreSQL. Statements are split on `;`, so none may contain one.

CREATE TABLE IF NOT EXISTS admin_users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(255) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY admin_users_username_unique (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS admin_sessions (
    token_hash VARCHAR(128) NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    KEY admin_sessions_user_id (user_id),
    KEY admin_sessions_expires_at (expires_at),
    CONSTRAINT admin_sessions_user_fk FOREIGN KEY (user_id) REFERENCES admin_users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS channels (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    type VARCHAR(64) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    base_urls MEDIUMTEXT NOT NULL,
    models MEDIUMTEXT NOT NULL,
    headers MEDIUMTEXT NOT NULL,
    proxy TEXT NOT NULL,
    auto_sync BOOLEAN NOT NULL DEFAULT FALSE,
    match_regex TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY channels_name_unique (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS channel_keys (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    channel_id BIGINT NOT NULL,
    `key` TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    remark TEXT NOT NULL,
    position BIGINT NOT NULL DEFAULT 0,
    KEY channel_keys_channel_id (channel_id, position),
    CONSTRAINT channel_keys_channel_fk FOREIGN KEY (channel_id) REFERENCES channels (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS channel_groups (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    mode VARCHAR(32) NOT NULL,
    max_attempts BIGINT NOT NULL DEFAULT 0,
    first_byte_timeout_ms BIGINT NOT NULL DEFAULT 0,
    total_timeout_ms BIGINT NOT NULL DEFAULT 0,
    sticky_seconds BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY channel_groups_name_unique (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS group_items (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    group_id BIGINT NOT NULL,
    channel_id BIGINT NOT NULL,
    model VARCHAR(255) NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    position BIGINT NOT NULL DEFAULT 0,
    KEY group_items_group_id (group_id, position),
    KEY group_items_channel_id (channel_id),
    CONSTRAINT group_items_group_fk FOREIGN KEY (group_id) REFERENCES channel_groups (id) ON DELETE CASCADE,
    CONSTRAINT group_items_channel_fk FOREIGN KEY (channel_id) REFERENCES channels (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS api_keys (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    key_hash VARCHAR(128) NOT NULL,
    key_prefix VARCHAR(64) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    expires_at BIGINT NULL,
    max_cost DOUBLE NULL,
    allowed_models MEDIUMTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE KEY api_keys_name_unique (name),
    UNIQUE KEY api_keys_key_hash_unique (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- channel_scope is channel_id, or 0 for the default price of a model: a unique key over a
-- nullable column would let any number of NULL rows through.
CREATE TABLE IF NOT EXISTS model_prices (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    model VARCHAR(255) NOT NULL,
    channel_id BIGINT NULL,
    channel_scope BIGINT NOT NULL DEFAULT 0,
    input DOUBLE NOT NULL DEFAULT 0,
    output DOUBLE NOT NULL DEFAULT 0,
    cache_read DOUBLE NOT NULL DEFAULT 0,
    cache_write DOUBLE NOT NULL DEFAULT 0,
    UNIQUE KEY model_prices_model_scope_unique (model, channel_scope),
    KEY model_prices_channel_id (channel_id),
    CONSTRAINT model_prices_channel_fk FOREIGN KEY (channel_id) REFERENCES channels (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS settings (
    `key` VARCHAR(255) NOT NULL PRIMARY KEY,
    value MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
