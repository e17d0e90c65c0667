package jsonx

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMergeDeep(t *testing.T) {
	t.Parallel()
	dst := map[string]json.RawMessage{
		"a":   json.RawMessage(`1`),
		"obj": json.RawMessage(`{"x":1,"nested":{"keep":true,"over":1}}`),
		"arr": json.RawMessage(`[1,2]`),
	}
	src := map[string]json.RawMessage{
		"b":   json.RawMessage(`2`),
		"obj": json.RawMessage(`{"y":2,"nested":{"over":2}}`),
		"arr": json.RawMessage(`[3]`),
	}
	require.NoError(t, Merge(dst, src))
	out, err := json.Marshal(dst)
	require.NoError(t, err)
	require.JSONEq(t, `{"a":1,"b":2,"arr":[3],"obj":{"x":1,"y":2,"nested":{"keep":true,"over":2}}}`, string(out))
}

func TestMergeObjectReplacesScalar(t *testing.T) {
	t.Parallel()
	dst := map[string]json.RawMessage{"k": json.RawMessage(`"s"`)}
	require.NoError(t, Merge(dst, map[string]json.RawMessage{"k": json.RawMessage(`{"a":1}`)}))
	require.JSONEq(t, `{"a":1}`, string(dst["k"]))
}

func TestCompareAndContains(t *testing.T) {
	t.Parallel()
	c, ok := Compare(1.0, 2.0)
	require.True(t, ok)
	require.Equal(t, -1, c)
	c, ok = Compare("b", "a")
	require.True(t, ok)
	require.Equal(t, 1, c)
	_, ok = Compare("1", 1.0)
	require.False(t, ok)

	require.True(t, Contains("hello world", "lo w"))
	require.True(t, Contains([]any{1.0, "x"}, "x"))
	require.True(t, Contains(map[string]any{"k": 1.0}, "k"))
	require.False(t, Contains(5.0, 5.0))

	n, err := Normalize(map[string]int{"a": 1})
	require.NoError(t, err)
	require.True(t, Equal(map[string]any{"a": 1.0}, n))
}
