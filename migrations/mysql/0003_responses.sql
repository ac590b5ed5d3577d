-- Stored OpenAI Responses (MySQL/MariaDB), for `previous_response_id` and `GET /v1/responses/{id}`.
--
-- One row per answered `POST /v1/responses` with `store` not false. `input_items` is the whole
-- conversation the response answered (earlier turns already expanded) and `output_items` its
-- output, both JSON arrays, so one row is enough to continue the chain. MEDIUMTEXT holds the
-- 4 MiB per-response cap. Rows expire after `response_store_hours` and the total size is
-- bounded; the job `prune_responses` enforces both.
CREATE TABLE IF NOT EXISTS stored_responses (
    id VARCHAR(191) NOT NULL PRIMARY KEY,
    api_key_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    model VARCHAR(255) NOT NULL DEFAULT '',
    response_json MEDIUMTEXT NOT NULL,
    input_items MEDIUMTEXT NOT NULL,
    output_items MEDIUMTEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    KEY stored_responses_expires (expires_at),
    KEY stored_responses_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
