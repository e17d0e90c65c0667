package readretry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func TestDoRetriesTransientErrorsAndTellsOnce(t *testing.T) {
	t.Parallel()
	var downs []error
	ups := 0
	r := &Retrier{Initial: time.Millisecond, Max: 4 * time.Millisecond,
		Down: func(err error) { downs = append(downs, err) }, Up: func() { ups++ }}
	lost := fmt.Errorf("read: %w", driver.ErrTransient)
	calls := 0
	err := r.Do(t.Context(), func() error {
		calls++
		if calls <= 4 {
			return lost
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 5, calls)
	require.Equal(t, []error{lost}, downs, "one warning for the outage")
	require.Equal(t, 1, ups)

	require.NoError(t, r.Do(t.Context(), func() error { return nil }))
	require.Equal(t, 1, ups, "no recovery without an outage")
}

func TestDoReturnsOtherErrorsAtOnce(t *testing.T) {
	t.Parallel()
	r := &Retrier{Initial: time.Millisecond, Max: time.Millisecond}
	refused := errors.New("permission denied")
	calls := 0
	err := r.Do(t.Context(), func() error { calls++; return refused })
	require.ErrorIs(t, err, refused)
	require.Equal(t, 1, calls)
}

func TestDoEndsWithItsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	r := &Retrier{Initial: time.Hour, Max: time.Hour}
	calls := 0
	err := r.Do(ctx, func() error {
		calls++
		cancel() // the outage outlasts the caller's patience
		return driver.ErrTransient
	})
	require.ErrorIs(t, err, driver.ErrTransient, "a read that failed as ctx ended returns its own error")
	require.Equal(t, 1, calls)

	require.False(t, Sleep(ctx, time.Hour))
	require.True(t, Sleep(t.Context(), time.Millisecond))
}

func TestDoStopsWaitingWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	r := &Retrier{Initial: time.Hour, Max: time.Hour, Down: func(error) { cancel() }}
	err := r.Do(ctx, func() error { return driver.ErrTransient })
	require.ErrorIs(t, err, context.Canceled, "the wait ended with ctx")
}
