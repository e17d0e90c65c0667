package sqlite

import (
	"context"
	"database/sql"
	"math/bits"
	"strings"
	"sync"
)

// Statement reuse. modernc's database/sql driver parses and plans a
// statement on every Exec or Query that is not run through a prepared
// *sql.Stmt, and a profile of a burn-down put that at 8–9 % of the
// process's CPU. So the writer keeps its hot statements prepared across
// transactions, and the statements whose text would depend on a batch's
// size are written in a few fixed sizes only.
//
// A *sql.Stmt prepared on the writer pool is handed to each write
// transaction with Tx.StmtContext, which reuses the SQLite statement
// already prepared on the transaction's connection (there is one) and
// prepares it there otherwise. It cannot be prepared inside a transaction:
// DB.PrepareContext needs a free connection, and the writer's only one is
// the transaction's. So a statement missing from the cache runs unprepared
// the first time, as before, and is prepared on the pool at the next Begin,
// between taking the process's write turn and beginning the transaction,
// when the connection is idle.

// maxCachedStmts bounds the statements one Driver keeps prepared. The hot
// statements are a few dozen texts (a handful of queries times the sizes
// below); past the bound a statement runs unprepared, as it would without
// the cache.
const maxCachedStmts = 256

// stmtCache holds the statements prepared on the writer pool, by text.
type stmtCache struct {
	db     *sql.DB
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	wanted []string        // run unprepared; to prepare at the next Begin
	seen   map[string]bool // in stmts or wanted, or failed to prepare
	closed bool
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, stmts: map[string]*sql.Stmt{}, seen: map[string]bool{}}
}

// lookup returns query's prepared statement, or nil after noting that the
// next Begin should prepare it.
func (c *stmtCache) lookup(query string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.stmts[query]; ok {
		return s
	}
	if !c.closed && !c.seen[query] && len(c.seen) < maxCachedStmts {
		c.seen[query] = true
		c.wanted = append(c.wanted, query)
	}
	return nil
}

// prepareWanted prepares the statements run unprepared since the last
// call. The caller holds the process's write turn and no transaction on
// the pool, so the writer connection is free. A statement that fails to
// prepare is not tried again: it keeps running unprepared.
func (c *stmtCache) prepareWanted(ctx context.Context) error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.wanted) > 0 && !c.closed {
		q := c.wanted[0]
		s, err := c.db.PrepareContext(ctx, q)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.wanted = c.wanted[1:]
			continue
		}
		c.stmts[q] = s
		c.wanted = c.wanted[1:]
	}
	c.wanted = nil
	return nil
}

// close closes the prepared statements; later lookups find none.
func (c *stmtCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var first error
	for q, s := range c.stmts {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
		delete(c.stmts, q)
	}
	c.wanted = nil
	return first
}

// stmt returns query's cached statement bound to the executor's write
// transaction, or nil when it is not prepared yet or the executor is not a
// write transaction's. The transaction closes what it binds when it ends;
// the statement stays prepared on the connection.
func (e *executor) stmt(ctx context.Context, query string) *sql.Stmt {
	if e.cache == nil {
		return nil
	}
	s := e.cache.lookup(query)
	if s == nil {
		return nil
	}
	return e.tx.StmtContext(ctx, s)
}

// hotExec runs a statement of the hot path: prepared when the executor is
// a write transaction's and the statement is cached, as plain text
// otherwise.
func (e *executor) hotExec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if s := e.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return e.db.ExecContext(ctx, query, args...)
}

// hotQuery is hotExec for statements that return rows.
func (e *executor) hotQuery(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := e.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return e.db.QueryContext(ctx, query, args...)
}

// queryIn is hotQuery for a statement with IN lists of up to n values:
// one written at its own size, past maxInList, is not worth keeping.
func (e *executor) queryIn(ctx context.Context, n int, query string, args ...any) (*sql.Rows, error) {
	if n > maxInList {
		return e.db.QueryContext(ctx, query, args...)
	}
	return e.hotQuery(ctx, query, args...)
}

// Fixed sizes. An IN list of n values is written with inSize(n)
// placeholders, the values followed by NULLs: NULL is in no list, so the
// padding changes neither the rows a statement matches nor the rows it
// returns or counts. A multi-row INSERT is split into chunks whose sizes
// are powers of two, largest first, so the rows keep their order. Both
// stay far below SQLite's limit of 32766 bound variables
// (SQLITE_MAX_VARIABLE_NUMBER in modernc.org/sqlite/lib).

// maxInList is the longest IN list padded to a fixed size. A longer list
// is written at its own size, unprepared: the engine's batches are far
// smaller.
const maxInList = 1024

// maxInsertRows is the most rows one multi-row INSERT writes: 512 task rows
// of 15 columns bind 7,680 variables.
const maxInsertRows = 512

// inSize is the number of placeholders an IN list of n values is written
// with: n rounded up to a power of two, or n itself beyond maxInList.
func inSize(n int) int {
	if n <= 1 || n > maxInList {
		return n
	}
	return 1 << bits.Len(uint(n-1))
}

// inList returns the placeholders of an IN list of n values; padIn pads
// its arguments.
func inList(n int) string { return placeholders(inSize(n)) }

// padIn appends the NULLs that pad an IN list of n values, which args
// ends with, to inSize(n).
func padIn(args []any, n int) []any {
	for range inSize(n) - n {
		args = append(args, nil)
	}
	return args
}

// insertChunk is how many of n rows (n > 0) the next INSERT writes: the
// largest power of two not over n or maxInsertRows.
func insertChunk(n int) int {
	if n >= maxInsertRows {
		return maxInsertRows
	}
	return 1 << (bits.Len(uint(n)) - 1)
}

// valuesRows returns head followed by n rows of cols placeholders.
func valuesRows(head string, cols, n int) string {
	row := "(" + placeholders(cols) + ")"
	var sb strings.Builder
	sb.Grow(len(head) + n*(len(row)+1))
	sb.WriteString(head)
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(row)
	}
	return sb.String()
}
