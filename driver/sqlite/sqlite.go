// Package sqlite is the embedded SQLite backend of Cloacina, built on the
// pure-Go driver modernc.org/sqlite.
//
// Every connection runs with WAL journaling, a busy timeout and foreign keys
// on (the pragmas are part of the DSN, so each new connection gets them).
// Writes go through a single writer connection whose transactions begin
// IMMEDIATE, which takes the database write lock up front: transactions of
// one process queue on that connection, and those of other processes wait
// on the busy timeout instead of failing halfway. Reads use a separate pool.
// The writer keeps the statements of the engine's hot path prepared from
// one transaction to the next (see stmts.go).
//
// Every Driver of one process on the same file (Open it twice, by one path
// or through a symbolic link, or Open and New) shares one in-process write
// queue and one wake-up hub. Writers of
// the process queue in order instead of polling through SQLite's busy
// handler, which favours whoever released the lock last and can starve a
// waiter until its busy timeout expires.
//
// A Driver whose database file is deleted, or replaced by another file
// (a backup moved into its place), while it has the file open refuses to
// write from then on, rather than go on writing a file that no process
// opening the path will see: open the database again.
//
// [OpenReadOnly] opens a database for reading only, without changing its
// journal mode or creating any file.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloacina-go/cloacina/driver"

	msqlite "modernc.org/sqlite" // also registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
)

// BusyTimeout is how long a connection waits for another process's write
// lock before SQLite reports busy.
const BusyTimeout = 10 * time.Second

// DSN returns the data source name Cloacina opens path with: WAL, busy
// timeout, foreign keys, synchronous=NORMAL and IMMEDIATE transactions. Use
// it when you open the *sql.DB you hand to [New] yourself.
func DSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return fileURI(path) + "?" + q.Encode()
}

// uriEscaper escapes what SQLite's URI filenames would read otherwise: a
// "%" starts an escape, "?" the parameters and "#" a fragment, so a path
// holding one of them would name another file (see
// https://www.sqlite.org/uri.html).
var uriEscaper = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// fileURI is the SQLite URI filename of path, which is taken literally.
func fileURI(path string) string { return "file:" + uriEscaper.Replace(path) }

// Driver is the SQLite backend. It is safe for concurrent use.
type Driver struct {
	writer *sql.DB     // nil when read-only
	reader *sql.DB     // nil when read-only
	stmts  *stmtCache  // the writer's hot statements; nil when read-only
	ro     *readRouter // set by OpenReadOnly
	owned  bool        // Close closes the pools
	file   *file       // shared by every Driver of this process on the same file
	path   string      // absolute path, or "" for a database handed to New
	opened os.FileInfo // the file at path when the Driver opened it; nil when unknown
	// released gives the Driver's share of file back, once (see Close).
	released sync.Once
}

// Open opens (creating if missing) the SQLite database file at path with
// the pragmas of [DSN]: one writer connection and a small reader pool. A
// file this process may not write (a read-only file system, no write
// permission on the file or its directory) is an error that says so; open
// such a file with [OpenReadOnly].
func Open(path string) (*Driver, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path: give a file path such as sqlite://cloacina.db")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: resolve path %q: %w", path, err)
	}
	if dir := filepath.Dir(abs); dir != "" {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("sqlite: directory of database file %q: %w (create the directory first)", abs, err)
		}
	}
	if info, err := os.Stat(abs); err == nil && info.IsDir() {
		// SQLite would only say "unable to open database file".
		return nil, fmt.Errorf("sqlite: database %s is a directory: give the path of a database file", abs)
	}
	if err := checkWritable(abs); err != nil {
		return nil, err
	}
	writer, err := sql.Open("sqlite", DSN(abs))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxIdleTime(0)
	writer.SetConnMaxLifetime(0)
	reader, err := sql.Open("sqlite", DSN(abs)+"&_pragma=query_only(1)")
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	reader.SetMaxOpenConns(4)
	reader.SetMaxIdleConns(4)
	// Fail now, with the path in the message, rather than at first use.
	// Switching a fresh file to WAL can meet another process doing the
	// same: SQLite reports busy at once there, without its busy handler.
	if err := pingRetrying(writer); err != nil {
		writer.Close()
		reader.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w%s", abs, err, notWritable(err))
	}
	opened, _ := os.Stat(abs)
	return &Driver{writer: writer, reader: reader, stmts: newStmtCache(writer), owned: true, file: fileFor(abs), path: abs, opened: opened}, nil
}

