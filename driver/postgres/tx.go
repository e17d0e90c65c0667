package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// txSettings is sent with BEGIN and lasts until the transaction ends.
// enable_seqscan = off makes the planner use an index wherever one serves;
// a statement that can only scan (the expired-runner sweep on its small
// table) still does, but its cost then counts the 10^10 penalty, and
// PostgreSQL would compile it with JIT at every execution (measured: 0.15
// s per sweep idle, over a second under load, holding the leader lease
// while other runners' heartbeats waited on it), so JIT is off too. The
// engine's statements are all short; JIT never pays for itself on them.
const txSettings = "SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)"

// pgTx is a transaction that saves round trips: BEGIN travels with its
// first statement, and the writes of ChangeSetApply wait to travel with
// the next statement or with COMMIT. A claim or a completion so costs two
// or three round trips instead of five or six, and a transaction that ran
// nothing commits for free. Conditional updates fail on the server
// (cloacina_expect_rows), so a pipeline that reaches COMMIT after a
// conflict is aborted, never committed.
type pgTx struct {
	executor
	pool     *pgxpool.Pool
	conn     *pgxpool.Conn
	begun    bool
	done     bool
	deferred []*pgx.QueuedQuery // ChangeSetApply's writes not yet sent
	settings string             // sent with BEGIN: txSettings, and a lock wait bound if one is set
	bounded  bool               // a lock wait bound is in force
}

// LimitLockWait sets lock_timeout for the rest of the transaction: sent
// with BEGIN, in the statement of txSettings, so the bound costs no
// statement of its own. Set later, it goes with the next statement. A
// d of zero or less lifts the bound (lock_timeout 0: wait as long as it
// takes); a positive d below a millisecond is a millisecond.
func (t *pgTx) LimitLockWait(d time.Duration) {
	ms := int64(0)
	if d > 0 {
		ms = max(d.Milliseconds(), 1)
	}
	if !t.begun {
		if ms == 0 {
			t.settings = ""
		} else {
			t.settings = fmt.Sprintf("%s, set_config('lock_timeout', '%dms', true)", txSettings, ms)
		}
		t.bounded = ms > 0
		return
	}
	if !t.bounded && ms == 0 {
		return
	}
	t.bounded = ms > 0
	t.deferred = append(t.deferred, &pgx.QueuedQuery{SQL: "SELECT set_config('lock_timeout', $1, true)",
		Arguments: []any{strconv.FormatInt(ms, 10) + "ms"}})
}

// prefixed returns the statements to send before the next one: BEGIN if
// the transaction has not started, then any deferred writes. They are
// considered sent from now on.
//
// The transaction plans without sequential scans where an index serves
// (txSettings). The engine's statements all find their rows through an
// index, but a connection keeps the plan of a prepared statement, and a
// plan made while the tables are nearly empty (a new schema, until
// autovacuum first analyzes it) reads them whole: measured at 500 runs/s
// on a fresh schema, every completion scanned both the task and the run
// tables, and the step latency doubled.
func (t *pgTx) prefixed() []*pgx.QueuedQuery {
	var pre []*pgx.QueuedQuery
	if !t.begun {
		pre = append(pre, &pgx.QueuedQuery{SQL: "BEGIN"}, &pgx.QueuedQuery{SQL: cmp.Or(t.settings, txSettings)})
		t.begun = true
	}
	pre = append(pre, t.deferred...)
	t.deferred = nil
	return pre
}

