package postgres

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// The server's error codes map to the driver's classes: what a retry on
// another connection or a moment later can cure is transient (the
// session ended by the server's idle timeouts included); a value the
// server refuses is no retry's business.
func TestMapErrorClasses(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("exec: %w", &pgconn.PgError{Code: code}) }
	for _, code := range []string{"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03", "57P05", "25P03", "25006", "57014", "53100", "53200", "08006"} {
		require.ErrorIs(t, mapError(pg(code)), driver.ErrTransient, code)
	}
	for _, code := range []string{"22008", "22P02", "54000"} {
		err := mapError(pg(code))
		require.ErrorIs(t, err, driver.ErrValueRejected, code)
		require.NotErrorIs(t, err, driver.ErrTransient, code)
	}
	for _, code := range []string{"42P01", "42501", "23505"} {
		err := mapError(pg(code))
		require.NotErrorIs(t, err, driver.ErrTransient, code)
		require.NotErrorIs(t, err, driver.ErrValueRejected, code)
	}
	require.ErrorIs(t, mapError(pg(conflictCode)), driver.ErrConflict)
	require.ErrorIs(t, mapError(pgx.ErrNoRows), driver.ErrNotFound)
	require.ErrorIs(t, mapError(io.ErrUnexpectedEOF), driver.ErrTransient)
	// pgx's refusal of a message over 1 GB says it is safe to retry; a
	// retry fails the same way, so it is a refused value, not transient.
	tooLarge := mapError(fmt.Errorf("write failed: %w", errors.New("message body too large")))
	require.ErrorIs(t, tooLarge, driver.ErrValueRejected)
	require.NotErrorIs(t, tooLarge, driver.ErrTransient)
	require.ErrorContains(t, tooLarge, "1 GB message limit")
	require.Nil(t, mapError(nil))
	require.False(t, errors.Is(mapError(errors.New("other")), driver.ErrTransient))
}
