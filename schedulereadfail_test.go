package cloacina

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// scheduleReadFailing fails every read of the schedules' rows that the
// schedule loop makes (Reader().ScheduleList of its schedules by name)
// while fail is set; Runner.Schedules, which lists them all, reads on.
type scheduleReadFailing struct {
	driver.Executor
	fail *atomic.Bool
}

func (x *scheduleReadFailing) ScheduleList(ctx context.Context, p *driver.ScheduleListParams) ([]*driver.Schedule, error) {
	if x.fail.Load() && len(p.Names) > 0 {
		return nil, errors.New("permission denied for table schedules")
	}
	return x.Executor.ScheduleList(ctx, p)
}

// While the schedule loop cannot read the schedules, it says so in the
// log (no schedule fires meanwhile, and it was silent: an operator saw
// schedules stop with nothing logged), and fires them again once a read
// succeeds.
func TestScheduleLoopLogsAFailedRead(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		seen := make(chan struct{})
		logger := slog.New(signalHandler{prefixes: []string{"read schedules"}, minLevel: slog.LevelWarn, seen: seen, once: &sync.Once{}})
		wf := MustWorkflow("tick", Task{Name: "a", Run: func(context.Context, *Context) error { return nil }})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Logger: logger,
			Schedules: []Schedule{{Name: "s", Workflow: "tick", Cron: "* * * * * *"}}})
		var fail atomic.Bool
		fail.Store(true)
		r.drv = hookReader(r.drv, func(x driver.Executor) driver.Executor { return &scheduleReadFailing{Executor: x, fail: &fail} })
		require.NoError(t, r.Start(ctx))
		waitFor(t, seen, "the failed read of the schedules to be logged")
		require.Zero(t, findSchedule(t, r, "s").Fired, "a schedule fired while its row could not be read")

		fail.Store(false)
		waitCommits(t, "the schedule to fire once a read succeeds", func() bool {
			return findSchedule(t, r, "s").Fired >= 1
		}, r)
	})
}
