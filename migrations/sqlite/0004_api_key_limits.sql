-- Per-client-key rate limits (SQLite): requests and tokens per minute, 0 = no limit.
--
-- SQLite has no ADD COLUMN IF NOT EXISTS, but its DDL runs inside the migration's transaction,
-- so a run cut short leaves nothing behind to trip over on the next start.
ALTER TABLE api_keys ADD COLUMN rpm INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN tpm INTEGER NOT NULL DEFAULT 0;
