-- Wake-ups (NOTIFY) go out on a channel whose name is drawn at random here,
-- so that only roles that may read this schema know it. PostgreSQL's
-- channels belong to the whole database and need no privilege: a channel
-- named after the schema let any role of the database (another tenant's)
-- hear this schema's wake-ups, which name workflows and cancelled runs,
-- and send it false ones.
CREATE TABLE {{schema}}.cloacina_channel (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    name     text NOT NULL
);
INSERT INTO {{schema}}.cloacina_channel (name)
VALUES ('cloacina_' || replace(gen_random_uuid()::text, '-', ''));
