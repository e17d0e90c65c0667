package postgres

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A side that could not read the server's system identifier (its role
// may not call pg_control_system) is compared by database name alone.
func TestSameLocation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b location
		same bool
	}{
		{location{7, "app"}, location{7, "app"}, true},
		{location{7, "app"}, location{8, "app"}, false},
		{location{7, "app"}, location{7, "other"}, false},
		{location{0, "app"}, location{7, "app"}, true},
		{location{7, "app"}, location{0, "app"}, true},
		{location{0, "app"}, location{0, "other"}, false},
	} {
		require.Equal(t, tc.same, sameLocation(tc.a, tc.b), "%+v vs %+v", tc.a, tc.b)
	}
}
