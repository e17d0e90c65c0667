-- PostgreSQL's migration 6 stores contexts and event data as json, text
-- kept as written, instead of jsonb. SQLite's TEXT columns always kept the
-- text as written, so it needs nothing. The empty step keeps the versions
-- of both backends equal.
SELECT 1;
