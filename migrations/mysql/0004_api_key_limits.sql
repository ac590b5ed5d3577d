-- Per-client-key rate limits (MySQL/MariaDB): requests and tokens per minute, 0 = no limit.
--
-- One statement adds both columns: MySQL commits DDL at once, and a single ALTER either
-- happens whole or not at all, so an interrupted run is safe to repeat.
ALTER TABLE api_keys ADD COLUMN rpm BIGINT NOT NULL DEFAULT 0, ADD COLUMN tpm BIGINT NOT NULL DEFAULT 0;
