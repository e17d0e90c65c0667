package cloacina

import (
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// A read-only runner reads what live runners write, while they run, and
// every call that would write is refused before it touches the database.
func TestReadOnlyRunner(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("ro", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
		writer := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		first, err := writer.Execute(ctx, "ro", nil)
		require.NoError(t, err)

		ro := openRunner(t, url, &Config{ReadOnly: true, Workflows: []*Workflow{wf}})
		got, err := ro.Get(ctx, first.ID)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, got.Status)
		require.Len(t, got.Tasks, 2)
		task, err := ro.GetTask(ctx, got.Task("b").ID)
		require.NoError(t, err)
		require.Equal(t, "{}", task.Output.String())
		events, err := ro.RunEvents(ctx, first.ID)
		require.NoError(t, err)
		require.NotEmpty(t, events)
		// Following reads PostgreSQL's snapshot, fine in a read-only
		// session; it returns what no open transaction (of any test on the
		// server) can still precede, so some of the run's events.
		followed, err := ro.Events(ctx, &EventQuery{Follow: true})
		require.NoError(t, err)
		ids := map[uuid.UUID]bool{}
		for _, e := range events {
			ids[e.ID] = true
		}
		for _, e := range followed {
			require.True(t, ids[e.ID], "followed an event that is not the run's: %+v", e)
		}
		runners, err := ro.Runners(ctx)
		require.NoError(t, err)
		require.Len(t, runners, 1, "the live writer")

		// The writer keeps running while the reader is open.
		second, err := writer.Execute(ctx, "ro", nil)
		require.NoError(t, err)
		runs, err := ro.List(ctx, nil)
		require.NoError(t, err)
		require.Len(t, runs, 2)
		require.Equal(t, second.ID, runs[0].ID)
		// Every event, those of unfinished runs too.
		everyEvent := &DeleteEventsOpts{IncludeUnfinishedRuns: true}
		before, err := ro.CountEventsBefore(ctx, time.Now().Add(time.Hour), everyEvent)
		require.NoError(t, err)

		for name, call := range map[string]func() error{
			"Start": func() error { return ro.Start(ctx) },
			"Execute": func() error {
				_, err := ro.Execute(ctx, "ro", nil)
				return err
			},
			"ExecuteAsync": func() error {
				_, err := ro.ExecuteAsync(ctx, "ro", nil)
				return err
			},
			"ExecuteTx": func() error {
				_, err := ro.ExecuteTx(ctx, nil, "ro", nil)
				return err
			},
			"Cancel": func() error { return ro.Cancel(ctx, second.ID) },
			"Pause":  func() error { return ro.Pause(ctx, second.ID) },
			"Resume": func() error { return ro.Resume(ctx, second.ID) },
			"DeleteRunsBefore": func() error {
				_, err := ro.DeleteRunsBefore(ctx, time.Now().Add(time.Hour), nil)
				return err
			},
			"PauseSchedule":  func() error { return ro.PauseSchedule(ctx, "s") },
			"ResumeSchedule": func() error { return ro.ResumeSchedule(ctx, "s") },
			"DeleteSchedule": func() error { return ro.DeleteSchedule(ctx, "s") },
			"DeleteEventsBefore": func() error {
				_, err := ro.DeleteEventsBefore(ctx, time.Now().Add(time.Hour), nil)
				return err
			},
		} {
			err := call()
			require.ErrorIs(t, err, ErrReadOnly, name)
			require.ErrorContains(t, err, "the runner was opened with Config.ReadOnly; open one without it to change the database", name)
		}
		after, err := ro.CountEventsBefore(ctx, time.Now().Add(time.Hour), everyEvent)
		require.NoError(t, err)
		require.Equal(t, before, after, "a refused call wrote events")
		require.NoError(t, ro.Close())
		require.NoError(t, ro.Close())
	})
}

// A read-only runner never creates or migrates a database: one that is
// missing or behind the code is an error naming the fix, and stays as it
// was; one ahead of the code is refused as always.
func TestReadOnlyNeverMigrates(t *testing.T) {
	t.Parallel()
	ro := &Config{ReadOnly: true, Logger: quietLogger()}
	t.Run("missing sqlite file", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		_, err := Open(testContext(t), "sqlite://"+path, ro)
		require.ErrorContains(t, err, "no database at "+path)
		require.NoFileExists(t, path)
	})
	t.Run("unmigrated sqlite file", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		db := openRawSQLite(t, path)
		_, err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
		require.NoError(t, err)
		require.NoError(t, db.Close())
		before, err := os.ReadFile(path)
		require.NoError(t, err)
		_, err = Open(testContext(t), "sqlite://"+path, ro)
		require.ErrorIs(t, err, ErrSchemaOutdated)
		require.ErrorContains(t, err, "run `cloacina migrate` (with write access) first")
		after, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, before, after)
	})
	t.Run("missing postgres schema", func(t *testing.T) {
		t.Parallel()
		schema := testdb.NewSchema(t)
		_, err := Open(testContext(t), testdb.WithSchema(testdb.PostgresURL(), schema), ro)
		require.ErrorIs(t, err, ErrSchemaOutdated)
		// Opened for writing, it would be created and migrated.
		r := openRunner(t, testdb.WithSchema(testdb.PostgresURL(), schema), nil)
		require.NoError(t, r.Close())
	})
	t.Run("read-only backend without Config.ReadOnly", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		path := testdb.SQLitePath(t)
		_, err := Migrate(ctx, "sqlite://"+path, "")
		require.NoError(t, err)
		drv, err := sqlite.OpenReadOnly(path)
		require.NoError(t, err)
		defer drv.Close()
		_, err = NewRunner(ctx, drv, nil)
		require.ErrorIs(t, err, ErrReadOnly)
		require.ErrorContains(t, err, "the backend was opened read-only: set Config.ReadOnly")
		r, err := NewRunner(ctx, drv, &Config{ReadOnly: true})
		require.NoError(t, err)
		require.NoError(t, r.Close())
	})
	t.Run("sqlite schema too new", func(t *testing.T) {
		t.Parallel()
		ctx := testContext(t)
		path := testdb.SQLitePath(t)
		_, err := Migrate(ctx, "sqlite://"+path, "")
		require.NoError(t, err)
		db := openRawSQLite(t, path)
		_, err = db.ExecContext(ctx, "INSERT INTO cloacina_migrations (version, name, applied_at) VALUES (999, 'future', 'x')")
		require.NoError(t, err)
		_, err = Open(ctx, "sqlite://"+path, ro)
		require.ErrorIs(t, err, ErrSchemaTooNew)
		require.ErrorContains(t, err, "upgrade cloacina")
	})
}
