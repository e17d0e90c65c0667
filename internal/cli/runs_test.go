package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

// heldWorkflow is started but never executed in these tests (no runner is
// started for it), so its run stays pending for the operator commands.
func heldWorkflow() *cloacina.Workflow {
	noop := func(context.Context, *cloacina.Context) error { return nil }
	return cloacina.MustWorkflow("held",
		cloacina.Task{Name: "first", Run: noop},
		cloacina.Task{Name: "second", DependsOn: []string{"first"}, Run: noop},
	)
}

func TestRuns(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		exec, err := openRunner(t, url, heldWorkflow()).ExecuteAsync(t.Context(), "held", nil)
		require.NoError(t, err)
		held := exec.ID().String()

		list := func(args ...string) []row {
			t.Helper()
			res := cli(t, append([]string{"--database-url", url, "runs", "list"}, args...)...)
			require.Equal(t, ExitOK, res.code, "stderr:\n%s", res.stderr)
			if slices.Contains(args, "--limit") {
				require.Regexp(t, `^(?:cloacina: (?:1 run|\d+ runs) shown, older ones left out: page on with --after [0-9a-f-]{36}, or raise --limit\n)?$`, res.stderr)
			} else {
				require.Empty(t, res.stderr, "every run is shown")
			}
			header, rows := parseTable(t, res.stdout)
			require.Equal(t, row{"ID", "WORKFLOW", "STATUS", "CREATED", "DURATION"}, header[:5])
			return rows
		}
		rows := list()
		require.Len(t, rows, 2)
		require.Equal(t, row{held, "held", "pending"}, rows[0][:3], "newest first")
		require.Equal(t, row{"demo", "completed"}, rows[1][1:3])
		require.Regexp(t, `^(?:\d+ms|[0-9.]+s|\d+m[0-9.]+s)$`, rows[1][4], "a duration as formatDuration prints it (over a second on a loaded machine)")
		demo := ok(t, url, "runs", "get", rows[1][0], "--task", "transform_b")
		require.Contains(t, demo, "status     completed\n")
		require.Contains(t, demo, "attempts   2 of 3\n", "the demo's transform_b fails once")
		require.Contains(t, demo, "input      {\"n\":5,\"records\":[1,2,3,4,5]}\n")
		require.Contains(t, demo, "output     {\"n\":5,\"records\":[1,2,3,4,5],\"sum_of_squares\":55}\n")
		require.Len(t, list("--limit", "1"), 1)
		rows = list()
		created := rows[0][3] // held's, in the table's format
		rows = list("--since", created)
		require.Len(t, rows, 1)
		require.Equal(t, held, rows[0][0])
		rows = list("--until", created)
		require.Len(t, rows, 1)
		require.Equal(t, "demo", rows[0][1])
		require.Len(t, list("--since", "1h"), 2)
		require.Equal(t, "no runs\n", ok(t, url, "runs", "list", "--until", "1h"))
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "list", "--since", "1h", "--until", "1d"), ExitUsage,
			"--since 1h is not before --until 1d: no run can match")
		require.Len(t, list("--workflow", "demo"), 1)
		rows = list("--status", "pending,running", "--status", "paused")
		require.Len(t, rows, 1)
		require.Equal(t, held, rows[0][0])
		require.Equal(t, "no runs\n", ok(t, url, "runs", "list", "--status", "failed"))

		out := ok(t, url, "runs", "get", held)
		fields, tasks, found := strings.Cut(out, "\n\n")
		fields += "\n"
		require.True(t, found, out)
		require.Contains(t, fields, "run        "+held+"\n")
		require.Contains(t, fields, "workflow   held (version ")
		require.Contains(t, fields, "status     pending\n")
		require.Contains(t, fields, "completed  -\n")
		header, taskRows := parseTable(t, tasks)
		require.Equal(t, row{"TASK", "STATUS", "ATTEMPTS", "DURATION", "TASK ID"}, header[:5])
		require.Len(t, taskRows, 2)
		require.Equal(t, row{"first", "ready", "1", "-"}, taskRows[0][:4])
		require.Equal(t, row{"second", "not_started", "0", "-"}, taskRows[1][:4])
		_, err = uuid.Parse(taskRows[0][4])
		require.NoError(t, err)
		require.Contains(t, fields, "input      {}\n")

		// One task, with its contexts.
		out = ok(t, url, "runs", "get", held, "--task", "first")
		require.Contains(t, out, "task       first ("+taskRows[0][4]+")\n")
		require.Contains(t, out, "run        "+held+" (held)\n")
		require.Contains(t, out, "status     ready\n")
		require.Contains(t, out, "attempts   1 of 1\n")
		require.Contains(t, out, "input      {}\n")
		require.Contains(t, out, "output     -\n")
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "get", held, "--task", "third"), ExitFailure,
			"run "+held+` has no task "third": its tasks are first, second`)
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "get", held, "--task", ""), ExitUsage,
			"--task needs a task name")

		require.Equal(t, "run "+held+" is paused\n", ok(t, url, "runs", "pause", held))
		require.Equal(t, "run "+held+" is paused\n", ok(t, url, "runs", "pause", held), "pausing twice is harmless")
		require.Equal(t, held, list("--status", "paused")[0][0])
		require.Equal(t, "run "+held+" is pending\n", ok(t, url, "runs", "resume", held))
		require.Equal(t, "run "+held+" is cancelled\n", ok(t, url, "runs", "cancel", held))
		require.Equal(t, "run "+held+" is cancelled\n", ok(t, url, "runs", "cancel", held), "cancelling twice is harmless")

		_, taskRows = parseTable(t, strings.SplitN(ok(t, url, "runs", "get", held), "\n\n", 2)[1])
		for _, r := range taskRows {
			require.Equal(t, "skipped", r[1])
			require.Equal(t, "run cancelled", r[5])
		}
		_, evRows := parseTable(t, ok(t, url, "events", "list", "--run", held, "--type", "pipeline_paused,pipeline_resumed,pipeline_cancelled"))
		require.Len(t, evRows, 3, "repeated pause and cancel are no-ops")

		// Finished runs and unknown ids are failures with one clear line.
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "pause", held), ExitFailure,
			"run "+held+" already finished: only pending, running and paused runs can be cancelled, paused or resumed")
		missing := uuid.Must(uuid.NewV7()).String()
		for _, cmd := range []string{"get", "cancel", "pause", "resume"} {
			requireOneLineError(t, cli(t, "--database-url", url, "runs", cmd, missing), ExitFailure,
				"no run "+missing+" in this database: list runs with `cloacina runs list`")
		}
	})
}

