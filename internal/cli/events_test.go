package cli

import (
	"bytes"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func TestEventsList(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		ok(t, url, "run", "demo")
		runs := listRuns(t, url)
		require.Len(t, runs, 2)
		first, second := runs[0].ID.String(), runs[1].ID.String()

		list := func(args ...string) []row {
			t.Helper()
			out, _ := listed(t, url, args...)
			header, rows := parseTable(t, out)
			require.Equal(t, row{"SEQ", "TIME", "RUN", "EVENT", "TASK", "ATTEMPT"}, header[:6])
			return rows
		}
		requireNewestLast := func(rows []row) {
			t.Helper()
			for i := 1; i < len(rows); i++ {
				prev, _ := strconv.Atoi(rows[i-1][0])
				cur, _ := strconv.Atoi(rows[i][0])
				require.Less(t, prev, cur)
			}
		}

		// Default: the 50 most recent events, which here are all of them.
		rows := list()
		require.Len(t, rows, 50)
		requireNewestLast(rows)

		rows = list("--limit", "3")
		require.Len(t, rows, 3)
		requireNewestLast(rows)
		require.Equal(t, second, rows[2][2])
		require.Equal(t, "pipeline_completed", rows[2][3])

		rows = list("--run", first)
		require.Len(t, rows, 25)
		requireNewestLast(rows)
		for _, r := range rows {
			require.Equal(t, first, r[2])
		}

		rows = list("--type", "task_retry_scheduled")
		require.Len(t, rows, 2)
		for _, r := range rows {
			require.Equal(t, row{"task_retry_scheduled", "transform_b", "1"}, r[3:6])
		}

		// Types repeat or combine with commas, and combine with --run.
		rows = list("--run", first, "--type", "task_completed,pipeline_completed", "--type", "pipeline_started")
		require.Len(t, rows, 6)
		require.Equal(t, "pipeline_started", rows[0][3])
		require.Equal(t, "pipeline_completed", rows[5][3])

		run, err := openRunner(t, url).Get(t.Context(), runs[0].ID)
		require.NoError(t, err)
		rows = list("--task", run.Task("transform_b").ID.String())
		var types []string
		for _, r := range rows {
			require.Equal(t, "transform_b", r[4])
			types = append(types, r[3])
		}
		require.Equal(t, []string{"task_created", "task_marked_ready", "task_claimed", "task_started",
			"task_retry_scheduled", "task_claimed", "task_started", "task_completed"}, types)

		require.Equal(t, "no events\n", ok(t, url, "events", "list", "--type", "task_abandoned"))

		// With --run, --task takes the task's name, as runs get --task does.
		byID := ok(t, url, "events", "list", "--task", run.Task("transform_b").ID.String())
		require.Equal(t, byID, ok(t, url, "events", "list", "--run", runs[0].ID.String(), "--task", "transform_b"))
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--run", runs[0].ID.String(), "--task", "transfrom_b"), ExitFailure,
			`has no task "transfrom_b": its tasks are fetch, transform_a, transform_b`)
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--run", uuid.NewString(), "--task", "transform_b"), ExitFailure,
			"no run")

		// Paging back: the first SEQ shown bounds the next page.
		all := list("--limit", "8")
		page := list("--limit", "4")
		require.Equal(t, all[4:], page)
		require.Equal(t, all[:4], list("--limit", "4", "--before", page[0][0]))
		rows = list("--run", second, "--limit", "100", "--before", page[0][0])
		require.Len(t, rows, 25-4, "the second run's events but the 4 newest")
		requireNewestLast(rows)
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--before", "0"), ExitUsage,
			`"0" is not a sequence number: use an event's SEQ, a whole number of 1 or more`)
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--follow", "--before", "5"), ExitUsage,
			"--follow prints new events, and --before pages back through older ones: leave out one of them")

		// A time range, in the tables' format: from the second run's
		// start on, then up to it.
		runRows := list("--run", second)
		start := runRows[0][1]
		rows = list("--since", start, "--limit", "100")
		require.Len(t, rows, 25, "the second run's events, none of the first's")
		for _, r := range rows {
			require.Equal(t, second, r[2])
		}
		rows = list("--until", start, "--limit", "100")
		require.Len(t, rows, 25)
		for _, r := range rows {
			require.Equal(t, first, r[2])
		}
		require.Len(t, list("--since", "1h", "--limit", "100"), 50, "an age: everything here is younger")
		require.Equal(t, "no events\n", ok(t, url, "events", "list", "--until", "1h"))
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--since", "1h", "--until", "2h"), ExitUsage,
			"--since 1h is not before --until 2h: no event can match")
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--since", "yesterday"), ExitUsage,
			`"yesterday" is neither an age nor a time`)
	})
}

