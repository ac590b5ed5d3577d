-- Auto-grouping (PostgreSQL): how model sync files a channel's new models into groups, and the
-- regular expression a group uses to claim models under the `regex` rule.
ALTER TABLE channels ADD COLUMN IF NOT EXISTS auto_group TEXT NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN IF NOT EXISTS match_regex TEXT NOT NULL DEFAULT '';
