-- Contexts and event data as the text the engine wrote.
--
-- jsonb parses its input to a binary form and prints it back normalised:
-- nested keys reordered (shorter first), duplicate keys dropped, spacing
-- rewritten ({"a": 1}), numbers reformatted (1e2 becomes 100), escapes
-- decoded ("\u00e9" becomes "é"). SQLite keeps the text as written, so the
-- same run read back different bytes on each backend, and Get[int] of 1e2
-- worked on one only. json keeps the text verbatim (it only checks that it
-- is valid JSON), so both backends now return what the engine wrote.
--
-- Nothing in the engine needs jsonb: merges, trigger-rule conditions and
-- decoding happen in Go, and no statement uses a jsonb operator or index
-- on these columns. Writes get cheaper too: json does not build the
-- binary form on every insert, nor print it again on every read.
--
-- Rows written before this migration keep jsonb's rendering of their
-- text, which is the same JSON value; the original text is gone. Changing
-- a column's type rewrites its table under an exclusive lock: on a large
-- event log, delete old events with the release still installed
-- (cloacina events cleanup --older-than AGE) before upgrading, or upgrade
-- in a quiet moment.

ALTER TABLE {{schema}}.pipeline_executions
    ALTER COLUMN input TYPE json USING input::json,
    ALTER COLUMN output TYPE json USING output::json;
ALTER TABLE {{schema}}.task_executions
    ALTER COLUMN input TYPE json USING input::json,
    ALTER COLUMN output TYPE json USING output::json;
ALTER TABLE {{schema}}.execution_events
    ALTER COLUMN event_data TYPE json USING event_data::json;
