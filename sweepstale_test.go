package cloacina

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// gatedOrphans holds, once armed, the next listing of orphaned tasks (a
// sweep's first read) after it read the database, until release: a sweep
// still running on what it listed while the runners' state moves on. It
// records at which of the leader's beats (counted by beats) each listing
// began.
type gatedOrphans struct {
	beats   *atomic.Int64
	armed   atomic.Bool
	listed  chan int64 // the beat of the held listing, then of each later one
	release chan struct{}
}

// reader is the Reader of a backend whose listings d holds.
func (d *gatedOrphans) reader(x driver.Executor) driver.Executor {
	return &gatedOrphansReader{Executor: x, d: d}
}

type gatedOrphansReader struct {
	driver.Executor
	d *gatedOrphans
}

func (x *gatedOrphansReader) TaskListOrphaned(ctx context.Context, p *driver.TaskListOrphanedParams) ([]*driver.Task, error) {
	at := x.d.beats.Load()
	tasks, err := x.Executor.TaskListOrphaned(ctx, p)
	if p.RunnerID != "" {
		return tasks, err // recoverOwn at Start, not a sweep
	}
	select {
	case x.d.listed <- at:
	default:
	}
	if x.d.armed.CompareAndSwap(true, false) {
		// Past the sweep's bound on purpose: what it listed is stale by
		// the time it ends, and it ends without an error.
		<-x.d.release
	}
	return tasks, err
}

// beatCounter counts the heartbeats made through its transactions.
type beatCounter struct {
	driver.Tx
	beats *atomic.Int64
}

func (tx *beatCounter) RunnerHeartbeat(ctx context.Context, p *driver.RunnerHeartbeatParams) (*driver.RunnerHeartbeatResult, error) {
	tx.beats.Add(1)
	return tx.Tx.RunnerHeartbeat(ctx, p)
}

// A runner found dead by a beat while a sweep ran (which listed the
// orphans before that runner expired, and so missed its tasks) has its
// tasks reset by a sweep at the next beat. They waited for the next
// periodic sweep, orphanSweepEvery (12) beats on.
func TestDeadWhileSweepingIsSweptAtTheNextBeat(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		s := newStall()
		wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
		var beats atomic.Int64
		gate := &gatedOrphans{beats: &beats, listed: make(chan int64, 64), release: make(chan struct{})}
		var once sync.Once
		unblock := func() { once.Do(func() { close(gate.release) }) }
		t.Cleanup(unblock) // before the runners close
		removed := make(chan struct{})
		released := make(chan int64, 1)
		_, _, _ = zombieSetupWith(t, url, wf, s, zombieHooks{
			beforeStart: func(leader *Runner) {
				leader.drv = hookTxs(hookReader(leader.drv, gate.reader), func(tx driver.Tx) driver.Tx { return &beatCounter{Tx: tx, beats: &beats} })
				leader.logger = slog.New(signalHandler{prefixes: []string{"removed dead runners"}, minLevel: slog.LevelInfo,
					seen: removed, once: &sync.Once{}})
			},
			beforeFreeze: func(leader, zombie *Runner) {
				for len(gate.listed) > 0 {
					<-gate.listed
				}
				gate.armed.Store(true)
				waitFor(t, gate.listed, "a sweep to list the orphans while the zombie still beats")
				go func() {
					// The zombie freezes next; once a beat has removed it,
					// the held sweep ends, having reset nothing.
					select {
					case <-removed:
					case <-t.Context().Done():
						return
					}
					for len(gate.listed) > 0 {
						<-gate.listed
					}
					released <- beats.Load()
					unblock()
				}()
			},
		})
		// zombieSetupWith returned once the zombie's task was reset.
		at := waitFor(t, released, "the held sweep to be released")
		require.Positive(t, len(gate.listed), "no sweep listed the orphans after the held one")
		next := <-gate.listed
		require.LessOrEqual(t, next-at, int64(3),
			"the sweep after the held one began %d beats after it ended: it waited for the periodic sweep", next-at)
		close(s.release)
		waitFor(t, s.ended, "the zombie's task to return")
	})
}
