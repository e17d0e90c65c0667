package cli

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

var summaryLine = regexp.MustCompile(`(?m)^run [0-9a-f-]{36}: completed in [0-9.]+(?:ms|s|m[0-9.]+s), final context (\{.*\})$`)

func TestDemo(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		out := ok(t, url, "demo")

		timeline, summary, found := strings.Cut(out, "\n\nrun ")
		require.True(t, found, "no summary after the timeline:\n%s", out)
		m := summaryLine.FindStringSubmatch("run " + summary)
		require.NotNil(t, m, "summary: %q", summary)
		require.Contains(t, m[1], `"mean":3,"n":5,"sum":15,"sum_of_squares":55,"variance":2`)

		_, table, _ := strings.Cut(timeline, "\n\n") // skip the introduction
		header, rows := parseTable(t, table)
		require.Equal(t, row{"SEQ", "T+MS", "EVENT", "TASK", "ATTEMPT", "DETAIL"}, header)
		require.Len(t, rows, 25, table)
		var events []string
		for _, r := range rows {
			events = append(events, r[2]+" "+r[3]+" "+r[4])
		}
		for _, want := range []string{
			"task_created transform_b -",
			"pipeline_started - -",
			"task_completed fetch 1",
			"task_retry_scheduled transform_b 1",
			"task_started transform_b 2",
			"task_completed transform_b 2",
			"task_completed merge 1",
		} {
			require.Contains(t, events, want, table)
		}
		require.Equal(t, "pipeline_completed - -", events[len(events)-1])
		for _, r := range rows {
			if r[2] == "task_retry_scheduled" {
				require.Regexp(t, `^error: upstream timed out \(simulated\); attempt 2 of 3 due \+\d+ms$`, r[5])
			}
		}

		// The columns line up: every EVENT cell starts where its header does.
		lines := strings.Split(table, "\n")
		col := strings.Index(lines[0], "EVENT")
		for _, l := range lines[1:] {
			if l == "" {
				continue
			}
			require.Regexp(t, `^[a-z]`, l[col:], "misaligned row %q", l)
			require.Equal(t, " ", l[col-1:col], "misaligned row %q", l)
		}

		// A second demo on the same database shows only its own run.
		again := ok(t, url, "demo")
		_, table, _ = strings.Cut(strings.Split(again, "\n\nrun ")[0], "\n\n")
		_, rows = parseTable(t, table)
		require.Len(t, rows, 25)
		first, err := strconv.Atoi(rows[0][0])
		require.NoError(t, err)
		require.Greater(t, first, 25, "sequence numbers grow across runs")
		require.Equal(t, "0", rows[0][1], "offsets start at the run's first event")
		require.Len(t, listRuns(t, url), 2)
	})
}

func TestRun(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		out := ok(t, url, "run", "demo", "--input", `{"n": 3}`)
		m := summaryLine.FindStringSubmatch(strings.TrimSpace(out))
		require.NotNil(t, m, out)
		require.Contains(t, m[1], `"n":3,"sum":6,"sum_of_squares":14`)

		// A run that fails is reported on both streams and exits 1.
		res := cli(t, "--database-url", url, "run", "demo", "--input", `{"n": 0}`)
		require.Equal(t, ExitFailure, res.code, res.stderr)
		require.Regexp(t, `^run [0-9a-f-]{36}: failed in [0-9.]+(?:ms|s)`, res.stdout)
		require.Equal(t, 1, strings.Count(res.stderr, "\n"), res.stderr)
		require.Regexp(t, `^cloacina: run [0-9a-f-]{36} of workflow "demo" failed: task "fetch" failed: input n is 0: pass a number of records between 1 and 10000\n$`, res.stderr)

		runs := listRuns(t, url)
		require.Len(t, runs, 2)
		require.Equal(t, cloacina.PipelineCompleted, runs[0].Status)
		require.Equal(t, cloacina.PipelineFailed, runs[1].Status)
	})
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		want := fmt.Sprintf(`^database .+ is at schema version %d\n$`, latestSchemaVersion(t))
		require.Regexp(t, want, ok(t, url, "migrate"))
		// Idempotent, and the database is now usable by read-only commands.
		require.Regexp(t, want, ok(t, url, "migrate"))
		require.Equal(t, "no runs\n", ok(t, url, "runs", "list"))
		require.Equal(t, "no events\n", ok(t, url, "events", "list"))
	})
}

func TestParseInput(t *testing.T) {
	t.Parallel()
	in, err := parseInput(`{"n": 3, "tags": ["a"]}`)
	require.NoError(t, err)
	require.Equal(t, `{"n":3,"tags":["a"]}`, in.String())
	in, err = parseInput("")
	require.NoError(t, err)
	require.Equal(t, 0, in.Len())
	for _, bad := range []string{`[1]`, `3`, `"x"`, `null`, `{`, `nope`} {
		_, err := parseInput(bad)
		require.ErrorContains(t, err, "pass a JSON object", bad)
	}
}
