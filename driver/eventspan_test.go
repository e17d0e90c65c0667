package driver_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A listing walks the log when the window starts at the end the walk
// starts from and holds a page, and reads the window's range otherwise.
func TestEventSpanBound(t *testing.T) {
	t.Parallel()
	log := func(from, before int64) driver.EventSpan {
		return driver.EventSpan{First: 1, Last: 1_000_000, From: from, Before: before}
	}
	for _, c := range []struct {
		name   string
		span   driver.EventSpan
		newest bool
		limit  int
		bound  bool
	}{
		{"narrow and deep", log(500_000, 501_200), false, 100, true},
		{"narrow and deep, newest first", log(500_000, 501_200), true, 100, true},
		{"narrow, no limit", log(500_000, 501_200), false, 0, true},
		{"wide from the newest", log(100_000, 1_000_001), true, 50, false},
		{"wide from the oldest", log(1, 900_000), false, 50, false},
		{"wide, walked from the far end", log(100_000, 1_000_001), false, 50, false},
		{"fewer than the limit at the newest end", log(999_995, 1_000_001), true, 50, true},
		{"empty window", log(600_000, 600_000), true, 50, true},
		{"the whole log, no limit", log(1, 1_000_001), false, 0, false},
		{"empty log", driver.EventSpan{First: 1}, false, 10, false},
	} {
		require.Equal(t, c.bound, c.span.Bound(c.newest, c.limit), c.name)
	}
}
