package cloacina

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestSmoke(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var fails atomic.Int32
			wf := MustWorkflow("diamond",
				Task{Name: "a", Run: func(ctx context.Context, tc *Context) error { return tc.Set("a", 1) }},
				Task{Name: "b", DependsOn: []string{"a"}, Retry: &RetryPolicy{MaxAttempts: 3, InitialDelay: 10 * time.Millisecond}, Run: func(ctx context.Context, tc *Context) error {
					if fails.Add(1) == 1 {
						return errors.New("flaky")
					}
					return tc.Set("b", 2)
				}},
				Task{Name: "c", DependsOn: []string{"a"}, Run: func(ctx context.Context, tc *Context) error { return tc.Set("c", 3) }},
				Task{Name: "d", DependsOn: []string{"b", "c"}, Run: func(ctx context.Context, tc *Context) error { return tc.Set("d", 4) }},
			)
			r, err := Open(ctx, b.URL(t), &Config{Workflows: []*Workflow{wf}})
			require.NoError(t, err)
			defer r.Close()
			require.NoError(t, r.Start(ctx))
			res, err := r.Execute(ctx, "diamond", nil)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status, res.Error)
			t.Log(res.Context)
			evs, err := r.RunEvents(ctx, res.ID)
			require.NoError(t, err)
			for _, e := range evs {
				t.Log(e.SequenceNum, e.Type, e.TaskName, string(e.Data))
			}
			require.NoError(t, r.Stop(ctx))
		})
	}
}
