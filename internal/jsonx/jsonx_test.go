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

func TestIntegerForms(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`1e2`:                           `100`,
		`1E+2`:                          `100`,
		`-1.50E+2`:                      `-150`,
		`100.0`:                         `100`,
		`1000e-3`:                       `1`,
		`0.5e1`:                         `5`,
		`-0.0`:                          `0`,
		`0e-99999999999999999999`:       `0`,
		`1.8446744073709551615e19`:      `18446744073709551615`,
		`[1.0,"2.0 \"3.0\"",{"k":4e0}]`: `[1,"2.0 \"3.0\"",{"k":4}]`,
	} {
		got, changed := IntegerForms([]byte(in))
		require.True(t, changed, in)
		require.Equal(t, want, string(got), in)
	}
	for _, in := range []string{`100`, `-7`, `1.5`, `100e-3`, `0.05e1`, `1e21`, `1e99999999999999999999`, `1e-7`,
		`12345678901234567890123`, `"1e2"`, `{"1.0":true}`, `[1,null,"x"]`} {
		got, changed := IntegerForms([]byte(in))
		require.False(t, changed, in)
		require.Equal(t, in, string(got), in)
	}
}
