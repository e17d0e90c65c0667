package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result is what one invocation of the CLI produced.
type result struct {
	code   int
	stdout string
	stderr string
}

// cli runs the command line args with an empty environment.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	return cliEnv(t, nil, args...)
}

// cliEnv runs the command line args with env as the environment.
func cliEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(t.Context(), args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// eachBackend runs fn as a parallel subtest per backend, each with a
// database URL of its own.
func eachBackend(t *testing.T, fn func(t *testing.T, url string)) {
	t.Helper()
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			fn(t, b.URL(t))
		})
	}
}

// ok runs args against url and requires success with a silent stderr.
func ok(t *testing.T, url string, args ...string) string {
	t.Helper()
	res := cli(t, append([]string{"--database-url", url}, args...)...)
	require.Equal(t, ExitOK, res.code, "cloacina %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), res.stdout, res.stderr)
	require.Empty(t, res.stderr)
	return res.stdout
}

// requireOneLineError checks the shape every failure must have: the exit
// status, nothing on stdout, and exactly one "cloacina: " line on stderr
// that contains want.
func requireOneLineError(t *testing.T, res result, code int, want string) {
	t.Helper()
	require.Equal(t, code, res.code, "stdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
	require.Empty(t, res.stdout)
	require.True(t, strings.HasPrefix(res.stderr, "cloacina: "), "stderr: %q", res.stderr)
	require.True(t, strings.HasSuffix(res.stderr, "\n"), "stderr: %q", res.stderr)
	require.Equal(t, 1, strings.Count(res.stderr, "\n"), "want exactly one line, got:\n%s", res.stderr)
	require.Contains(t, res.stderr, want)
}

// row is one line of a table the CLI printed, split into its cells.
type row []string

var cellSep = regexp.MustCompile(`\s{2,}`)

// parseTable splits a printed table into its header and rows. Cells are
// separated by two or more spaces; no cell the tests look at contains two
// spaces in a row.
func parseTable(t *testing.T, out string) (header row, rows []row) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.NotEmpty(t, lines)
	split := func(l string) row { return cellSep.Split(strings.TrimSpace(l), -1) }
	header = split(lines[0])
	for _, l := range lines[1:] {
		rows = append(rows, split(l))
	}
	return header, rows
}

// openRunner opens a runner on url for a test to set up or check state
// through the library, and closes it when the test ends.
func openRunner(t *testing.T, url string, workflows ...*cloacina.Workflow) *cloacina.Runner {
	t.Helper()
	r, err := cloacina.Open(t.Context(), url, &cloacina.Config{Workflows: workflows})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// listRuns returns the runs in the database, oldest first.
func listRuns(t *testing.T, url string) []*cloacina.RunSummary {
	t.Helper()
	runs, err := openRunner(t, url).List(t.Context(), nil)
	require.NoError(t, err)
	for i, j := 0, len(runs)-1; i < j; i, j = i+1, j-1 {
		runs[i], runs[j] = runs[j], runs[i]
	}
	return runs
}

// insertOldEvents appends n events of a made-up run that has no run row,
// created age ago, through the driver seam, so retention can be tested on
// both backends without waiting.
func insertOldEvents(t *testing.T, url string, n int, age time.Duration) {
	t.Helper()
	insertOldRun(t, url, "", n, age)
}

// insertOldRun is insertOldEvents for a run whose row exists, in status
// (no row if status is empty), and returns the run's id.
func insertOldRun(t *testing.T, url string, status driver.PipelineStatus, n int, age time.Duration) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	drv := openRunner(t, url).Driver()
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	run := uuid.Must(uuid.NewV7())
	created := time.Now().UTC().Add(-age)
	cs := &driver.ChangeSet{}
	if status != "" {
		cs.NewPipelines = []*driver.PipelineInsertParams{{ID: run, WorkflowName: "made-up", WorkflowVersion: "v1",
			Status: status, Input: []byte(`{}`), Now: created}}
	}
	for i := range n {
		cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.Must(uuid.NewV7()), PipelineID: run, Type: driver.EventTaskStarted,
			Data: []byte(`{"attempt":1}`), WorkerID: "test", CreatedAt: created.Add(time.Duration(i) * time.Millisecond)})
	}
	require.NoError(t, tx.ChangeSetApply(ctx, cs))
	require.NoError(t, tx.Commit(ctx))
	return run
}

// latestSchemaVersion is the newest migration this build knows.
func latestSchemaVersion(t *testing.T) int {
	t.Helper()
	d, err := sqlite.Open(filepath.Join(t.TempDir(), "version.db"))
	require.NoError(t, err)
	defer d.Close()
	_, latest, err := d.MigrationVersion(context.Background())
	require.NoError(t, err)
	return latest
}
