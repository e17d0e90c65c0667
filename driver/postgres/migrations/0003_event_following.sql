-- Following the event log without skipping events.
--
-- A sequence number is taken when an event is inserted, not when its
-- transaction commits, so a transaction can commit events numbered after
-- those of a transaction that is still open. A reader following the log by
-- sequence number (EventListParams.AfterSeq) would move past the open
-- transaction's events and never see them.
--
-- tx_id is the transaction that wrote the event. Once tx_id is below the
-- xmin of a reader's snapshot, that transaction has ended, and so has
-- every transaction with a smaller id: no event can still appear with a
-- smaller tx_id. Following therefore reads in (tx_id, sequence_num) order
-- and stops below the snapshot's xmin; the index serves that order.
--
-- Holding back by tx_id alone while reading in sequence order is not
-- enough: a transaction that took its id early (say, by locking a
-- pipeline) and its sequence number late can commit a number larger than
-- that of a transaction with a larger id that is still open.
--
-- Existing rows were committed before this migration could lock the
-- table: they take tx_id 0 and come first, in sequence order.

ALTER TABLE {{schema}}.execution_events ADD COLUMN tx_id xid8 NOT NULL DEFAULT '0';
ALTER TABLE {{schema}}.execution_events ALTER COLUMN tx_id SET DEFAULT pg_current_xact_id();
CREATE INDEX execution_events_follow_idx ON {{schema}}.execution_events (tx_id, sequence_num);
