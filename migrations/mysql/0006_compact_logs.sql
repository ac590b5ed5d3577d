-- Request logs in a compact row (MySQL/MariaDB): the columns the admin API filters on, and every
-- other field in one `detail` text (a positional JSON array, see src/store/log_detail.rs).
--
-- A log row is written for every relay request, and binding and storing the 25 columns of
-- `relay_logs` cost more than the rest of the statistics together. The old rows are carried
-- over: `JSON_ARRAY` builds the same array the gateway writes, and the old attempt details
-- (JSON objects) are embedded as they are, which the reader accepts.
--
-- MySQL commits DDL at once, so every statement here is safe to repeat after a run cut short:
-- rows already copied are ignored, and a copy whose source table is gone (dropped by the earlier
-- run after copying) is skipped by the backend.
CREATE TABLE IF NOT EXISTS request_logs (
    id BIGINT NOT NULL PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    api_key_id BIGINT NULL,
    group_name VARCHAR(191) NOT NULL DEFAULT '',
    channel_id BIGINT NULL,
    success BOOLEAN NOT NULL,
    detail MEDIUMTEXT NOT NULL,
    request_body MEDIUMTEXT NULL,
    response_body MEDIUMTEXT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO request_logs (id, time_ms, api_key_id, group_name, channel_id, success, detail, request_body, response_body)
SELECT id, time_ms, api_key_id, group_name, channel_id, success,
       JSON_ARRAY(api_key_name, channel_name, model, client_format, status_code, attempts,
                  input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
                  cost_micros, ttft_ms, latency_ms, IF(stream, 1, 0), error,
                  JSON_EXTRACT(attempt_details, '$')),
       request_body, response_body
FROM relay_logs;

DROP TABLE IF EXISTS relay_logs;
