-- The leader lease in terms. A lease used to be one row per name, renewed
-- and taken over in place; a holder frozen inside its heartbeat
-- transaction kept that row locked, so nobody could take the lease over
-- until PostgreSQL ended the session. Now each term is a row of its own:
-- the lease is its newest term, a taker inserts the next term (which no
-- lock on an older row can stop), and a holder renews only its own term
-- while it is still the newest. The current leader deletes older terms.
--
-- cloacina_leases stays for runners of earlier versions still running
-- during a rolling upgrade: they keep electing their leader there, and a
-- leader of each kind sweeping at once is harmless, since every reset is
-- fenced on the claim it resets. A later migration drops it.
CREATE TABLE {{schema}}.cloacina_lease_terms (
    name       text NOT NULL,
    term       bigint NOT NULL,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (name, term)
);
