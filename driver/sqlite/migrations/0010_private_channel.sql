-- PostgreSQL's migration 10 draws its wake-up channel's name at random;
-- SQLite wakes only the processes that open the same file, and needs
-- nothing. The empty step keeps the versions of both backends equal.
SELECT 1;
