package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/drivertest"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestMain(m *testing.M) {
	drivertest.ServeClaimerProcess(func(_ context.Context, path string) (driver.Driver, error) {
		return sqlite.Open(path)
	})
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, path string) *sqlite.Driver {
	t.Helper()
	drv, err := sqlite.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	return drv
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		return open(t, testdb.SQLitePath(t))
	}, &drivertest.Options{
		OpenSibling: func(t *testing.T, drv driver.Driver) driver.Driver {
			return open(t, drv.(*sqlite.Driver).Path())
		},
		BeginAppTx: func(t *testing.T, drv driver.Driver) *drivertest.AppTx {
			tx, err := drv.(*sqlite.Driver).DB().BeginTx(t.Context(), nil)
			require.NoError(t, err)
			t.Cleanup(func() { tx.Rollback() })
			return &drivertest.AppTx{
				Tx:       tx,
				Commit:   func(context.Context) error { return tx.Commit() },
				Rollback: func(context.Context) error { return tx.Rollback() },
			}
		},
		OpenElsewhere: func(t *testing.T, drv driver.Driver) driver.Driver {
			return open(t, testdb.SQLitePath(t))
		},
		RecordMigration: func(t *testing.T, drv driver.Driver, version int) {
			_, err := drv.(*sqlite.Driver).DB().ExecContext(t.Context(),
				"INSERT INTO cloacina_migrations (version, name, applied_at) VALUES (?, 'from_the_future', ?)",
				version, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"))
			require.NoError(t, err)
		},
		OpenReadOnly: func(t *testing.T, drv driver.Driver) driver.Driver {
			return openReadOnly(t, drv.(*sqlite.Driver).Path())
		},
		SpawnClaimer: func(t *testing.T, drv driver.Driver, cfg drivertest.ClaimerConfig) *drivertest.ClaimerProcess {
			return drivertest.StartClaimerProcess(t, drv.(*sqlite.Driver).Path(), cfg)
		},
	})
}

func openReadOnly(t *testing.T, path string) *sqlite.Driver {
	t.Helper()
	drv, err := sqlite.OpenReadOnly(path)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	return drv
}

func TestNewChecksSettings(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	openDB := func(dsn string) *sql.DB {
		db, err := sql.Open("sqlite", dsn)
		require.NoError(t, err)
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		return db
	}

	_, err := sqlite.New(openDB("file:" + path + "?_pragma=busy_timeout(1000)"))
	require.ErrorContains(t, err, "foreign keys")
	require.ErrorContains(t, err, "sqlite.DSN")

	_, err = sqlite.New(openDB("file:" + path + "?_pragma=foreign_keys(1)"))
	require.ErrorContains(t, err, "busy_timeout")
	require.ErrorContains(t, err, "sqlite.DSN")

	db := openDB(sqlite.DSN(path))
	drv, err := sqlite.New(db)
	require.NoError(t, err)
	require.Equal(t, "sqlite", drv.Name())
	require.Equal(t, path, drv.Path())
	require.Same(t, db, drv.DB())
	require.NoError(t, drv.Migrate(t.Context()))
	require.NoError(t, drv.Close())
	require.NoError(t, db.PingContext(t.Context()), "Close leaves a database handed to New open")
}

// A database opened by the application through New shares wake-ups with
// drivers Open made on the same file.
func TestNewSharesWakeUpsWithOpen(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	opened := open(t, path)
	require.NoError(t, opened.Migrate(t.Context()))
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	appDrv, err := sqlite.New(db)
	require.NoError(t, err)

	sub, err := opened.Listen(t.Context())
	require.NoError(t, err)
	defer sub.Close()
	tx, err := appDrv.Begin(t.Context())
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(t.Context(), &driver.ChangeSet{Notify: []string{"work:wf"}}))
	require.NoError(t, tx.Commit(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got, err := sub.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, "work:wf", got)
}

// Drivers opened on one file through a symbolic link and through its own
// path (and New on a *sql.DB opened through the link, whose path SQLite
// resolves) share wake-ups, and with them the write queue: they are one
// database to SQLite.
func TestSymlinkedPathSharesWakeUps(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	direct := open(t, path)
	require.NoError(t, direct.Migrate(t.Context()))
	link := filepath.Join(t.TempDir(), "link.db")
	require.NoError(t, os.Symlink(path, link))
	viaLink := open(t, link)
	db, err := sql.Open("sqlite", sqlite.DSN(link))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	appDrv, err := sqlite.New(db)
	require.NoError(t, err)

	for _, c := range []struct {
		name     string
		from, to *sqlite.Driver
	}{
		{"link to path", viaLink, direct},
		{"path to link", direct, viaLink},
		{"New to link", appDrv, viaLink},
	} {
		sub, err := c.to.Listen(t.Context())
		require.NoError(t, err)
		tx, err := c.from.Begin(t.Context())
		require.NoError(t, err)
		require.NoError(t, tx.ChangeSetApply(t.Context(), &driver.ChangeSet{Notify: []string{"work:" + c.name}}))
		require.NoError(t, tx.Commit(t.Context()))
		// A wake-up is published at commit, so it is buffered by now.
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		got, err := sub.Wait(ctx)
		cancel()
		require.NoError(t, sub.Close())
		require.NoError(t, err, c.name)
		require.Equal(t, "work:"+c.name, got)
	}
}

