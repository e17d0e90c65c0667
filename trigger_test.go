package cloacina

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func statuses(m map[string]driver.TaskStatus) func(string) driver.TaskStatus {
	return func(name string) driver.TaskStatus { return m[name] }
}

func view(t *testing.T, js string) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(js), &m))
	return m
}

func TestDefaultRuleNeedsEveryDependencyCompleted(t *testing.T) {
	t.Parallel()
	var rule TriggerRule
	deps := []string{"a", "b"}
	run, _ := rule.evaluate(deps, statuses(map[string]driver.TaskStatus{"a": driver.TaskCompleted, "b": driver.TaskCompleted}), nil)
	require.True(t, run)
	run, reason := rule.evaluate(deps, statuses(map[string]driver.TaskStatus{"a": driver.TaskCompleted, "b": driver.TaskFailed}), nil)
	require.False(t, run)
	require.Equal(t, `upstream task "b" failed`, reason)
	run, reason = rule.evaluate(deps, statuses(map[string]driver.TaskStatus{"a": driver.TaskSkipped, "b": driver.TaskCompleted}), nil)
	require.False(t, run)
	require.Equal(t, `upstream task "a" was skipped`, reason)
}

func TestTaskConditions(t *testing.T) {
	t.Parallel()
	st := statuses(map[string]driver.TaskStatus{"ok": driver.TaskCompleted, "bad": driver.TaskFailed, "skip": driver.TaskSkipped})
	cases := []struct {
		rule TriggerRule
		run  bool
	}{
		{Always(), true},
		{All(TaskSuccess("ok"), TaskFailed("bad"), TaskSkipped("skip")), true},
		{All(TaskSuccess("ok"), TaskSuccess("bad")), false},
		{Any(TaskSuccess("bad"), TaskSkipped("skip")), true},
		{Any(TaskSuccess("bad"), TaskFailed("ok")), false},
		{None(TaskFailed("ok"), TaskSkipped("bad")), true},
		{None(TaskFailed("bad")), false},
	}
	for _, tc := range cases {
		run, reason := tc.rule.evaluate(nil, st, nil)
		require.Equal(t, tc.run, run, tc.rule.String())
		if !run {
			require.Equal(t, "trigger rule "+tc.rule.String()+" not satisfied", reason)
		}
	}
}

func TestContextValueOperators(t *testing.T) {
	t.Parallel()
	ctx := view(t, `{"n": 5, "s": "hello world", "list": ["a", 1], "obj": {"k": true}, "null": null,
		"id": 9007199254740993, "f": 1.0, "nested": {"a": [1, 2.50]}}`)
	cases := []struct {
		cond Condition
		want bool
	}{
		{ContextValue("n", OpEquals, 5), true},
		{ContextValue("n", OpEquals, 5.0), true},
		{ContextValue("n", OpEquals, "5"), false},
		{ContextValue("missing", OpEquals, 5), false},
		{ContextValue("n", OpNotEquals, 6), true},
		{ContextValue("n", OpNotEquals, 5), false},
		{ContextValue("missing", OpNotEquals, 5), true},
		{ContextValue("n", OpGreaterThan, 4), true},
		{ContextValue("n", OpGreaterThan, 5), false},
		{ContextValue("s", OpGreaterThan, "a"), true},
		{ContextValue("s", OpGreaterThan, 1), false},
		{ContextValue("n", OpLessThan, 10), true},
		{ContextValue("n", OpLessThan, 5), false},
		{ContextValue("missing", OpLessThan, 5), false},
		{ContextValue("s", OpContains, "lo w"), true},
		{ContextValue("s", OpContains, "xyz"), false},
		{ContextValue("list", OpContains, "a"), true},
		{ContextValue("list", OpContains, 1), true},
		{ContextValue("list", OpContains, 2), false},
		{ContextValue("obj", OpContains, "k"), true},
		{ContextValue("s", OpNotContains, "xyz"), true},
		{ContextValue("s", OpNotContains, "hello"), false},
		{ContextValue("missing", OpNotContains, "x"), true},
		{ContextValue("n", OpExists, nil), true},
		{ContextValue("null", OpExists, nil), true},
		{ContextValue("missing", OpExists, nil), false},
		{ContextValue("missing", OpNotExists, nil), true},
		{ContextValue("n", OpNotExists, nil), false},
		{ContextValue("obj", OpEquals, map[string]bool{"k": true}), true},
		// Numbers compare exactly: 2^53+1 is not 2^53, and 1.0 is 1.
		{ContextValue("id", OpEquals, int64(9007199254740992)), false},
		{ContextValue("id", OpEquals, int64(9007199254740993)), true},
		{ContextValue("id", OpGreaterThan, int64(9007199254740992)), true},
		{ContextValue("id", OpLessThan, uint64(9007199254740994)), true},
		{ContextValue("f", OpEquals, 1), true},
		{ContextValue("nested", OpEquals, map[string][]float64{"a": {1.0, 2.5}}), true},
		{ContextValue("list", OpContains, 1.0), true},
	}
	for _, tc := range cases {
		run, _ := All(tc.cond).evaluate(nil, statuses(nil), ctx)
		require.Equal(t, tc.want, run, tc.cond.String())
	}
}

func TestRuleStrings(t *testing.T) {
	t.Parallel()
	require.Equal(t, "all_success", TriggerRule{}.String())
	require.Equal(t, `any(task_failed("a"), context_value("n" greater_than 3), context_value("k" exists))`,
		Any(TaskFailed("a"), ContextValue("n", OpGreaterThan, 3), ContextValue("k", OpExists, nil)).String())
}