// notWritableHint names the fix for a database this process may not
// write.
const notWritableHint = " (this process cannot write the database file, or create its -wal and -shm files in its directory: " +
	"a read-only file system, or no write permission): open it as a user who may write both, " +
	"or, to read it, open it read-only with sqlite.OpenReadOnly (cloacina's Config.ReadOnly)"

// checkWritable fails, naming the fix, when the file at path exists and
// this process may not open it for writing. SQLite would open it
// read-only instead and fail at the first write, or, on a read-only
// file system, say only that it cannot open the file.
func checkWritable(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err == nil {
		return f.Close()
	}
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return fmt.Errorf("sqlite: %w%s", err, notWritableHint) // err names the path
	}
	return nil // a missing file is created; anything else, SQLite reports
}

// notWritable is notWritableHint for an error of SQLite's that says the
// database cannot be written (its directory cannot, say), or "".
func notWritable(err error) string {
	var se *msqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_READONLY {
		return notWritableHint
	}
	return ""
}

// pingRetrying opens the first connection, retrying busy errors with
// backoff for up to BusyTimeout.
func pingRetrying(db *sql.DB) error {
	deadline := time.Now().Add(BusyTimeout)
	backoff := time.Millisecond
	for {
		err := mapError(db.Ping())
		if err == nil || !errors.Is(err, driver.ErrTransient) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// New returns a backend on a database the application already has open. It
// should have been opened with [DSN] (WAL, busy timeout, foreign keys,
// IMMEDIATE transactions); New checks what it can and fails with an error
// naming the missing setting. Close does not close db.
func New(db *sql.DB) (*Driver, error) {
	ctx := context.Background()
	var fk int
	if err := db.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return nil, fmt.Errorf("sqlite: check database: %w", mapError(err))
	}
	if fk != 1 {
		return nil, errors.New("sqlite: foreign keys are off on this database: open it with sqlite.DSN(path)")
	}
	var busy int
	if err := db.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
		return nil, fmt.Errorf("sqlite: check database: %w", mapError(err))
	}
	if busy == 0 {
		return nil, errors.New("sqlite: busy_timeout is 0 on this database, so concurrent writers fail at once: open it with sqlite.DSN(path)")
	}
	file, err := mainFile(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("sqlite: check database: %w", err)
	}
	f := newFile()
	var opened os.FileInfo
	if file != "" {
		f = fileFor(file)
		opened, _ = os.Stat(file)
	}
	return &Driver{writer: db, reader: db, stmts: newStmtCache(db), file: f, path: file, opened: opened}, nil
}

// Name returns "sqlite".
func (d *Driver) Name() string { return "sqlite" }

// Path returns the absolute path of the database file, or "" when unknown.
func (d *Driver) Path() string { return d.path }

// DB returns the writer pool, for applications that want to run their own
// statements (and transactions for ExecuteTx) on the same database. It is
// nil for a Driver opened with [OpenReadOnly], which picks its connections
// per statement.
func (d *Driver) DB() *sql.DB { return d.writer }

// ReadOnly reports whether the Driver was opened with [OpenReadOnly].
func (d *Driver) ReadOnly() bool { return d.ro != nil }

