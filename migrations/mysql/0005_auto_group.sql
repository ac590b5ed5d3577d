-- Auto-grouping (MySQL/MariaDB): how model sync files a channel's new models into groups, and
-- the regular expression a group uses to claim models under the `regex` rule.
--
-- MySQL commits DDL at once and has no ADD COLUMN IF NOT EXISTS, so each table gets one
-- statement; a run cut short between them is repaired by hand (the error names the column).
-- TEXT columns cannot have a literal default in MySQL, hence VARCHAR.
ALTER TABLE channels ADD COLUMN auto_group VARCHAR(16) NOT NULL DEFAULT 'none';
ALTER TABLE channel_groups ADD COLUMN match_regex VARCHAR(1024) NOT NULL DEFAULT '';
