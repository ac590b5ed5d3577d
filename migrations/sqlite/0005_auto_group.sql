-- Auto-grouping (SQLite): how model sync files a channel's new models into groups, and the
-- regular expression a group uses to claim models under the `regex` rule.
--
-- SQLite has no ADD COLUMN IF NOT EXISTS, but its DDL runs inside the migration's transaction,
-- so a run cut short leaves nothing behind to trip over on the next start.
ALTER TABLE channels ADD COLUMN auto_group TEXT NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN match_regex TEXT NOT NULL DEFAULT '';
