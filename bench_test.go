package cloacina

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// submitRuns creates n runs of workflow from 16 goroutines; run i gets
// input(i) as its input, or none when input is nil.
func submitRuns(b *testing.B, r *Runner, workflow string, n int, input func(i int) (*Context, error)) {
	b.Helper()
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				var in *Context
				if input != nil {
					var err error
					if in, err = input(i); err != nil {
						errs <- err
						return
					}
				}
				if _, err := r.ExecuteAsync(ctx, workflow, in); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

func benchRunner(b *testing.B, url string, wf *Workflow) *Runner {
	b.Helper()
	r, err := Open(context.Background(), url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 100, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// BenchmarkSingleTaskRuns burns down 10,000 runs of one task each: the runs
// are created first, then the timer covers the runner working them off
// (claim, execute, complete with every event). Like the harness's
// burn-down (bench/), run i gets {"i": i} and its task reads it, so the
// contexts are decoded and encoded as they are there. Reports tasks/s.
func BenchmarkSingleTaskRuns(b *testing.B) {
	const runs = 10_000
	for _, backend := range testdb.Backends() {
		b.Run(backend.Name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				var executed atomic.Int64
				wf := MustWorkflow("single", Task{Name: "only", Run: func(_ context.Context, tc *Context) error {
					if _, err := Get[int](tc, "i"); err != nil {
						return err
					}
					executed.Add(1)
					return nil
				}})
				r := benchRunner(b, backend.URL(b), wf)
				submitRuns(b, r, "single", runs, func(i int) (*Context, error) { return ContextFrom(map[string]any{"i": i}) })
				elapsed, cpu := burnDown(b, r, runs)
				if executed.Load() != runs {
					b.Fatalf("executed %d tasks, want %d", executed.Load(), runs)
				}
				b.ReportMetric(float64(runs)/elapsed.Seconds(), "tasks/s")
				b.ReportMetric(float64(cpu.Microseconds())/runs, "cpu-µs/task")
			}
		})
	}
}

// BenchmarkChainRuns burns down 1,000 runs of a 10-task chain. Reports
// steps/s and the hand-off: from one task's function returning to the next
// task's function starting. All 1,000 runs are queued at once, so a
// hand-off includes waiting behind the other runs' steps (the completion
// batch, and the outbox when the runner's slots are full); the harness in
// bench/ measures the step of an unsaturated runner.
func BenchmarkChainRuns(b *testing.B) {
	const runs, steps = 1_000, 10
	for _, backend := range testdb.Backends() {
		b.Run(backend.Name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				type key struct {
					run  string
					step int
				}
				var mu sync.Mutex
				starts := map[key]time.Time{}
				ends := map[key]time.Time{}
				var tasks []Task
				for i := range steps {
					t := Task{Name: fmt.Sprintf("step%02d", i), Run: func(ctx context.Context, tc *Context) error {
						started := time.Now()
						if i == 0 {
							// The first step names the run for the steps after it.
							if err := tc.Set("run", uuid.NewString()); err != nil {
								return err
							}
						}
						run, err := Get[string](tc, "run")
						if err != nil {
							return err
						}
						mu.Lock()
						defer mu.Unlock()
						starts[key{run, i}] = started
						ends[key{run, i}] = time.Now()
						return nil
					}}
					if i > 0 {
						t.DependsOn = []string{fmt.Sprintf("step%02d", i-1)}
					}
					tasks = append(tasks, t)
				}
				r := benchRunner(b, backend.URL(b), MustWorkflow("chain", tasks...))
				submitRuns(b, r, "chain", runs, nil)
				elapsed, cpu := burnDown(b, r, runs)
				if len(starts) != runs*steps {
					b.Fatalf("executed %d steps, want %d", len(starts), runs*steps)
				}
				var handoffs []time.Duration
				for k, end := range ends {
					if next, ok := starts[key{k.run, k.step + 1}]; ok {
						handoffs = append(handoffs, next.Sub(end))
					}
				}
				if len(handoffs) != runs*(steps-1) {
					b.Fatalf("measured %d hand-offs, want %d", len(handoffs), runs*(steps-1))
				}
				slices.Sort(handoffs)
				b.ReportMetric(float64(runs*steps)/elapsed.Seconds(), "steps/s")
				b.ReportMetric(float64(cpu.Microseconds())/(runs*steps), "cpu-µs/step")
				b.ReportMetric(float64(handoffs[len(handoffs)/2].Microseconds())/1000, "handoff-p50-ms")
				b.ReportMetric(float64(handoffs[len(handoffs)*99/100].Microseconds())/1000, "handoff-p99-ms")
			}
		})
	}
}

