package sqlite_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Without statistics SQLite guesses that an equality on an indexed status
// matches a handful of rows, and will walk every Pending run through the
// status index rather than look up two runs by id. Every statement the
// engine's cycle runs must find run and task rows by their ids (or a run's
// tasks by the run's id), however many rows the table holds.
func TestHotPathFindsRowsByID(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, db, parses := openCounting(t)
	cycle := cycler(t, drv)
	for _, n := range []int{1, 2, 3, 7} {
		cycle(n)
	}

	checked := 0
	for _, q := range parses.seen() {
		if !strings.Contains(q, "pipeline_executions") && !strings.Contains(q, "task_executions") ||
			strings.HasPrefix(strings.TrimSpace(q), "INSERT") || !strings.Contains(q, "?") {
			continue
		}
		rows, err := db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, make([]any, strings.Count(q, "?"))...)
		require.NoError(t, err, q)
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
			plan = append(plan, detail)
		}
		require.NoError(t, rows.Err())
		rows.Close()
		for _, step := range plan {
			if strings.Contains(step, "pipeline_executions") || strings.Contains(step, "task_executions") {
				require.Truef(t, strings.Contains(step, "(id=?)") || strings.Contains(step, "(pipeline_execution_id=?)"),
					"%s\nplan: %s", q, strings.Join(plan, "; "))
			}
		}
		checked++
	}
	require.NotZero(t, checked)
}
