package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"

	"github.com/cloacina-go/cloacina/driver"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// OpenReadOnly opens the existing SQLite database at path for reading
// only: for tools and dashboards that inspect a database they must not
// change, such as another user's file, a file on a read-only mount or a
// backup.
//
// It never creates, migrates or writes anything. A missing, empty or
// non-SQLite file is an error. Every connection is opened read-only
// (mode=ro) with query_only on, so a write fails; the journal mode is
// left as it is; Begin and Migrate return [driver.ErrReadOnly]. Check the
// schema with MigrationVersion.
//
// A database in WAL mode is read through its -wal and -shm files, which
// SQLite creates when they are missing, even for a read-only connection
// (and where it may not, as in a read-only directory, it cannot read the
// database at all). So a read-only Driver chooses for every statement:
//
//   - When both files exist (some process has the database open, or one
//     that crashed left them), the statement reads through them like any
//     reader and sees everything writers have committed. Nothing is
//     created; SQLite may update the -shm index, which holds no data.
//     While such a connection is open, the last writer to close leaves
//     the two files in place instead of deleting them; the next writer
//     uses them.
//   - When they do not, everything committed is in the database file
//     itself. The statement reads it as immutable, on a connection of its
//     own, so no file is created and each statement sees the file as it is
//     when the statement starts. SQLite takes no lock on an immutable file:
//     should a writer start during the statement and copy its log into the
//     file before the statement ends, the statement can fail or read a mix
//     of old and new pages; run it again.
//   - A -wal file with data in it and no -shm (a copy that left the -shm
//     behind) cannot be read without creating the -shm: OpenReadOnly
//     refuses it and says what to do.
//
// A database in rollback-journal mode (such as a backup made with VACUUM
// INTO) is read with SQLite's ordinary shared locks and creates nothing.
// A database a crashed writer left an unfinished transaction in (a hot
// -journal) needs a writer to roll it back first: OpenReadOnly says so.
func OpenReadOnly(path string) (*Driver, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path: give a file path such as sqlite://cloacina.db")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: resolve path %q: %w", path, err)
	}
	if err := checkReadable(abs); err != nil {
		return nil, err
	}
	live, err := sql.Open("sqlite", readOnlyDSN(abs, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	live.SetMaxOpenConns(4)
	live.SetMaxIdleConns(4)
	snapshot, err := sql.Open("sqlite", readOnlyDSN(abs, true))
	if err != nil {
		live.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	snapshot.SetMaxOpenConns(4)
	// An immutable connection never looks for changes to the file, so
	// one kept for a later statement could mix cached pages with pages a
	// writer has since rewritten.
	snapshot.SetMaxIdleConns(0)
	r := &readRouter{path: abs, live: live, snapshot: snapshot}
	// Fail now, with the path in the message, rather than at first use:
	// SQLite reads the file, and its journal or log, at the first read.
	var n int
	if err := r.pool().QueryRowContext(context.Background(), "SELECT count(*) FROM sqlite_master").Scan(&n); err != nil {
		r.close()
		var se *msqlite.Error
		if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_READONLY {
			return nil, fmt.Errorf("sqlite: database %s needs recovery from an interrupted write (%v), which only a connection that may write it can do: "+
				"open it once for writing, as a user who may write the file and its directory", abs, err)
		}
		return nil, fmt.Errorf("sqlite: open %s read-only: %w", abs, mapError(err))
	}
	return &Driver{ro: r, owned: true, file: fileFor(abs), path: abs}, nil
}

// readOnlyDSN is the data source name of a read-only connection: no
// journal mode, no IMMEDIATE transactions, query_only on. An immutable
// connection takes no locks and never opens -wal or -shm files.
func readOnlyDSN(path string, immutable bool) string {
	q := url.Values{}
	q.Set("mode", "ro")
	if immutable {
		q.Set("immutable", "1")
	} else {
		q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", BusyTimeout.Milliseconds()))
	}
	q.Add("_pragma", "query_only(1)")
	return fileURI(path) + "?" + q.Encode()
}

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// checkReadable fails, naming the fix, when the file at path is not a
// database a read-only connection can read without creating a file.
func checkReadable(path string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("sqlite: no database at %s: check the path (a read-only open never creates the file)", path)
	case err != nil:
		return fmt.Errorf("sqlite: database %s: %w", path, err)
	case info.IsDir():
		return fmt.Errorf("sqlite: database %s is a directory: give the path of a database file", path)
	case info.Size() == 0:
		return fmt.Errorf("sqlite: database %s is an empty file: migrate it before reading it (a read-only open never writes)", path)
	}
	header, err := readHeader(path)
	if err != nil {
		return fmt.Errorf("sqlite: database %s: %w", path, err)
	}
	if !bytes.HasPrefix(header, sqliteHeader) {
		return fmt.Errorf("sqlite: %s is not a SQLite database: check the path", path)
	}
	wal, err := os.Stat(path + "-wal")
	if err != nil || wal.Size() == 0 {
		return nil
	}
	if _, err := os.Stat(path + "-shm"); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("sqlite: database %s has a write-ahead log (%s-wal) but no %s-shm, and SQLite can read the log only by creating that file: "+
			"copy the -shm file along with the other two, or checkpoint the database by opening it for writing once", path, path, path)
	}
	return nil
}

// readHeader returns the first 100 bytes of a database file (fewer if the
// file is shorter).
func readHeader(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	header := make([]byte, 100)
	n, err := io.ReadFull(f, header)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return header[:n], nil
}

// readRouter runs each statement of a read-only Driver on the pool the
// database's current state calls for (see OpenReadOnly).
type readRouter struct {
	path     string
	live     *sql.DB // mode=ro: reads through -wal and -shm, or with rollback-journal locks
	snapshot *sql.DB // mode=ro, immutable: reads the database file alone
}

// pool returns the pool for the next statement.
func (r *readRouter) pool() *sql.DB {
	wal, err := os.Stat(r.path + "-wal")
	if err == nil {
		// OpenReadOnly refused a log with data and no -shm; should the
		// -shm vanish later, reading the log still beats ignoring it.
		if _, err := os.Stat(r.path + "-shm"); err == nil || wal.Size() > 0 {
			return r.live
		}
	}
	if header, err := readHeader(r.path); err == nil && len(header) > 19 && header[19] == 2 {
		// WAL mode (read version 2) without its files: a connection that
		// is not immutable would create them.
		return r.snapshot
	}
	return r.live
}

func (r *readRouter) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return r.pool().ExecContext(ctx, query, args...)
}

func (r *readRouter) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return r.pool().QueryContext(ctx, query, args...)
}

func (r *readRouter) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return r.pool().QueryRowContext(ctx, query, args...)
}

func (r *readRouter) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return r.pool().PrepareContext(ctx, query)
}

func (r *readRouter) close() error {
	return errors.Join(r.live.Close(), r.snapshot.Close())
}

// readOnlyError is the error of a write through a Driver opened with
// OpenReadOnly.
func readOnlyError(op string) error {
	return fmt.Errorf("sqlite: %s: %w: it was opened with OpenReadOnly; open it with Open to write", op, driver.ErrReadOnly)
}
