-- Request logs in a compact row (PostgreSQL): the columns the admin API filters on, and every
-- other field in one `detail` text (a positional JSON array, see src/store/log_detail.rs).
--
-- A log row is written for every relay request, and binding and storing the 25 columns of
-- `relay_logs` cost more than the rest of the statistics together. The old rows are carried
-- over: `json_build_array` builds the same array the gateway writes, and the old attempt details
-- (JSON objects) are embedded as they are, which the reader accepts. PostgreSQL DDL runs inside
-- the migration's transaction, so a run cut short leaves the old table in place.
CREATE TABLE IF NOT EXISTS request_logs (
    id BIGINT PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    api_key_id BIGINT,
    group_name TEXT NOT NULL DEFAULT '',
    channel_id BIGINT,
    success BOOLEAN NOT NULL,
    detail TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT
);

INSERT INTO request_logs (id, time_ms, api_key_id, group_name, channel_id, success, detail, request_body, response_body)
SELECT id, time_ms, api_key_id, group_name, channel_id, success,
       json_build_array(api_key_name, channel_name, model, client_format, status_code, attempts,
                        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                        cost_micros, ttft_ms, latency_ms, CASE WHEN stream THEN 1 ELSE 0 END, error,
                        attempt_details::json)::text,
       request_body, response_body
FROM relay_logs
ON CONFLICT (id) DO NOTHING;

DROP TABLE relay_logs;