// A run started from inside a task shows its parent: a PARENT column in
// the listing, --parent for the children of a run, and the parent run
// and task in the run's detail.
func TestRunsShowParents(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		var r *cloacina.Runner
		child := cloacina.MustWorkflow("child", cloacina.Task{Name: "c", Run: func(context.Context, *cloacina.Context) error { return nil }})
		parent := cloacina.MustWorkflow("parent", cloacina.Task{Name: "spawn", Run: func(ctx context.Context, _ *cloacina.Context) error {
			res, err := r.Execute(ctx, "child", nil)
			if err != nil {
				return err
			}
			return res.Err()
		}})
		r, err := cloacina.Open(t.Context(), url, &cloacina.Config{Workflows: []*cloacina.Workflow{parent, child},
			Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, r.Close()) })
		require.NoError(t, r.Start(t.Context()))
		res, err := r.Execute(t.Context(), "parent", nil)
		require.NoError(t, err)
		require.NoError(t, res.Err())
		pid := res.ID.String()

		header, rows := parseTable(t, ok(t, url, "runs", "list"))
		require.Equal(t, row{"ID", "WORKFLOW", "STATUS", "CREATED", "DURATION", "PARENT", "ERROR"}, header)
		require.Len(t, rows, 2)
		require.Equal(t, row{"child", "completed"}, rows[0][1:3])
		require.Equal(t, pid, rows[0][5])
		require.Equal(t, row{pid, "parent", "completed"}, rows[1][:3])
		require.Equal(t, "-", rows[1][5], "a run started outside a task has no parent")
		childID := rows[0][0]

		_, rows = parseTable(t, ok(t, url, "runs", "list", "--parent", pid))
		require.Len(t, rows, 1)
		require.Equal(t, childID, rows[0][0])
		require.Equal(t, "no runs\n", ok(t, url, "runs", "list", "--parent", childID))
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "list", "--parent", "nope"), ExitUsage, "--parent:")

		out := ok(t, url, "runs", "get", childID)
		require.Contains(t, out, "\nparent       "+pid+"\n")
		require.Contains(t, out, "\nparent task  spawn ("+res.Task("spawn").ID.String()+")\n")
		require.NotContains(t, ok(t, url, "runs", "get", pid), "\nparent ")
	})
}

