package postgres

import (
	"context"
	"encoding/base64"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

var storedVerifier = regexp.MustCompile(`^SCRAM-SHA-256\$([0-9]+):([A-Za-z0-9+/=]+)\$`)

// saltOf parses the iteration count and salt out of a stored verifier.
func saltOf(t *testing.T, verifier string) (int, []byte) {
	t.Helper()
	m := storedVerifier.FindStringSubmatch(verifier)
	require.NotNil(t, m, verifier)
	iterations, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	salt, err := base64.StdEncoding.DecodeString(m[2])
	require.NoError(t, err)
	return iterations, salt
}

// The verifier computed here is the one PostgreSQL computes itself from
// the same password, salt and iteration count, so a role created with it
// accepts that password.
func TestScramVerifierMatchesServer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(context.Background())
	role := testdb.NewTenantName(t)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.Background()) // the role never outlives the test
	_, err = tx.Exec(ctx, "SET LOCAL password_encryption = 'scram-sha-256'")
	require.NoError(t, err)
	for _, password := range []string{"pencil", `p@ss w:rd/'"\`, "x", generatedPassword(t)} {
		// Plain text here, only to make the server hash it itself.
		_, err = tx.Exec(ctx, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" PASSWORD '"+escapeForTest(password)+"'")
		require.NoError(t, err)
		var stored string
		require.NoError(t, tx.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&stored))
		iterations, salt := saltOf(t, stored)
		mine, err := scramVerifier(password, salt, iterations)
		require.NoError(t, err)
		require.Equal(t, stored, mine, "password %q", password)
		_, err = tx.Exec(ctx, "DROP ROLE "+pgx.Identifier{role}.Sanitize())
		require.NoError(t, err)
	}

	v, err := ScramVerifier("pencil")
	require.NoError(t, err)
	require.Regexp(t, scramVerifierPattern, v)
	w, err := ScramVerifier("pencil")
	require.NoError(t, err)
	require.NotEqual(t, v, w, "every verifier has a salt of its own")
}

func escapeForTest(s string) string { return strings.ReplaceAll(s, "'", "''") }

func generatedPassword(t *testing.T) string {
	p, err := GeneratePassword()
	require.NoError(t, err)
	require.Len(t, p, 43)
	require.Regexp(t, `^[A-Za-z0-9_-]+$`, p)
	return p
}

// TenantCreate stores the tenant's password as a verifier of exactly that
// password.
func TestTenantCreateStoresVerifier(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	admin, err := OpenAdmin(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer admin.Close()
	name := testdb.NewTenantName(t)
	password := `given p@ssword'--`
	require.NoError(t, admin.TenantCreate(ctx, &TenantCreateParams{Schema: name, Role: name, Password: password}))
	var stored string
	require.NoError(t, admin.pool.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", name).Scan(&stored))
	iterations, salt := saltOf(t, stored)
	want, err := scramVerifier(password, salt, iterations)
	require.NoError(t, err)
	require.Equal(t, want, stored)
	require.NoError(t, admin.TenantDrop(ctx, name))
}