func TestEventsCleanup(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo") // 25 recent events
		insertOldEvents(t, url, 53, 40*24*time.Hour)
		countAll := func() int {
			_, rows := parseTable(t, ok(t, url, "events", "list", "--limit", "1000"))
			return len(rows)
		}
		require.Equal(t, 78, countAll())

		out := ok(t, url, "events", "cleanup", "--older-than", "30d", "--dry-run")
		require.Regexp(t, `^would delete 53 events older than 30d \(created before \d{4}-\d\d-\d\d [0-9:.]+Z\); nothing deleted \(dry run\)\n$`, out)
		require.Equal(t, 78, countAll())

		out = ok(t, url, "events", "cleanup", "--older-than", "30d", "--batch-size", "20")
		require.Regexp(t, fmt.Sprintf(`^%s%s%s%s$`,
			`deleted 20 of 53 events\n`,
			`deleted 40 of 53 events\n`,
			`deleted 53 of 53 events\n`,
			`deleted 53 events older than 30d \(created before [^)]+\)\n`), out)
		require.Equal(t, 25, countAll())

		// Recent events are untouched, and a second pass finds nothing.
		require.Regexp(t, `^no events older than 1d12h \(created before [^)]+\) to delete\n$`,
			ok(t, url, "events", "cleanup", "--older-than", "1d12h"))
		require.Regexp(t, `^would delete 0 events`, ok(t, url, "events", "cleanup", "--older-than", "720h", "--dry-run"))
	})
}

// Cleanup keeps the old events of unfinished runs unless told otherwise,
// says how many it kept, and its dry run counts what the same command
// deletes, with the flag or without.
func TestEventsCleanupKeepsUnfinishedRuns(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo") // 25 recent events
		const age = 40 * 24 * time.Hour
		running := insertOldRun(t, url, driver.PipelineRunning, 7, age)
		paused := insertOldRun(t, url, driver.PipelinePaused, 3, age)
		pending := insertOldRun(t, url, driver.PipelinePending, 2, age)
		insertOldRun(t, url, driver.PipelineCompleted, 5, age)
		insertOldRun(t, url, driver.PipelineFailed, 2, age)
		insertOldRun(t, url, driver.PipelineCancelled, 1, age)
		insertOldEvents(t, url, 3, age) // of a run that no longer exists
		countAll := func(args ...string) int {
			_, rows := parseTable(t, ok(t, url, append([]string{"events", "list", "--limit", "1000"}, args...)...))
			return len(rows)
		}
		require.Equal(t, 25+12+11, countAll())

		out := ok(t, url, "events", "cleanup", "--older-than", "30d", "--dry-run")
		require.Regexp(t, `^would delete 11 events older than 30d \(created before [^)]+\); nothing deleted \(dry run\)\n`+
			`would keep 12 older events of unfinished runs \(pending, running or paused\); --include-unfinished deletes them too\n$`, out)
		require.Equal(t, 25+12+11, countAll())

		out = ok(t, url, "events", "cleanup", "--older-than", "30d", "--batch-size", "5")
		require.Regexp(t, `^deleted 5 of 11 events\ndeleted 10 of 11 events\ndeleted 11 of 11 events\n`+
			`deleted 11 events older than 30d \(created before [^)]+\)\n`+
			`kept 12 older events of unfinished runs \(pending, running or paused\); --include-unfinished deletes them too\n$`, out)
		require.Equal(t, 25+12, countAll())
		require.Equal(t, 7, countAll("--run", running.String()))
		require.Equal(t, 3, countAll("--run", paused.String()))
		require.Equal(t, 2, countAll("--run", pending.String()))

		// A second pass deletes nothing and still says what it keeps.
		require.Regexp(t, `^no events older than 30d \(created before [^)]+\) to delete\n`+
			`kept 12 older events`, ok(t, url, "events", "cleanup", "--older-than", "30d"))

		// With the flag, by age alone: the dry run counts what goes.
		out = ok(t, url, "events", "cleanup", "--older-than", "30d", "--include-unfinished", "--dry-run")
		require.Regexp(t, `^would delete 12 events older than 30d \(created before [^)]+\); nothing deleted \(dry run\)\n$`, out)
		out = ok(t, url, "events", "cleanup", "--older-than", "30d", "--include-unfinished")
		require.Regexp(t, `^deleted 12 of 12 events\ndeleted 12 events older than 30d \(created before [^)]+\)\n$`, out)
		require.Equal(t, 25, countAll())
	})
}