// A listing that stops at its limit says so on stderr, as events list
// does: runs list used to show the newest 50 runs (a schedule ticking
// every few seconds makes that a few minutes' worth) with no sign of the
// rest. A listing that holds every matching run says nothing.
func TestRunsListSaysWhenOlderRunsAreLeftOut(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		ok(t, url, "run", "demo")
		ok(t, url, "run", "demo")
		var all []string // every run's id, newest first
		for _, line := range strings.Split(strings.TrimSpace(cli(t, "--database-url", url, "runs", "list", "--json").stdout), "\n") {
			var run struct{ ID string }
			require.NoError(t, json.Unmarshal([]byte(line), &run))
			all = append(all, run.ID)
		}
		require.Len(t, all, 3)
		note := func(n int, last string) string {
			return fmt.Sprintf("cloacina: %s shown, older ones left out: page on with --after %s, or raise --limit\n", plural(n, "run"), last)
		}
		for _, json := range []bool{false, true} {
			args := []string{"--database-url", url, "runs", "list", "--limit", "2"}
			if json {
				args = append(args, "--json")
			}
			res := cli(t, args...)
			require.Equal(t, ExitOK, res.code, res.stderr)
			require.Equal(t, note(2, all[1]), res.stderr, "json %t", json)
			require.Len(t, strings.Split(strings.TrimSpace(res.stdout), "\n"), map[bool]int{false: 3, true: 2}[json], "json %t", json)
		}
		require.Empty(t, cli(t, "--database-url", url, "runs", "list", "--limit", "3").stderr, "every run is shown")
		res := cli(t, "--database-url", url, "runs", "list", "--limit", "1", "--workflow", "demo", "--since", "1h")
		require.Equal(t, note(1, all[0]), res.stderr, "the filters apply to the runs left out too")
		require.Empty(t, cli(t, "--database-url", url, "runs", "list", "--limit", "1", "--workflow", "nope").stderr)

		// Paging on with --after, one run a page, walks every run once,
		// newest first, and the last page says nothing.
		var paged []string
		args := []string{"--database-url", url, "runs", "list", "--limit", "1", "--json", "--since", "1h"}
		for page := 0; ; page++ {
			require.Less(t, page, 4, "the pages end")
			res := cli(t, args...)
			require.Equal(t, ExitOK, res.code, res.stderr)
			var run struct{ ID string }
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &run))
			paged = append(paged, run.ID)
			if res.stderr == "" {
				break
			}
			require.Equal(t, note(1, run.ID), res.stderr)
			args = append(args[:9:9], "--after", run.ID)
		}
		require.Equal(t, all, paged)
		res = cli(t, "--database-url", url, "runs", "list", "--after", all[2])
		require.Equal(t, "no runs\n", res.stdout, "nothing is older than the oldest")
		res = cli(t, "--database-url", url, "runs", "list", "--after", "01a22064-77fd-739d-823f-014211cc5306")
		require.Equal(t, ExitFailure, res.code, res.stderr)
		require.Contains(t, res.stderr, "no run 01a22064-77fd-739d-823f-014211cc5306 in this database")
	})
}