// Begin starts an IMMEDIATE write transaction on the writer connection,
// after the write transactions other Drivers of this process have begun
// on the same file. End it with Commit or Rollback: until then every
// writer of this process on the file waits. A Driver opened with
// [OpenReadOnly] returns [driver.ErrReadOnly].
func (d *Driver) Begin(ctx context.Context) (driver.Tx, error) {
	if d.ro != nil {
		return nil, readOnlyError("begin")
	}
	tx, err := d.beginWrite(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: begin: %w", err)
	}
	return &sqliteTx{executor: executor{db: tx, cache: d.stmts, tx: tx}, tx: tx, file: d.file}, nil
}

// beginWrite takes the process's write turn on the file, then the
// database write lock. The caller releases the turn with d.file.unlock
// once the transaction ends. In between, while the writer connection is
// idle, it prepares the statements earlier transactions ran unprepared.
func (d *Driver) beginWrite(ctx context.Context) (*sql.Tx, error) {
	if err := d.checkMoved(); err != nil {
		return nil, err
	}
	if err := d.file.lock(ctx); err != nil {
		return nil, err
	}
	if err := d.stmts.prepareWanted(ctx); err != nil {
		d.file.unlock()
		return nil, err
	}
	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		d.file.unlock()
		return nil, mapError(err)
	}
	return tx, nil
}

// checkMoved fails when the file at the Driver's path is no longer the
// file it opened: deleted, or another moved into its place (a backup
// restored over it, say). SQLite would go on writing the file it has open
// (it checks this only in rollback-journal mode), and no process that
// opens the path would ever see those writes.
func (d *Driver) checkMoved() error {
	if d.opened == nil {
		return nil
	}
	info, err := os.Stat(d.path)
	switch {
	case err == nil && os.SameFile(info, d.opened):
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil // the file may still be there: let SQLite find out
	}
	return fmt.Errorf("database file %s was deleted or replaced since it was opened, so writes would go to a file "+
		"no process opening the path sees: close the Driver (the runner) and open the database again", d.path)
}

// Reader returns an executor on the read pool.
func (d *Driver) Reader() driver.Executor { return &executor{db: d.reads()} }

// reads is where statements outside write transactions run.
func (d *Driver) reads() dbtx {
	if d.ro != nil {
		return d.ro
	}
	return d.reader
}

// UnwrapTx returns an executor inside the application's *sql.Tx, once
// PRAGMA database_list in tx shows that tx is on the Driver's database
// file. A transaction on any other file (another tenant's, one that is no
// Cloacina database) fails with [driver.ErrWrongDatabase]: SQLite opens
// whatever file a *sql.DB names, so the run would otherwise be written to
// that file. Of in-memory and temporary databases, which have no file, it
// can only tell that they are not a file.
func (d *Driver) UnwrapTx(ctx context.Context, tx any) (driver.Executor, error) {
	sqlTx, ok := tx.(*sql.Tx)
	if !ok || sqlTx == nil {
		return nil, fmt.Errorf("%w: the SQLite backend needs a *sql.Tx, got %T", driver.ErrWrongTxType, tx)
	}
	file, err := mainFile(ctx, sqlTx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: check the transaction's database: %w", err)
	}
	if !sameFile(file, d.path) {
		return nil, fmt.Errorf("sqlite: %w: the transaction is on %s; this backend's database is %s: "+
			"begin the transaction on the backend's database, Driver.DB() (from a runner: Runner.Driver().(*sqlite.Driver).DB())",
			driver.ErrWrongDatabase, describeFile(ctx, sqlTx, file), describePath(d.path))
	}
	return &appTxExecutor{executor{db: sqlTx}}, nil
}

// appTxExecutor runs inside an application's transaction (UnwrapTx). Its
// ChangeSetApply writes under a savepoint and takes every write back when
// one fails: SQLite leaves a transaction usable after a failed statement,
// so an application that commits all the same would otherwise commit the
// first half of a change set (a run without its tasks).
type appTxExecutor struct{ executor }