// A write lock held by another process (here: a connection no Driver
// knows about) makes Begin fail with ErrTransient once the busy timeout
// runs out.
func TestBusyIsTransient(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	require.NoError(t, open(t, path).Migrate(t.Context()))
	other, err := sql.Open("sqlite", sqlite.DSN(path))
	require.NoError(t, err)
	t.Cleanup(func() { other.Close() })
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=foreign_keys(1)&_pragma=busy_timeout(1)&_txlock=immediate")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	impatient, err := sqlite.New(db)
	require.NoError(t, err)

	held, err := other.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	defer held.Rollback()
	_, err = impatient.Begin(t.Context())
	require.ErrorIs(t, err, driver.ErrTransient, "a write lock held elsewhere is worth retrying")
	require.NoError(t, held.Rollback())

	tx, err := impatient.Begin(t.Context())
	require.NoError(t, err, "the failed Begin left nothing locked")
	require.NoError(t, tx.Rollback(t.Context()))
}

// Processes that open a fresh file at once race to switch it to WAL, and
// SQLite reports busy to the losers without waiting: Open retries. (Here
// as connections of one process, which race the same way.)
func TestConcurrentOpensOfAFreshFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for round := range 100 {
		path := filepath.Join(dir, fmt.Sprintf("fresh-%d.db", round))
		errs := make(chan error, 6)
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				drv, err := sqlite.Open(path)
				if err == nil {
					err = drv.Close()
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err, "round %d", round)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	_, err := sqlite.Open("")
	require.ErrorContains(t, err, "empty database path")
	_, err = sqlite.Open(t.TempDir() + "/missing/dir/cloacina.db")
	require.ErrorContains(t, err, "create the directory first")
}

// A path is taken literally: the characters SQLite's URI filenames give a
// meaning to ("%", "?", "#") name no other file, so two such paths that
// share a prefix are two databases, for writers and readers alike.
func TestOpenPathsWithURICharacters(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for i, dir := range []string{"team#1", "team#2", "100%41", "q?x", "a%3fb"} {
		path := filepath.Join(root, dir, "cloacina.db")
		require.NoError(t, os.Mkdir(filepath.Dir(path), 0o755))
		drv := open(t, path)
		require.NoError(t, drv.Migrate(t.Context()))
		insertPipelines(t, drv, i+1)
		_, err := os.Stat(path)
		require.NoError(t, err, "Open(%q) must create that very file", path)

		ro := openReadOnly(t, path)
		require.Equal(t, i+1, countPipelines(t, ro), "%s holds the runs written to it and no others", path)
		require.NoError(t, ro.Close())
	}
	entries, err := os.ReadDir(root)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.ElementsMatch(t, []string{"team#1", "team#2", "100%41", "q?x", "a%3fb"}, names, "no file was created beside the directories")
}

// UnwrapTx accepts a transaction on the Driver's file, by whatever path it
// was opened, and refuses one on any other, however close its name.
func TestUnwrapTxChecksTheFile(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir()
	begin := func(db *sql.DB) *sql.Tx {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		t.Cleanup(func() { tx.Rollback() })
		return tx
	}
	// Pairs of names that one URI decoding apart would make one file.
	drvs := map[string]*sqlite.Driver{}
	for _, dir := range []string{"100%41", "100A", "a%3fb", "a?b"} {
		path := filepath.Join(root, dir, "cloacina.db")
		require.NoError(t, os.Mkdir(filepath.Dir(path), 0o755))
		drvs[dir] = open(t, path)
		require.NoError(t, drvs[dir].Migrate(ctx))
	}
	for dir, drv := range drvs {
		for other, o := range drvs {
			tx := begin(o.DB())
			exec, err := drv.UnwrapTx(ctx, tx)
			if other == dir {
				require.NoError(t, err, "%s: its own transaction", dir)
				require.NotNil(t, exec)
			} else {
				require.ErrorIs(t, err, driver.ErrWrongDatabase, "%s: a transaction on %s", dir, other)
				require.ErrorContains(t, err, o.Path()+", another Cloacina database; this backend's database is "+drv.Path())
			}
			require.NoError(t, tx.Rollback())
		}
	}

	// The same file through a symbolic link, by a *sql.DB of the
	// application's.
	drv := drvs["100%41"]
	link := filepath.Join(root, "link.db")
	require.NoError(t, os.Symlink(drv.Path(), link))
	db, err := sql.Open("sqlite", sqlite.DSN(link))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	tx := begin(db)
	_, err = drv.UnwrapTx(ctx, tx)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())

	// An in-memory database has no file: it is told apart from files
	// only.
	mem, err := sql.Open("sqlite", sqlite.DSN(":memory:"))
	require.NoError(t, err)
	mem.SetMaxOpenConns(1)
	t.Cleanup(func() { mem.Close() })
	memDrv, err := sqlite.New(mem)
	require.NoError(t, err)
	t.Cleanup(func() { memDrv.Close() })
	require.Empty(t, memDrv.Path())
	require.NoError(t, memDrv.Migrate(ctx))
	tx = begin(mem)
	_, err = memDrv.UnwrapTx(ctx, tx)
	require.NoError(t, err)
	_, err = drv.UnwrapTx(ctx, tx)
	require.ErrorIs(t, err, driver.ErrWrongDatabase)
	require.ErrorContains(t, err, "the transaction is on an in-memory or temporary database")
	require.NoError(t, tx.Rollback())
	tx = begin(drv.DB())
	_, err = memDrv.UnwrapTx(ctx, tx)
	require.ErrorIs(t, err, driver.ErrWrongDatabase)
	require.ErrorContains(t, err, "this backend's database is an in-memory or temporary database")
	require.NoError(t, tx.Rollback())
}

