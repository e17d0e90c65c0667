-- Conditional updates (a task or run expected in some status) must abort
-- their transaction when a row is not in that status. Counting the rows
-- on the client is too late when the writes travel with COMMIT in one
-- pipeline: the server would have committed already. This raises instead,
-- with SQLSTATE CL001, which the backend maps to driver.ErrConflict.
CREATE FUNCTION {{schema}}.cloacina_expect_rows(actual bigint, expected bigint, what text) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF actual <> expected THEN
        RAISE EXCEPTION 'cloacina: % of % % rows in their expected status', actual, expected, what
            USING ERRCODE = 'CL001';
    END IF;
    RETURN actual;
END
$$;
