package cloacina_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cloacina-go/cloacina"
)

// A schedule starts a run of its workflow at every tick of a cron
// specification. Each run's input is the schedule's, plus the schedule's
// name and the tick, which ScheduledAt reads: a run can tell which period
// it is for, even one that runs late after an outage.
func ExampleSchedule() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	reports := make(chan string, 10)
	wf := cloacina.MustWorkflow("report",
		cloacina.Task{Name: "build", Run: func(_ context.Context, tc *cloacina.Context) error {
			at, schedule, _ := cloacina.ScheduledAt(tc)
			region, _ := cloacina.Get[string](tc, "region")
			reports <- fmt.Sprintf("%s report for %s, tick on a whole second: %t", schedule, region, at.Nanosecond() == 0)
			return nil
		}},
	)
	input := cloacina.NewContext()
	_ = input.Set("region", "emea")
	runner, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, "cloacina.db"), &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf},
		Schedules: []cloacina.Schedule{{
			Name:     "every-second",
			Workflow: "report",
			Cron:     "* * * * * *", // seconds first; "0 6 * * *" would be 06:00 daily
			Input:    input,
		}},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	if err := runner.Start(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-reports)

	// Pausing holds the schedule, across restarts and for every runner,
	// until it is resumed.
	if err := runner.PauseSchedule(ctx, "every-second"); err != nil {
		log.Fatal(err)
	}
	schedules, err := runner.Schedules(ctx)
	if err != nil {
		log.Fatal(err)
	}
	s := schedules[0]
	fmt.Println(s.Name, s.Cron, s.Timezone, s.CatchUp, "paused:", s.Paused)
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = runner.Stop(stopCtx)
	// Output:
	// every-second report for emea, tick on a whole second: true
	// every-second * * * * * * UTC latest paused: true
}