func (e *appTxExecutor) ChangeSetApply(ctx context.Context, c *driver.ChangeSet) error {
	if _, err := e.db.ExecContext(ctx, "SAVEPOINT cloacina_apply"); err != nil {
		return fmt.Errorf("sqlite: begin a savepoint: %w", mapError(err))
	}
	// The savepoint is ended even when ctx has (its end is what a
	// cancelled write needs).
	end := context.WithoutCancel(ctx)
	if err := e.executor.ChangeSetApply(ctx, c); err != nil {
		if _, rerr := e.db.ExecContext(end, "ROLLBACK TO cloacina_apply"); rerr != nil {
			return errors.Join(err, fmt.Errorf("sqlite: roll back to the savepoint: %w", mapError(rerr)))
		}
		if _, rerr := e.db.ExecContext(end, "RELEASE cloacina_apply"); rerr != nil {
			return errors.Join(err, fmt.Errorf("sqlite: release the savepoint: %w", mapError(rerr)))
		}
		return err
	}
	if _, err := e.db.ExecContext(end, "RELEASE cloacina_apply"); err != nil {
		return fmt.Errorf("sqlite: release the savepoint: %w", mapError(err))
	}
	return nil
}

// mainFile returns the path of the main database file of q's connection,
// as SQLite resolved it: absolute, its URI escapes decoded. It is "" for
// an in-memory or temporary database.
func mainFile(ctx context.Context, q dbtx) (string, error) {
	var file string
	err := q.QueryRowContext(ctx, "SELECT file FROM pragma_database_list WHERE name = 'main'").Scan(&file)
	return file, mapError(err)
}

// sameFile reports whether the database paths a and b name one file: the
// same path, or two paths (through a symbolic or hard link, or a case
// the file system ignores) of one file. Two databases without a file
// ("") cannot be told apart, so they count as the same.
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	if a == "" || b == "" {
		return false
	}
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

// describeFile names the main database file of tx for an error, saying
// whether it is a Cloacina database.
func describeFile(ctx context.Context, tx *sql.Tx, file string) string {
	if file == "" {
		return describePath(file)
	}
	var migrated bool
	err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cloacina_migrations')").Scan(&migrated)
	switch {
	case err != nil:
		return file
	case migrated:
		return file + ", another Cloacina database"
	}
	return file + ", which is not a Cloacina database"
}

// describePath names a database path for an error.
func describePath(file string) string {
	if file == "" {
		return "an in-memory or temporary database"
	}
	return file
}

// Listen subscribes to wake-ups committed by any Driver of this process on
// the same database file. Other processes are found by polling.
func (d *Driver) Listen(ctx context.Context) (driver.Subscription, error) {
	return d.file.hub.subscribe(), nil
}

// Close closes the statements the Driver prepared and the connections
// Open made; a database handed to New is left open. What the Drivers of
// this process share on the file (its write queue and wake-up hub) goes
// with the last of them to close.
func (d *Driver) Close() error {
	d.released.Do(func() { releaseFile(d.file) })
	var err error
	if d.stmts != nil {
		err = d.stmts.close()
	}
	switch {
	case !d.owned:
		return err
	case d.ro != nil:
		return d.ro.close()
	}
	return errors.Join(err, d.reader.Close(), d.writer.Close())
}

type sqliteTx struct {
	executor
	tx      *sql.Tx
	file    *file
	notify  []string
	settled bool
}

func (t *sqliteTx) ChangeSetApply(ctx context.Context, c *driver.ChangeSet) error {
	if err := t.executor.ChangeSetApply(ctx, c); err != nil {
		return err
	}
	t.notify = append(t.notify, c.Notify...)
	return nil
}

func (t *sqliteTx) Commit(ctx context.Context) error {
	if t.settled {
		return errors.New("sqlite: transaction already committed or rolled back")
	}
	t.settled = true
	defer t.file.unlock()
	if err := t.tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", mapError(err))
	}
	t.file.hub.publish(t.notify)
	return nil
}

// LimitLockWait does nothing: the write transaction holds the whole
// database, so its statements never wait for a row another holds.
func (t *sqliteTx) LimitLockWait(time.Duration) {}

