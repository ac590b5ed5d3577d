-- Per-client-key rate limits (PostgreSQL): requests and tokens per minute, 0 = no limit.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS rpm BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS tpm BIGINT NOT NULL DEFAULT 0;