func TestEventsCleanupHelpSaysTheDefault(t *testing.T) {
	t.Parallel()
	help := cli(t, "events", "cleanup", "--help")
	require.Equal(t, ExitOK, help.code)
	require.Contains(t, help.stdout, "By default it keeps every event of a run that is not finished")
	require.Regexp(t, `--include-unfinished\s+delete old events of unfinished \(pending, running, paused\) runs too; by default they are kept until the run finishes`, help.stdout)
}

func TestTimeFlag(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"90m":                       now.Add(-90 * time.Minute),
		"1d":                        now.Add(-24 * time.Hour),
		"2026-11-27T05:00:00Z":      time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC),
		"2026-11-27T07:00:00+02:00": time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC),
		"2026-11-27 05:00:00.250Z":  time.Date(2026, 11, 27, 5, 0, 0, 250e6, time.UTC),
		"2026-11-27 05:00":          time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC),
		"2026-11-27":                time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC),
	} {
		var f timeFlag
		require.NoError(t, f.Set(in), in)
		require.True(t, want.Equal(f.time(now)), "%s: got %s, want %s", in, f.time(now), want)
		require.Equal(t, in, f.String())
	}
	for _, in := range []string{"", "yesterday", "-1h", "27/11/2026", "2026-13-01"} {
		var f timeFlag
		require.ErrorContains(t, f.Set(in), "is neither an age nor a time", in)
	}
}

func TestParseAge(t *testing.T) {
	t.Parallel()
	day := 24 * time.Hour
	for in, want := range map[string]time.Duration{
		"30d": 30 * day, "1d": day, "1d12h": day + 12*time.Hour, "90m": 90 * time.Minute, "1.5h": 90 * time.Minute, " 7d ": 7 * day,
	} {
		got, err := parseAge(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "0d", "0s", "-1h", "-3d", "30x", "d", "30 d", "1d-2d", "99999999d"} {
		_, err := parseAge(in)
		require.ErrorContains(t, err, "use a positive duration such as 30d", in)
	}
}

// A listing longer than a page holds one page at a time: it is read newest
// first to find the pages, then printed page by page from the oldest. It
// prints what one read of the whole listing prints: the same rows in the
// same order (as a stream, with --follow's columns), and the same JSON
// Lines byte for byte.
func TestEventsListPagesALongListing(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		ok(t, url, "run", "demo")
		run := listRuns(t, url)[1].ID.String()
		paged := func(page int, args ...string) (string, string) {
			t.Helper()
			var stdout, stderr bytes.Buffer
			a := &app{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" },
				logger: slog.New(slog.NewTextHandler(&stderr, nil)), eventPage: page}
			code := a.main(t.Context(), append([]string{"--database-url", url, "events", "list"}, args...))
			require.Equal(t, ExitOK, code, "stderr:\n%s", stderr.String())
			if stderr.Len() > 0 {
				require.Regexp(t, olderEventsNote, stderr.String())
			}
			return stdout.String(), stderr.String()
		}
		for _, args := range [][]string{
			{"--limit", "40"},
			{"--limit", "35"},  // a multiple of the page
			{"--limit", "500"}, // more than there are
			{"--limit", "30", "--before", "45"},
			{"--limit", "20", "--run", run},
			{"--limit", "20", "--type", "task_completed,pipeline_completed"},
		} {
			whole, wholeNote := listed(t, url, args...)
			header, want := parseTable(t, whole)
			out, note := paged(7, args...)
			gotHeader, got := parseTable(t, out)
			require.Equal(t, header, gotHeader, "%v", args)
			require.Equal(t, want, got, "%v", args)
			require.Equal(t, wholeNote, note, "the same note on older events left out, %v", args)

			json := append([]string{"--json"}, args...)
			wholeJSON, wholeNote := listed(t, url, json...)
			out, note = paged(7, json...)
			require.Equal(t, wholeJSON, out, "%v", json)
			require.Equal(t, wholeNote, note, "%v", json)
		}
		out, note := paged(7, "--limit", "20", "--type", "task_abandoned")
		require.Equal(t, "no events\n", out)
		require.Empty(t, note)
		out, note = paged(7, "--limit", "20", "--type", "task_abandoned", "--json")
		require.Empty(t, out)
		require.Empty(t, note)
	})
}

