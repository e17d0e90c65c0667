package cloacina

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mustPlan(t *testing.T, p *RetryPolicy) *retryPlan {
	t.Helper()
	rp, problems := p.plan("t")
	require.Empty(t, problems)
	return rp
}

func TestRetryDefaultsToOneAttempt(t *testing.T) {
	t.Parallel()
	rp := mustPlan(t, nil)
	require.Equal(t, 1, rp.maxAttempts)
	require.False(t, rp.shouldRetry(errors.New("x"), 1))
}

func TestRetryMaxAttemptsCountsTotal(t *testing.T) {
	t.Parallel()
	rp := mustPlan(t, &RetryPolicy{MaxAttempts: 3})
	err := errors.New("boom")
	require.True(t, rp.shouldRetry(err, 1))
	require.True(t, rp.shouldRetry(err, 2))
	require.False(t, rp.shouldRetry(err, 3), "3 attempts = 1 try + 2 retries")
	require.False(t, rp.shouldRetry(Permanent(err), 1), "a permanent error skips remaining retries")
	require.True(t, IsPermanent(fmt.Errorf("wrapped: %w", Permanent(err))))
}

func TestRetryBackoffShapes(t *testing.T) {
	t.Parallel()
	fixed := mustPlan(t, &RetryPolicy{MaxAttempts: 5, Backoff: BackoffFixed, InitialDelay: time.Second})
	linear := mustPlan(t, &RetryPolicy{MaxAttempts: 5, Backoff: BackoffLinear, InitialDelay: time.Second})
	expo := mustPlan(t, &RetryPolicy{MaxAttempts: 5, InitialDelay: time.Second, Multiplier: 3})
	for attempt, want := range map[int][3]time.Duration{
		1: {time.Second, time.Second, time.Second},
		2: {time.Second, 2 * time.Second, 3 * time.Second},
		3: {time.Second, 3 * time.Second, 9 * time.Second},
	} {
		require.Equal(t, want[0], fixed.delay(attempt), "fixed %d", attempt)
		require.Equal(t, want[1], linear.delay(attempt), "linear %d", attempt)
		require.Equal(t, want[2], expo.delay(attempt), "exponential %d", attempt)
	}
}

func TestRetryBackoffCappedByMaxDelay(t *testing.T) {
	t.Parallel()
	rp := mustPlan(t, &RetryPolicy{MaxAttempts: 100, InitialDelay: time.Second, MaxDelay: 10 * time.Second})
	require.Equal(t, 8*time.Second, rp.delay(4))
	require.Equal(t, 10*time.Second, rp.delay(5))
	require.Equal(t, 10*time.Second, rp.delay(99), "no overflow at large attempts")

	// "No cap": the delay that reaches MaxInt64 is 2^63 as a float, which
	// must not wrap to a negative Duration.
	rp = mustPlan(t, &RetryPolicy{MaxAttempts: 100, InitialDelay: 1 << 33, MaxDelay: math.MaxInt64})
	for attempt := 1; attempt < 100; attempt++ {
		require.GreaterOrEqual(t, rp.delay(attempt), time.Duration(0), "attempt %d", attempt)
	}
	require.Equal(t, time.Duration(math.MaxInt64), rp.delay(31))
}

func TestRetryJitterStaysWithinBounds(t *testing.T) {
	t.Parallel()
	rp := mustPlan(t, &RetryPolicy{MaxAttempts: 10, Backoff: BackoffFixed, InitialDelay: 8 * time.Second, MaxDelay: 9 * time.Second, Jitter: 0.5})
	var below, above bool
	for range 2000 {
		d := rp.delay(1)
		require.GreaterOrEqual(t, d, 4*time.Second)
		require.LessOrEqual(t, d, 9*time.Second, "jitter never exceeds MaxDelay")
		below = below || d < 8*time.Second
		above = above || d > 8*time.Second
	}
	require.True(t, below && above, "jitter spreads both ways")
}

type flaky struct{}

func (flaky) Error() string   { return "flaky" }
func (flaky) Transient() bool { return true }

func TestRetryConditions(t *testing.T) {
	t.Parallel()
	plain := errors.New("connection refused by upstream")
	never := mustPlan(t, &RetryPolicy{MaxAttempts: 3, RetryOn: []RetryCondition{RetryNever()}})
	require.False(t, never.shouldRetry(plain, 1))

	transient := mustPlan(t, &RetryPolicy{MaxAttempts: 3, RetryOn: []RetryCondition{RetryTransient()}})
	require.False(t, transient.shouldRetry(plain, 1))
	require.True(t, transient.shouldRetry(Transient(plain), 1))
	require.True(t, transient.shouldRetry(fmt.Errorf("call: %w", flaky{}), 1), "an error with Transient() bool counts")
	require.True(t, transient.shouldRetry(fmt.Errorf("x: %w", ErrTaskTimeout), 1), "timeouts are transient")

	pattern := mustPlan(t, &RetryPolicy{MaxAttempts: 3, RetryOn: []RetryCondition{RetryOnPattern(`refused`, `^timeout`)}})
	require.True(t, pattern.shouldRetry(plain, 1))
	require.False(t, pattern.shouldRetry(errors.New("bad input"), 1))

	// Several conditions combine with OR.
	either := mustPlan(t, &RetryPolicy{MaxAttempts: 3, RetryOn: []RetryCondition{RetryTransient(), RetryOnPattern("bad")}})
	require.True(t, either.shouldRetry(errors.New("bad input"), 1))
	require.True(t, either.shouldRetry(Transient(errors.New("other")), 1))
	require.False(t, either.shouldRetry(errors.New("other"), 1))
	require.False(t, either.shouldRetry(Permanent(Transient(errors.New("bad"))), 1))
}
