package cloacinatest_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/cloacinatest"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestScratchPGReadOnly(t *testing.T) {
	u := cloacinatest.PostgresSchema(t, testdb.PostgresURL())
	r := cloacinatest.OpenURL(t, u, &cloacina.Config{ReadOnly: true})
	runs, err := r.List(testContext(t), nil)
	require.NoError(t, err)
	require.Empty(t, runs)
}
