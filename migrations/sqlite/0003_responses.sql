-- Stored OpenAI Responses (SQLite), for `previous_response_id` and `GET /v1/responses/{id}`.
--
-- One row per answered `POST /v1/responses` with `store` not false. `input_items` is the whole
-- conversation the response answered (earlier turns already expanded) and `output_items` its
-- output, both JSON arrays, so one row is enough to continue the chain. Rows expire after
-- `response_store_hours` and the total size is bounded; the job `prune_responses` enforces both.
CREATE TABLE IF NOT EXISTS stored_responses (
    id TEXT PRIMARY KEY,
    api_key_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    response_json TEXT NOT NULL,
    input_items TEXT NOT NULL,
    output_items TEXT NOT NULL,
    size_bytes INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS stored_responses_expires ON stored_responses (expires_at);
CREATE INDEX IF NOT EXISTS stored_responses_created ON stored_responses (created_at);
