// Package readretry retries reads of the database through transient
// errors (a lost connection, a server restarting, too many clients), so
// that whatever follows the database — an event stream, the CLI's
// follower — outlasts a restart of it.
package readretry

import (
	"context"
	"errors"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

// Retrier retries reads with exponential backoff from Initial up to Max
// while they fail with driver.ErrTransient, and tells when the database
// stops and starts answering. The zero value is not usable: set Initial
// and Max. A Retrier is for one goroutine.
type Retrier struct {
	// Initial is the first wait after a failed read; each next wait
	// doubles, up to Max.
	Initial, Max time.Duration
	// Down is called once when reads start failing, with the first error;
	// Up once when one succeeds again. Either may be nil.
	Down func(err error)
	Up   func()
	down bool
}

// Do runs read until it succeeds, fails for a reason that is not
// transient, or ctx ends; it returns read's last error, or ctx's.
func (r *Retrier) Do(ctx context.Context, read func() error) error {
	for wait := r.Initial; ; wait = min(2*wait, r.Max) {
		err := read()
		if err == nil {
			if r.down {
				r.down = false
				if r.Up != nil {
					r.Up()
				}
			}
			return nil
		}
		if !errors.Is(err, driver.ErrTransient) || ctx.Err() != nil {
			return err
		}
		if !r.down {
			r.down = true
			if r.Down != nil {
				r.Down(err)
			}
		}
		if !Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// Sleep waits for d; false means ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