// send sends the prefix and b's statements in one round trip, and returns
// the results of b's statements after checking the prefix's.
func (t *pgTx) send(ctx context.Context, b *pgx.Batch) (pgx.BatchResults, error) {
	pre := t.prefixed()
	if len(pre) == 0 {
		return t.conn.SendBatch(ctx, b), nil
	}
	nb := &pgx.Batch{QueuedQueries: append(pre, b.QueuedQueries...)}
	br := t.conn.SendBatch(ctx, nb)
	for range pre {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (t *pgTx) pending() bool { return !t.begun || len(t.deferred) > 0 }

func (t *pgTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !t.pending() {
		return t.conn.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br, err := t.send(ctx, b)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	return tag, errors.Join(err, br.Close())
}

func (t *pgTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !t.pending() {
		return t.conn.Query(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br, err := t.send(ctx, b)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (t *pgTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !t.pending() {
		return t.conn.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	return &firstRow{rows: rows, err: err}
}

func (t *pgTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	br, err := t.send(ctx, b)
	if err != nil {
		return &failedBatch{err: err}
	}
	return br
}

// deferBatch holds writes until the next statement or Commit.
func (t *pgTx) deferBatch(b *pgx.Batch) {
	t.deferred = append(t.deferred, b.QueuedQueries...)
}

func (t *pgTx) Commit(ctx context.Context) error {
	if t.done {
		return errors.New("postgres: transaction already committed or rolled back")
	}
	t.done = true
	released := false
	release := func() {
		if !released {
			released = true
			t.release()
		}
	}
	defer release()
	if !t.begun && len(t.deferred) == 0 {
		return nil // nothing was read or written
	}
	pid := t.conn.Conn().PgConn().PID()
	b := &pgx.Batch{}
	b.Queue("COMMIT")
	br, err := t.send(ctx, b)
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		err = errors.Join(err, br.Close())
		if err == nil && tag.String() != "COMMIT" {
			err = fmt.Errorf("transaction rolled back (%s)", tag)
		}
	}
	if err != nil {
		// A failed statement leaves the transaction open and aborted; a
		// lost connection is closed by the pool on release.
		if !t.conn.Conn().IsClosed() {
			t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		} else {
			// The connection is gone (lost, or closed because ctx ended
			// mid-commit): the server may still be committing. Return once
			// its session has ended, so that whoever looks next (a claim's
			// verification, say) sees the final outcome.
			release()
			t.awaitSessionEnd(ctx, pid)
		}
		return fmt.Errorf("postgres: commit: %w", mapError(err))
	}
	return nil
}

// sessionEndWait bounds how long a failed commit waits for its server
// session to end.
const sessionEndWait = 10 * time.Second

// awaitSessionEnd waits until the server session pid has ended, for up to
// sessionEndWait whatever ctx says. Behind a pooler the pid is not a
// server's, and nothing is found to wait for.
func (t *pgTx) awaitSessionEnd(ctx context.Context, pid uint32) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sessionEndWait)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var alive bool
		if err := t.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1)", int64(pid)).Scan(&alive); err != nil || !alive {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (t *pgTx) Rollback(ctx context.Context) error {
	if t.done {
		return nil
	}
	t.done = true
	defer t.release()
	if !t.begun || t.conn.Conn().IsClosed() {
		return nil
	}
	if _, err := t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); err != nil {
		return fmt.Errorf("postgres: rollback: %w", mapError(err))
	}
	return nil
}

// release returns the transaction's connection to the pool, or closes it
// when its session is read-only (see sessionReadOnly): a session opened
// on a standby during a failover, or while the database or role had
// default_transaction_read_only set, stays read-only for its life, and
// the pool would hand it out again, every write on it refused, long after
// the database took writes again. The pool opens a new session instead.
func (t *pgTx) release() {
	if c := t.conn.Conn(); !c.IsClosed() && sessionReadOnly(c.PgConn()) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c.Close(ctx)
		cancel()
	}
	t.conn.Release()
}

// sessionReadOnly reports whether the server said (PostgreSQL 14 and
// later report both settings to the client) that the session refuses
// writes: a hot standby, or default_transaction_read_only on.
func sessionReadOnly(c *pgconn.PgConn) bool {
	return c.ParameterStatus("in_hot_standby") == "on" || c.ParameterStatus("default_transaction_read_only") == "on"
}

// batchRows closes the batch its rows came from.
type batchRows struct {
	pgx.Rows
	br pgx.BatchResults
}

func (r *batchRows) Close() {
	r.Rows.Close()
	r.br.Close()
}

// firstRow is a pgx.Row over the first row of rows.
type firstRow struct {
	rows pgx.Rows
	err  error
}

func (r *firstRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

// failedBatch reports the error of a batch whose prefix failed.
type failedBatch struct{ err error }

func (f *failedBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, f.err }
func (f *failedBatch) Query() (pgx.Rows, error)         { return nil, f.err }
func (f *failedBatch) QueryRow() pgx.Row                { return &firstRow{err: f.err} }
func (f *failedBatch) Close() error                     { return f.err }
func (f *failedBatch) Tx() pgx.Tx                       { return nil }
