package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloacina-go/cloacina"
)

// Workflow names used by the scenarios.
const (
	wfBurn  = "bench_burn"  // one task
	wfChain = "bench_chain" // a → b → c
	wfLat   = "bench_lat"   // a → b
	wfFan   = "bench_fan"   // root → 20 → sink
)

// fanWidth is the width of the fan-out/fan-in DAG.
const fanWidth = 20

// stepsOf is the number of tasks of each workflow.
var stepsOf = map[string]int{wfBurn: 1, wfChain: 3, wfLat: 2, wfFan: fanWidth + 2}

// oursTask returns a task function that reads the run index from the
// context and records the unit in p.
func oursTask(p *probe, step int) cloacina.TaskFunc {
	return func(ctx context.Context, tc *cloacina.Context) error {
		i, err := cloacina.Get[int](tc, "i")
		if err != nil {
			p.begin(-1, 0)
			return err
		}
		p.begin(i, step)
		p.end(i, step)
		return nil
	}
}

// oursWorkflow builds the named benchmark workflow recording into p.
func oursWorkflow(name string, p *probe) (*cloacina.Workflow, error) {
	switch name {
	case wfBurn:
		return cloacina.NewWorkflow(name, cloacina.Task{Name: "a", Run: oursTask(p, 0)})
	case wfChain:
		return cloacina.NewWorkflow(name,
			cloacina.Task{Name: "a", Run: oursTask(p, 0)},
			cloacina.Task{Name: "b", Run: oursTask(p, 1), DependsOn: []string{"a"}},
			cloacina.Task{Name: "c", Run: oursTask(p, 2), DependsOn: []string{"b"}})
	case wfLat:
		return cloacina.NewWorkflow(name,
			cloacina.Task{Name: "a", Run: oursTask(p, 0)},
			cloacina.Task{Name: "b", Run: oursTask(p, 1), DependsOn: []string{"a"}})
	case wfFan:
		tasks := []cloacina.Task{{Name: "root", Run: oursTask(p, 0)}}
		mids := make([]string, fanWidth)
		for j := range fanWidth {
			mids[j] = fmt.Sprintf("m%02d", j)
			tasks = append(tasks, cloacina.Task{Name: mids[j], Run: oursTask(p, j+1), DependsOn: []string{"root"}})
		}
		tasks = append(tasks, cloacina.Task{Name: "sink", Run: oursTask(p, fanWidth+1), DependsOn: mids})
		return cloacina.NewWorkflow(name, tasks...)
	}
	return nil, fmt.Errorf("unknown workflow %q", name)
}

// oursConfig is the runner configuration every scenario uses: the
// concurrency equivalent to River's MaxWorkers 100, defaults otherwise.
func oursConfig(wf *cloacina.Workflow, logger *slog.Logger) *cloacina.Config {
	return &cloacina.Config{Workflows: []*cloacina.Workflow{wf}, MaxConcurrentTasks: riverMaxWorkers, Logger: logger}
}

// openOurs opens a runner (not started) on url for workflow name.
func openOurs(ctx context.Context, url, name string, p *probe, logger *slog.Logger) (*cloacina.Runner, error) {
	wf, err := oursWorkflow(name, p)
	if err != nil {
		return nil, err
	}
	r, err := cloacina.Open(ctx, url, oursConfig(wf, logger))
	if err != nil {
		return nil, fmt.Errorf("open runner: %w", err)
	}
	return r, nil
}

// insertOurs starts n runs of workflow from `workers` goroutines; run i
// gets {"i": i}.
func insertOurs(ctx context.Context, r *cloacina.Runner, workflow string, n, workers int) error {
	// The first failure stops the other inserters.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				in, err := cloacina.ContextFrom(map[string]any{"i": i})
				if err != nil {
					errs <- err
					return
				}
				if _, err := r.ExecuteAsync(ctx, workflow, in); err != nil {
					errs <- fmt.Errorf("insert run %d: %w", i, err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// oursPending is the query counting runs not yet completed.
func oursPending(t *target) string {
	return harnessMark + "SELECT count(*) FROM " + t.table("pipeline_executions") + " WHERE status <> 'completed'"
}

// verifyOurs checks the database after a scenario: every run completed
// and every execution event written (5 per task + 2 per run for runs
// whose tasks all completed).
func verifyOurs(ctx context.Context, t *target, runs, steps int) error {
	completed, err := t.scalar(ctx, "SELECT count(*) FROM "+t.table("pipeline_executions")+" WHERE status = 'completed'")
	if err != nil {
		return fmt.Errorf("count runs: %w", err)
	}
	total, err := t.scalar(ctx, "SELECT count(*) FROM "+t.table("pipeline_executions"))
	if err != nil {
		return fmt.Errorf("count runs: %w", err)
	}
	if completed != int64(runs) || total != int64(runs) {
		return fmt.Errorf("database check failed: %d runs, %d completed, want %d", total, completed, runs)
	}
	byType, err := t.groupCounts(ctx, "SELECT event_type, count(*) FROM "+t.table("execution_events")+" GROUP BY event_type")
	if err != nil {
		return fmt.Errorf("count events: %w", err)
	}
	want := map[string]int64{
		"task_created": int64(runs * steps), "task_marked_ready": int64(runs * steps), "task_claimed": int64(runs * steps),
		"task_started": int64(runs * steps), "task_completed": int64(runs * steps),
		"pipeline_started": int64(runs), "pipeline_completed": int64(runs),
	}
	for typ, n := range byType {
		if want[typ] != n {
			return fmt.Errorf("event log check failed: %d %s events, want %d (all: %v)", n, typ, want[typ], byType)
		}
	}
	for typ, n := range want {
		if byType[typ] != n {
			return fmt.Errorf("event log check failed: %d %s events, want %d (all: %v)", byType[typ], typ, n, byType)
		}
	}
	return nil
}

// workOurs starts r, waits until the probe saw every unit and the
// database shows every run completed, and stops r. It returns the
// duration of the work phase.
func workOurs(ctx context.Context, r *cloacina.Runner, t *target, p *probe, timeout time.Duration, prof *phaseProfiler) (time.Duration, error) {
	stopProf := prof.start()
	start := time.Now()
	if err := r.Start(ctx); err != nil {
		stopProf()
		return 0, err
	}
	elapsed, err := waitDone(ctx, p, timeout, start, func() error {
		return t.waitZero(ctx, oursPending(t), timeout)
	})
	stopProf()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if serr := r.Stop(stopCtx); serr != nil && err == nil {
		err = fmt.Errorf("stop runner: %w", serr)
	}
	return elapsed, err
}

// waitDone waits for every unit of p to run, then for settled to confirm
// the database agrees, and returns the time since start.
func waitDone(ctx context.Context, p *probe, timeout time.Duration, start time.Time, settled func() error) (time.Duration, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return 0, fmt.Errorf("timed out after %s with %d of %d units run", timeout, p.ran(), p.runs*p.steps)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if err := settled(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
