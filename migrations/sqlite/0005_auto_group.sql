-- Auto-group (SQLite): how model sync adds a channel's new models to groups, and the regular
-- expression a group offers to the `regex` mode. The migration runs inside one transaction with
-- its schema_migrations row, so the two ALTER statements are applied together or not at all.

ALTER TABLE channels ADD COLUMN auto_group TEXT NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN match_regex TEXT NOT NULL DEFAULT '';
