package cli

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

// The demo's transform_b fails its first attempt and no other, whichever
// runner takes the retry. Two runners with their own workflow values stand
// for two processes running `cloacina demo` on one database; the demo used
// to remember failed attempts per process, so a retry taken by the other
// process failed again.
func TestDemoFailsOncePerRunAcrossRunners(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var runners []*cloacina.Runner
		for range 2 {
			r, err := cloacina.Open(ctx, url, &cloacina.Config{Workflows: []*cloacina.Workflow{demoWorkflow()},
				PollInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, r.Close()) })
			require.NoError(t, r.Start(ctx))
			runners = append(runners, r)
		}
		// Batches of runs until both runners have run attempts of
		// transform_b: on a loaded machine one runner can take a whole
		// batch, and the point is attempts spread over processes.
		ranOn := map[string]bool{}
		for batch := 0; len(ranOn) < 2 && ctx.Err() == nil; batch++ {
			var execs []*cloacina.Execution
			for i := range 12 {
				e, err := runners[i%2].ExecuteAsync(ctx, "demo", nil)
				require.NoError(t, err)
				execs = append(execs, e)
			}
			for _, e := range execs {
				res, err := e.Wait(ctx)
				require.NoError(t, err)
				require.Equal(t, cloacina.PipelineCompleted, res.Status, "run %s: %v", res.ID, res.Err())
				require.Equal(t, 2, res.Task("transform_b").Attempts, "run %s: one failed attempt, then the retry", res.ID)
				events, err := runners[0].TaskEvents(ctx, res.Task("transform_b").ID)
				require.NoError(t, err)
				for _, ev := range events {
					if ev.Type == cloacina.EventTaskStarted {
						ranOn[ev.WorkerID] = true
					}
				}
			}
		}
		require.Len(t, ranOn, 2, "both runners ran attempts of transform_b")
	})
}
