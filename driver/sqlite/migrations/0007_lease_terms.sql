-- The leader lease in terms, the same shape as PostgreSQL's migration 6:
-- one row per term, the newest term is the lease. (SQLite serialises its
-- writers, so a frozen holder stops every writer anyway; the shape is
-- shared so that both backends behave alike.) cloacina_leases stays for
-- runners of earlier versions during a rolling upgrade.
CREATE TABLE cloacina_lease_terms (
    name       TEXT NOT NULL,
    term       INTEGER NOT NULL,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (name, term)
);
