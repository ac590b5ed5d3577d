-- Auto-group (PostgreSQL): how model sync adds a channel's new models to groups, and the regular
-- expression a group offers to the `regex` mode.

ALTER TABLE channels ADD COLUMN IF NOT EXISTS auto_group TEXT NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN IF NOT EXISTS match_regex TEXT NOT NULL DEFAULT '';
