-- PostgreSQL's migration 5 adds a function that aborts a transaction when a
-- conditional update misses; SQLite checks each update as it runs, so it
-- needs nothing. The empty step keeps the versions of both backends equal.
SELECT 1;
