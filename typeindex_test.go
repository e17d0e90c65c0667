package cloacina

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// The partial index on event types (migration 12) must stay off the hot
// path: no event a run that succeeds writes, whether its tasks come through
// the outbox or are handed off, may be of a type the index holds, or every
// task would pay a btree insert for it.
func TestTypeIndexLeavesSuccessfulRunsAlone(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("indexfree",
			Task{Name: "a", Run: ok},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
			Task{Name: "c", DependsOn: []string{"a"}, Run: ok},
			Task{Name: "d", DependsOn: []string{"b", "c"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(ctx, "indexfree", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		evs, err := r.Events(ctx, &EventQuery{RunID: &res.ID})
		require.NoError(t, err)
		seen := map[EventType]bool{}
		for _, e := range evs {
			seen[e.Type] = true
			require.False(t, slices.Contains(driver.IndexedEventTypes, e.Type),
				"%s is written by every successful run: keep it out of driver.IndexedEventTypes and migration 12's index", e.Type)
		}
		for _, typ := range []EventType{EventPipelineStarted, EventTaskClaimed, EventTaskStarted, EventTaskCompleted, EventPipelineCompleted} {
			require.True(t, seen[typ], "the run wrote no %s", typ)
		}
	})
}