// burnDown starts r on the runs already submitted and times it, with the
// benchmark timer, until all of them have ended; then it closes r. It
// returns the time taken and the CPU time this process used meanwhile
// (zero where the platform does not say): on a machine shared with other
// work the CPU time per task moves less than the wall time.
func burnDown(b *testing.B, r *Runner, runs int) (elapsed, cpu time.Duration) {
	b.Helper()
	finished := runsFinished(r, runs)
	b.StartTimer()
	start, cpuStart := time.Now(), testdb.ProcessCPU()
	if err := r.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	<-finished
	elapsed, cpu = time.Since(start), testdb.ProcessCPU()-cpuStart
	b.StopTimer()
	if err := r.Close(); err != nil {
		b.Fatal(err)
	}
	return elapsed, cpu
}

// runsFinished returns a channel closed once this runner has committed
// the end of n runs: the task functions returning is not the end of the
// work, their recorded completions are.
func runsFinished(r *Runner, n int) <-chan struct{} {
	ch := make(chan struct{})
	var count atomic.Int64
	hook := func(c *changes) {
		if count.Add(int64(len(c.finished))) == int64(n) && len(c.finished) > 0 {
			close(ch)
		}
	}
	r.commitHook.Store(&hook)
	return ch
}

// BenchmarkDeleteEventsBefore times one retention pass over 200,000 old
// events of a finished run, recorded after none or 20,000 old events of a
// run still going, which retention keeps: the kept events come first in
// sequence order, as those of a long-running run do. Run with -benchtime 1x; the
// figure is the pass, not the set-up.
func BenchmarkDeleteEventsBefore(b *testing.B) {
	const deleted, perTx = 200_000, 5_000
	for _, be := range testdb.Backends() {
		for _, kept := range []int{0, 20_000} {
			b.Run(fmt.Sprintf("%s/kept=%d", be.Name, kept), func(b *testing.B) {
				ctx := context.Background()
				r, err := Open(ctx, be.URL(b), &Config{Logger: quietLogger()})
				if err != nil {
					b.Fatal(err)
				}
				defer r.Close()
				at := time.Now().UTC().Add(-48 * time.Hour)
				for b.Loop() {
					b.StopTimer()
					running, done := newID(), newID()
					insert := func(pipeline uuid.UUID, n int) {
						for i := 0; i < n; i += perTx {
							cs := driver.ChangeSet{}
							if i == 0 {
								status := driver.PipelineRunning
								if pipeline == done {
									status = driver.PipelineCompleted
								}
								cs.NewPipelines = []*driver.PipelineInsertParams{{ID: pipeline, WorkflowName: "old",
									WorkflowVersion: "v", Status: status, Input: []byte(`{}`), Now: at}}
							}
							for range min(perTx, n-i) {
								cs.Events = append(cs.Events, driver.EventInsert{ID: newID(), PipelineID: pipeline,
									Type: EventTaskCompleted, Data: []byte(`{"attempt":1}`), WorkerID: "w", CreatedAt: at})
							}
							if err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
								return tx.ChangeSetApply(ctx, &cs)
							}); err != nil {
								b.Fatal(err)
							}
						}
					}
					insert(running, kept)
					insert(done, deleted)
					if pg, ok := r.drv.(*postgres.Driver); ok {
						// As autovacuum would have by now.
						if _, err := pg.Pool().Exec(ctx, "ANALYZE "+pgx.Identifier{pg.Schema(), "execution_events"}.Sanitize()); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					n, err := r.DeleteEventsBefore(ctx, time.Now().UTC().Add(-24*time.Hour), nil)
					if err != nil {
						b.Fatal(err)
					}
					if n != deleted {
						b.Fatalf("deleted %d events, want %d", n, deleted)
					}
					b.StopTimer()
					if _, err := r.DeleteEventsBefore(ctx, time.Now().UTC().Add(-24*time.Hour), &DeleteEventsOpts{IncludeUnfinishedRuns: true}); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkWideRun works one run of a 1→W→1 workflow (a root, W tasks
// that depend on it, and one task that depends on all of them) for a few
// widths, and of a 1→W one (the W tasks are the run's leaves: "leaves=").
// A completion decides its run's next tasks and its end, so what it reads
// and walks per result is what this measures: the time per task should
// not grow with W. Reports tasks/s and our CPU per task.
func BenchmarkWideRun(b *testing.B) {
	for _, backend := range testdb.Backends() {
		for _, c := range []struct {
			width int
			join  bool
		}{{100, true}, {1_000, true}, {4_000, true}, {1_000, false}, {4_000, false}} {
			width, name := c.width, fmt.Sprintf("%s/width=%d", backend.Name, c.width)
			if !c.join {
				name = fmt.Sprintf("%s/leaves=%d", backend.Name, c.width)
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					var executed atomic.Int64
					count := func(context.Context, *Context) error { executed.Add(1); return nil }
					tasks := []Task{{Name: "root", Run: count}}
					mids := make([]string, width)
					for i := range width {
						mids[i] = fmt.Sprintf("mid%05d", i)
						tasks = append(tasks, Task{Name: mids[i], DependsOn: []string{"root"}, Run: count})
					}
					if c.join {
						tasks = append(tasks, Task{Name: "join", DependsOn: mids, Run: count})
					}
					r := benchRunner(b, backend.URL(b), MustWorkflow("wide", tasks...))
					submitRuns(b, r, "wide", 1, nil)
					elapsed, cpu := burnDown(b, r, 1)
					if got, want := executed.Load(), int64(len(tasks)); got != want {
						b.Fatalf("executed %d tasks, want %d", got, want)
					}
					b.ReportMetric(float64(len(tasks))/elapsed.Seconds(), "tasks/s")
					b.ReportMetric(float64(cpu.Microseconds())/float64(len(tasks)), "cpu-µs/task")
				}
			})
		}
	}
}

// BenchmarkBurnDownAsTheLogGrows burns down 20,000 single-task runs five
// times over on one database, each round with a new runner, the earlier
// rounds' runs and events kept: throughput should not fall as the tables
// grow. Reports tasks/s of the first and the last round, and their ratio.
func BenchmarkBurnDownAsTheLogGrows(b *testing.B) {
	const runs, rounds = 20_000, 5
	for _, backend := range testdb.Backends() {
		b.Run(backend.Name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				url := backend.URL(b)
				wf := MustWorkflow("single", Task{Name: "only", Run: ok})
				var first, last float64
				for round := range rounds {
					r := benchRunner(b, url, wf)
					submitRuns(b, r, "single", runs, nil)
					elapsed, _ := burnDown(b, r, runs)
					rate := float64(runs) / elapsed.Seconds()
					b.Logf("round %d: %.0f tasks/s over %d earlier runs", round+1, rate, round*runs)
					if round == 0 {
						first = rate
					}
					last = rate
				}
				b.ReportMetric(first, "first-tasks/s")
				b.ReportMetric(last, "last-tasks/s")
				b.ReportMetric(last/first, "last/first")
			}
		})
	}
}
