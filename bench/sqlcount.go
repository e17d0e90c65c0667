package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync"
	"sync/atomic"

	msqlite "modernc.org/sqlite"
)

// countingDriverName is the database/sql driver that wraps modernc's
// SQLite driver and counts the statements its connections run. Cloacina
// accepts an application's *sql.DB (OpenDB) and River takes one too, so
// both can be measured through it without touching either library.
const countingDriverName = "sqlite_counting"

// sqliteStatements counts statements run through the counting driver:
// every Exec and Query, plus BEGIN, COMMIT and ROLLBACK.
var sqliteStatements atomic.Int64

var registerCounting sync.Once

func registerCountingDriver() {
	registerCounting.Do(func() { sql.Register(countingDriverName, countingDriver{inner: &msqlite.Driver{}}) })
}

type countingDriver struct{ inner driver.Driver }

func (d countingDriver) Open(name string) (driver.Conn, error) {
	c, err := d.inner.Open(name)
	if err != nil {
		return nil, err
	}
	return &countingConn{inner: c}, nil
}

type countingConn struct{ inner driver.Conn }

var errNoCtx = errors.New("counting driver: inner connection lacks a context method")

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	s, err := c.inner.Prepare(query)
	if err != nil {
		return nil, err
	}
	return &countingStmt{inner: s}, nil
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	pc, ok := c.inner.(driver.ConnPrepareContext)
	if !ok {
		return c.Prepare(query)
	}
	s, err := pc.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return &countingStmt{inner: s}, nil
}

func (c *countingConn) Close() error { return c.inner.Close() }

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	bt, ok := c.inner.(driver.ConnBeginTx)
	if !ok {
		return nil, errNoCtx
	}
	sqliteStatements.Add(1)
	tx, err := bt.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return countingTx{inner: tx}, nil
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.inner.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	sqliteStatements.Add(1)
	return e.ExecContext(ctx, query, args)
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.inner.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	sqliteStatements.Add(1)
	return q.QueryContext(ctx, query, args)
}

func (c *countingConn) Ping(ctx context.Context) error {
	if p, ok := c.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	if ch, ok := c.inner.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

type countingTx struct{ inner driver.Tx }

func (t countingTx) Commit() error {
	sqliteStatements.Add(1)
	return t.inner.Commit()
}

func (t countingTx) Rollback() error {
	sqliteStatements.Add(1)
	return t.inner.Rollback()
}

type countingStmt struct{ inner driver.Stmt }

func (s *countingStmt) Close() error  { return s.inner.Close() }
func (s *countingStmt) NumInput() int { return s.inner.NumInput() }

func (s *countingStmt) Exec(args []driver.Value) (driver.Result, error) {
	sqliteStatements.Add(1)
	return s.inner.Exec(args) //nolint:staticcheck // required by driver.Stmt
}

func (s *countingStmt) Query(args []driver.Value) (driver.Rows, error) {
	sqliteStatements.Add(1)
	return s.inner.Query(args) //nolint:staticcheck // required by driver.Stmt
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	e, ok := s.inner.(driver.StmtExecContext)
	if !ok {
		return nil, errNoCtx
	}
	sqliteStatements.Add(1)
	return e.ExecContext(ctx, args)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := s.inner.(driver.StmtQueryContext)
	if !ok {
		return nil, errNoCtx
	}
	sqliteStatements.Add(1)
	return q.QueryContext(ctx, args)
}