func (t *sqliteTx) Rollback(ctx context.Context) error {
	if t.settled {
		return nil
	}
	t.settled = true
	defer t.file.unlock()
	if err := t.tx.Rollback(); err != nil && !errors.Is(err, sql.ErrTxDone) {
		return fmt.Errorf("sqlite: rollback: %w", mapError(err))
	}
	return nil
}

// mapError maps SQLite errors onto the driver's sentinels. It is the one
// place that knows SQLite's error codes.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: %w", driver.ErrNotFound, err)
	}
	var se *msqlite.Error
	if errors.As(err, &se) {
		// Extended result codes keep the primary code in the low byte.
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_FULL:
			return fmt.Errorf("%w: %w", driver.ErrTransient, err)
		case sqlite3.SQLITE_TOOBIG:
			return fmt.Errorf("%w: %w", driver.ErrValueRejected, err)
		}
	}
	return err
}

// file is what every Driver of this process on one database file shares.
// It stays in files while Drivers hold it (refs), and no longer, so that a
// process that opens and closes many files (one per tenant, say) does not
// keep one for every file it ever opened.
type file struct {
	// key is its key in files ("" for a database without a file), and
	// refs the Drivers holding it; both are guarded by filesMu.
	key  string
	refs int
	// write holds a token while a Driver of this process has a write
	// transaction open on the file. Waiting senders are served in order.
	write chan struct{}
	hub   *hub
}

var (
	filesMu sync.Mutex
	files   = map[string]*file{}
)

// fileFor returns what the Drivers of this process on the database file
// at path share. The path is taken with its symbolic links resolved, as
// SQLite, which locks the file and not the path, resolves them: Drivers
// opened through a link and through the file's own path (or, with New,
// on a *sql.DB opened through either) share one write queue and one hub.
func fileFor(path string) *file {
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	filesMu.Lock()
	defer filesMu.Unlock()
	f, ok := files[path]
	if !ok {
		f = newFile()
		f.key = path
		files[path] = f
	}
	f.refs++
	return f
}

// releaseFile gives back a Driver's hold on f (from fileFor): the last
// Driver of the process on the file removes it from files, and the next
// Driver to open the file gets a new one.
func releaseFile(f *file) {
	if f == nil || f.key == "" {
		return
	}
	filesMu.Lock()
	defer filesMu.Unlock()
	if f.refs--; f.refs == 0 && files[f.key] == f {
		delete(files, f.key)
	}
}

func newFile() *file {
	return &file{write: make(chan struct{}, 1), hub: &hub{subs: map[*subscription]struct{}{}}}
}

func (f *file) lock(ctx context.Context) error {
	select {
	case f.write <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *file) unlock() { <-f.write }

// hub fans committed wake-ups out to subscribers in this process. There is
// one per database file, so runners opened separately on one file still
// wake each other without polling.
type hub struct {
	mu   sync.Mutex
	subs map[*subscription]struct{}
}

func (h *hub) subscribe() *subscription {
	s := &subscription{hub: h, ch: make(chan string, 64), done: make(chan struct{})}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

func (h *hub) publish(payloads []string) {
	if len(payloads) == 0 {
		return
	}
	seen := make(map[string]bool, len(payloads))
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range payloads {
		if seen[p] {
			continue
		}
		seen[p] = true
		for s := range h.subs {
			select {
			case s.ch <- p:
			default:
				// A full buffer already holds wake-ups the subscriber has
				// not read; dropping one loses nothing a poll won't find.
			}
		}
	}
}

type subscription struct {
	hub  *hub
	ch   chan string
	done chan struct{}
	once sync.Once
}

func (s *subscription) Wait(ctx context.Context) (string, error) {
	select {
	case p := <-s.ch:
		return p, nil
	case <-s.done:
		return "", errors.New("sqlite: subscription closed")
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (s *subscription) Close() error {
	s.once.Do(func() {
		s.hub.mu.Lock()
		delete(s.hub.subs, s)
		s.hub.mu.Unlock()
		close(s.done)
	})
	return nil
}