// A database file deleted, or replaced by another (a backup moved into
// its place), while a Driver has it open is refused for writing: SQLite
// would go on writing the file it opened, which no process opening the
// path sees again, so every later write would be lost.
func TestWriteToMovedFileRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		move func(t *testing.T, path string)
	}{
		{"deleted", func(t *testing.T, path string) {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				require.NoError(t, os.Remove(path+suffix))
			}
		}},
		{"replaced", func(t *testing.T, path string) {
			other := testdb.SQLitePath(t)
			drv, err := sqlite.Open(other)
			require.NoError(t, err)
			require.NoError(t, drv.Migrate(t.Context()))
			require.NoError(t, drv.Close())
			require.NoError(t, os.Rename(other, path))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := testdb.SQLitePath(t)
			drv := open(t, path)
			require.NoError(t, drv.Migrate(t.Context()))
			tx, err := drv.Begin(t.Context())
			require.NoError(t, err)
			require.NoError(t, tx.Commit(t.Context()))

			c.move(t, path)
			_, err = drv.Begin(t.Context())
			require.ErrorContains(t, err, path)
			require.ErrorContains(t, err, "deleted or replaced")
			require.NotErrorIs(t, err, driver.ErrTransient, "waiting does not bring the file back")
		})
	}
}

// A process that opens and closes many database files (one per tenant,
// say) keeps nothing for those it closed: what the Drivers of one file
// share goes with the last of them.
func TestClosedFilesAreForgotten(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for i := range 20 {
		path := filepath.Join(dir, fmt.Sprintf("tenant%d.db", i))
		drv, err := sqlite.Open(path)
		require.NoError(t, err)
		require.NoError(t, drv.Migrate(t.Context()))
		again, err := sqlite.Open(path)
		require.NoError(t, err)
		require.Equal(t, 1, sqlite.FilesUnder(dir), "two Drivers on one file share one entry")
		require.NoError(t, drv.Close())
		require.Equal(t, 1, sqlite.FilesUnder(dir), "kept while a Driver holds it")
		require.NoError(t, again.Close())
		if i%2 == 0 {
			ro, err := sqlite.OpenReadOnly(path)
			require.NoError(t, err)
			require.NoError(t, ro.Close())
		}
	}
	require.Zero(t, sqlite.FilesUnder(dir))
}

// Drivers on one file share wake-ups as long as one of them is open: one
// opened after another closed (through a link, here) still shares them
// with the one that stayed open.
func TestWakeUpsSharedUntilTheLastClose(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "shared.db")
	first, err := sqlite.Open(path)
	require.NoError(t, err)
	require.NoError(t, first.Migrate(t.Context()))
	stays := open(t, path)
	require.NoError(t, first.Close())
	link := filepath.Join(dir, "link.db")
	require.NoError(t, os.Symlink(path, link))
	later := open(t, link)
	require.Equal(t, 1, sqlite.FilesUnder(dir))

	sub, err := stays.Listen(t.Context())
	require.NoError(t, err)
	defer sub.Close()
	tx, err := later.Begin(t.Context())
	require.NoError(t, err)
	require.NoError(t, tx.ChangeSetApply(t.Context(), &driver.ChangeSet{Notify: []string{"work:wf"}}))
	require.NoError(t, tx.Commit(t.Context()))
	// A wake-up is published at commit, so it is buffered by now.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	got, err := sub.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, "work:wf", got)
}
