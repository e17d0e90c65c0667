package cli

import (
	"bufio"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// jsonLines decodes JSON Lines output, one map a line, refusing anything
// else on stdout.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "not a JSON line: %q", sc.Text())
		objs = append(objs, m)
	}
	require.NoError(t, sc.Err())
	return objs
}

func jsonObject(t *testing.T, out string) map[string]any {
	t.Helper()
	objs := jsonLines(t, out)
	require.Len(t, objs, 1, out)
	return objs[0]
}

// Every listing and detail has a --json form that carries what the table
// shows, and the contexts and event data as JSON objects.
func TestJSONOutput(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		header, rows := parseTable(t, ok(t, url, "runs", "list"))
		require.Equal(t, "ID", header[0])
		id := rows[0][0]

		runs := jsonLines(t, ok(t, url, "runs", "list", "--json"))
		require.Len(t, runs, 1)
		require.Equal(t, id, runs[0]["id"])
		require.Equal(t, "demo", runs[0]["workflow"])
		require.Equal(t, "completed", runs[0]["status"])
		require.Contains(t, runs[0], "parent_run_id")
		require.Nil(t, runs[0]["parent_run_id"])
		created, err := time.Parse(time.RFC3339Nano, runs[0]["created_at"].(string))
		require.NoError(t, err)
		require.Equal(t, time.UTC, created.Location())
		require.Positive(t, runs[0]["duration_ms"])
		require.Empty(t, ok(t, url, "runs", "list", "--json", "--status", "failed"), "no runs is no lines")

		run := jsonObject(t, ok(t, url, "runs", "get", id, "--json"))
		require.Equal(t, id, run["id"])
		require.Equal(t, map[string]any{}, run["input"])
		require.Equal(t, float64(15), run["context"].(map[string]any)["sum"])
		tasks := run["tasks"].([]any)
		require.Len(t, tasks, 4)
		tb := tasks[2].(map[string]any)
		require.Equal(t, "transform_b", tb["name"])
		require.Equal(t, float64(2), tb["attempts"])

		task := jsonObject(t, ok(t, url, "runs", "get", id, "--task", "transform_b", "--json"))
		require.Equal(t, tb["id"], task["id"])
		require.Equal(t, id, task["run_id"])
		require.Equal(t, float64(3), task["max_attempts"])
		require.Equal(t, map[string]any{"n": float64(5), "records": []any{float64(1), float64(2), float64(3), float64(4), float64(5)}}, task["input"])
		require.Equal(t, float64(55), task["output"].(map[string]any)["sum_of_squares"])

		_, rows = parseTable(t, ok(t, url, "events", "list", "--run", id))
		events := jsonLines(t, ok(t, url, "events", "list", "--run", id, "--json"))
		require.Len(t, events, len(rows))
		for i, e := range events {
			require.Equal(t, rows[i][0], jsonNumber(e["seq"]), "the same events in the same order")
			require.Equal(t, id, e["run_id"])
			require.Equal(t, rows[i][3], e["type"])
			require.IsType(t, map[string]any{}, e["data"], "data is an object")
		}
		last := events[len(events)-1]
		require.Equal(t, "pipeline_completed", last["type"])
		require.Nil(t, last["task_id"])
		require.Nil(t, last["task"])
		retry := jsonLines(t, ok(t, url, "events", "list", "--run", id, "--type", "task_retry_scheduled", "--json"))
		require.Len(t, retry, 1)
		require.Equal(t, "transform_b", retry[0]["task"])
		data := retry[0]["data"].(map[string]any)
		require.Equal(t, float64(1), data["attempt"])
		require.Contains(t, data["error"], "simulated")
	})
}

// jsonNumber prints a decoded JSON integer as the table prints it.
func jsonNumber(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// --follow --json streams JSON Lines: every event of the run once, and
// no "no events" or table text.
func TestJSONFollowRun(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, started, release := startGateRunner(t, url)
		exec := startGate(t, r, started)

		f := startFollow(t, url, "--run", exec.ID().String(), "--json")
		f.out.waitFor(t, "task_started", func(out string) bool { return strings.Contains(out, `"type":"task_started"`) })
		release()
		require.Equal(t, ExitOK, f.wait(t), "stderr: %s", f.errs.String())

		lines := jsonLines(t, f.out.String())
		want, err := r.RunEvents(ctx, exec.ID())
		require.NoError(t, err)
		require.Len(t, lines, len(want), f.out.String())
		for i, e := range want {
			require.Equal(t, float64(e.SequenceNum), lines[i]["seq"], "each event once, in order")
			require.Equal(t, string(e.Type), lines[i]["type"])
		}
	})
}

// keys returns the sorted keys of a decoded JSON object.
func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// A --json object has the same keys whatever the state of what it shows:
// a value not there yet (an unfinished run's context, the output of a task
// that has not run) is null, not a missing key, so a script can rely on
// the shape it saw once.
func TestJSONShapeStable(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		r, started, release := startGateRunner(t, url)
		exec := startGate(t, r, started)
		id := exec.ID().String()

		runBefore := jsonObject(t, ok(t, url, "runs", "get", id, "--json"))
		waitBefore := jsonObject(t, ok(t, url, "runs", "get", id, "--task", "wait", "--json"))
		afterBefore := jsonObject(t, ok(t, url, "runs", "get", id, "--task", "after", "--json"))
		require.Nil(t, runBefore["context"], "an unfinished run has no context yet")
		require.Nil(t, afterBefore["input"], "a task not started has no input yet")

		release()
		_, err := exec.Wait(t.Context())
		require.NoError(t, err)
		runAfter := jsonObject(t, ok(t, url, "runs", "get", id, "--json"))
		waitAfter := jsonObject(t, ok(t, url, "runs", "get", id, "--task", "wait", "--json"))
		afterAfter := jsonObject(t, ok(t, url, "runs", "get", id, "--task", "after", "--json"))

		require.Equal(t, keys(runAfter), keys(runBefore), "runs get --json of a running and of a finished run")
		require.Equal(t, keys(waitAfter), keys(waitBefore), "runs get --task --json of a running and of a completed task")
		require.Equal(t, keys(afterAfter), keys(afterBefore), "runs get --task --json of a waiting and of a completed task")
		require.Equal(t, keys(waitAfter), keys(afterBefore), "runs get --task --json of any task")
	})
}
