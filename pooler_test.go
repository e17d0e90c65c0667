package cloacina

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// EnvPoolerURL names a variable holding the URL of a transaction-pooling
// pooler (such as PgBouncer with pool_mode = transaction) in front of the
// test database; TestBehindTransactionPooler runs only when it is set.
const envPoolerURL = "CLOACINA_TEST_POOLER_URL"

// With default_query_exec_mode=exec, the setting documented for
// transaction poolers, a tenant's runner leaves no prepared statement on
// any of its connections: any server connection could serve any of its
// transactions. The default mode, checked the same way, does leave them,
// which shows the check can see them.
func TestExecModeLeavesNoSessionState(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		param        string
		wantPrepared bool
	}{
		{"&default_query_exec_mode=exec", false},
		{"", true},
	} {
		t.Run("mode"+tc.param, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			tn := newTenant(t)
			wf, err := NewWorkflow("wf",
				Task{Name: "a", Run: setKey("a", 1)},
				Task{Name: "b", DependsOn: []string{"a"}, Run: setKey("b", 2)},
			)
			require.NoError(t, err)
			r := startRunner(t, tn.URL+tc.param, &Config{Workflows: []*Workflow{wf}})
			for range 20 {
				res, err := r.Execute(ctx, "wf", nil)
				require.NoError(t, err)
				require.Equal(t, PipelineCompleted, res.Status)
			}
			events, err := r.RecentEvents(ctx, 5)
			require.NoError(t, err)
			require.Len(t, events, 5)
			require.NoError(t, r.Stop(ctx))

			conns := r.Driver().(*postgres.Driver).Pool().AcquireAllIdle(ctx)
			require.NotEmpty(t, conns)
			prepared := 0
			for _, c := range conns {
				var n int
				require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n))
				prepared += n
				c.Release()
			}
			if tc.wantPrepared {
				require.NotZero(t, prepared)
			} else {
				require.Zero(t, prepared, "no statement outlives its transaction")
			}
		})
	}
}

// Runs through a real transaction pooler when one is configured (see
// envPoolerURL); wake-ups do not pass such a pooler, so runners find work
// by polling.
func TestBehindTransactionPooler(t *testing.T) {
	t.Parallel()
	pooler := os.Getenv(envPoolerURL)
	if pooler == "" {
		t.Skip("set " + envPoolerURL + " to the URL of a transaction-pooling pooler in front of the test database")
	}
	ctx := testContext(t)
	url := testdb.WithSchema(pooler, testdb.NewSchema(t)) + "&default_query_exec_mode=exec"
	wf, err := NewWorkflow("wf",
		Task{Name: "a", Run: setKey("a", 1)},
		Task{Name: "b", DependsOn: []string{"a"}, Run: setKey("b", 2)},
	)
	require.NoError(t, err)
	var runners []*Runner
	for range 3 {
		runners = append(runners, startRunner(t, url, &Config{Workflows: []*Workflow{wf}}))
	}
	var execs []*Execution
	for i := range 100 {
		e, err := runners[i%len(runners)].ExecuteAsync(ctx, "wf", nil)
		require.NoError(t, err)
		execs = append(execs, e)
	}
	for _, e := range execs {
		res, err := e.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, res.Error)
		b, err := Get[int](res.Context, "b")
		require.NoError(t, err)
		require.Equal(t, 2, b)
	}
}
