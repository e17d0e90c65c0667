package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// probe records what the task functions (ours) and job workers (River)
// actually did: how often each unit of work ran, and optionally when it
// started and ended. A unit is one step of one run: index run*steps+step.
// The benchmark counts completed work from the probe, never from the
// engine's own bookkeeping, and verify fails unless every unit ran exactly
// once.
type probe struct {
	runs, steps int
	counts      []atomic.Int32
	timed       bool
	startNs     []atomic.Int64
	endNs       []atomic.Int64
	base        time.Time
	remaining   atomic.Int64
	done        chan struct{}
}

func newProbe(runs, steps int, timed bool) *probe {
	p := &probe{runs: runs, steps: steps, counts: make([]atomic.Int32, runs*steps), timed: timed,
		base: time.Now(), done: make(chan struct{})}
	if timed {
		p.startNs = make([]atomic.Int64, runs*steps)
		p.endNs = make([]atomic.Int64, runs*steps)
	}
	p.remaining.Store(int64(runs * steps))
	if runs*steps == 0 {
		close(p.done)
	}
	return p
}

// now returns monotonic nanoseconds since the probe was made.
func (p *probe) now() int64 { return int64(time.Since(p.base)) }

// begin records that unit (run, step) started running.
func (p *probe) begin(run, step int) {
	if run < 0 || run >= p.runs || step < 0 || step >= p.steps {
		// Out-of-range input is a harness or engine bug: count it as a
		// duplicate on unit 0 so verify fails loudly.
		p.counts[0].Add(2)
		return
	}
	idx := run*p.steps + step
	if p.timed {
		p.startNs[idx].Store(p.now())
	}
	if p.counts[idx].Add(1) == 1 && p.remaining.Add(-1) == 0 {
		close(p.done)
	}
}

// end records that unit (run, step) finished its own work.
func (p *probe) end(run, step int) {
	if p.timed && run >= 0 && run < p.runs && step >= 0 && step < p.steps {
		p.endNs[run*p.steps+step].Store(p.now())
	}
}

// ran returns how many distinct units have run.
func (p *probe) ran() int64 { return int64(p.runs*p.steps) - p.remaining.Load() }

// verify checks that every unit ran exactly once.
func (p *probe) verify() error {
	var missing, dup int
	var examples []string
	for i := range p.counts {
		switch c := p.counts[i].Load(); {
		case c == 0:
			missing++
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("run %d step %d never ran", i/p.steps, i%p.steps))
			}
		case c > 1:
			dup++
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("run %d step %d ran %d times", i/p.steps, i%p.steps, c))
			}
		}
	}
	if missing > 0 || dup > 0 {
		return fmt.Errorf("exactly-once check failed: %d of %d units never ran, %d ran more than once (%s)",
			missing, len(p.counts), dup, strings.Join(examples, "; "))
	}
	return nil
}