// olderEventsNote is the line events list writes on stderr when it stops
// at its limit with older matching events left out.
var olderEventsNote = regexp.MustCompile(`^cloacina: (?:1 event|\d+ events) shown, older ones left out: page back with --before \d+, or raise --limit\n$`)

// listed runs events list with args against url and requires success,
// with nothing on stderr but, maybe, the note on older events left out,
// which it returns.
func listed(t *testing.T, url string, args ...string) (stdout, note string) {
	t.Helper()
	res := cli(t, append([]string{"--database-url", url, "events", "list"}, args...)...)
	require.Equal(t, ExitOK, res.code, "events list %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), res.stdout, res.stderr)
	if res.stderr != "" {
		require.Regexp(t, olderEventsNote, res.stderr)
	}
	return res.stdout, res.stderr
}

// A listing that stops at its limit says so on stderr, with the SEQ to
// page back from: events list --run used to show the newest 50 events of
// a longer run, starting mid-way through its story, without a sign that
// its start was left out. A listing that holds every matching event says
// nothing.
func TestEventsListSaysWhenOlderEventsAreLeftOut(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "run", "demo")
		ok(t, url, "run", "demo")
		run := listRuns(t, url)[0].ID.String()

		for _, args := range [][]string{{"--run", run, "--limit", "10"}, {"--run", run, "--limit", "10", "--json"}} {
			out, note := listed(t, url, args...)
			require.NotEmpty(t, note, "%v", args)
			// The note's SEQ pages back to the rest of the run's events.
			before := regexp.MustCompile(`--before (\d+)`).FindStringSubmatch(note)[1]
			require.Contains(t, note, "cloacina: 10 events shown")
			if !slices.Contains(args, "--json") {
				_, rows := parseTable(t, out)
				require.Equal(t, before, rows[0][0], "the oldest SEQ shown")
			}
			rest, restNote := listed(t, url, "--run", run, "--limit", "100", "--before", before)
			require.Empty(t, restNote, "nothing older is left out")
			_, rows := parseTable(t, rest)
			require.Len(t, rows, 25-10)
		}
		out, note := listed(t, url, "--run", run)
		require.Empty(t, note, "the run's 25 events are all shown")
		_, rows := parseTable(t, out)
		require.Len(t, rows, 25)
		_, note = listed(t, url, "--run", run, "--limit", "25")
		require.Empty(t, note, "a listing that reaches its limit with every event in it says nothing")
		_, note = listed(t, url, "--limit", "30")
		require.Regexp(t, `^cloacina: 30 events shown`, note, "the whole log holds 50")
	})
}
