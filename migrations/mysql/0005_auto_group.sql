-- Auto-group (MySQL): how model sync adds a channel's new models to groups, and the regular
-- expression a group offers to the `regex` mode. MySQL has no ADD COLUMN IF NOT EXISTS, so the
-- migration runner treats "duplicate column" on an ALTER TABLE as already applied: a run
-- interrupted between the two statements can be repeated.

ALTER TABLE channels ADD COLUMN auto_group VARCHAR(16) NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN match_regex TEXT NOT NULL;
