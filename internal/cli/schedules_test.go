package cli

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// report is the workflow the test schedules run.
func report() *cloacina.Workflow {
	return cloacina.MustWorkflow("report", cloacina.Task{Name: "build", Run: func(context.Context, *cloacina.Context) error { return nil }})
}

// startScheduler opens a runner on url that declares schedules (of
// report) and starts it, which stores them; the test stops it when it
// has what it needs, and it is closed when the test ends.
func startScheduler(t *testing.T, url string, schedules ...cloacina.Schedule) *cloacina.Runner {
	t.Helper()
	r, err := cloacina.Open(t.Context(), url, &cloacina.Config{Workflows: []*cloacina.Workflow{report()}, Schedules: schedules,
		PollInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	require.NoError(t, r.Start(t.Context()))
	return r
}

// storeSchedules stores schedules in the database at url as a runner
// that declares them does when it starts, and stops that runner.
func storeSchedules(t *testing.T, url string, schedules ...cloacina.Schedule) {
	t.Helper()
	require.NoError(t, startScheduler(t, url, schedules...).Stop(t.Context()))
}

// storedSchedule reads schedule name through the library, with a runner
// closed at once: tests poll it, and a runner kept to the test's end per
// call used up the server's connections.
func storedSchedule(t *testing.T, url, name string) cloacina.ScheduleInfo {
	t.Helper()
	r, err := cloacina.Open(t.Context(), url, &cloacina.Config{})
	require.NoError(t, err)
	all, err := r.Schedules(t.Context())
	require.NoError(t, errors.Join(err, r.Close()))
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no schedule %q stored", name)
	return cloacina.ScheduleInfo{}
}

// twoSchedules stores nightly (03:00 in Paris, with an input and a
// lateness limit) and hourly (catching up every tick) in the database at
// url.
func twoSchedules(t *testing.T, url string) {
	t.Helper()
	paris, err := time.LoadLocation("Europe/Paris")
	require.NoError(t, err)
	in := cloacina.NewContext()
	require.NoError(t, in.Set("region", "eu"))
	storeSchedules(t, url,
		cloacina.Schedule{Name: "nightly", Workflow: "report", Cron: "0 3 * * *", Location: paris, Input: in, MaxLateness: 2 * time.Hour},
		cloacina.Schedule{Name: "hourly", Workflow: "report", Cron: "@hourly", CatchUp: cloacina.CatchUpAll},
	)
}

// The stored schedules as a table and as JSON Lines; pause, resume and
// delete change what they show, and delete needs --yes.
func TestSchedules(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "migrate")
		require.Equal(t, noSchedules+"\n", ok(t, url, "schedules", "list"))
		require.Empty(t, ok(t, url, "schedules", "list", "--json"), "no schedules is no lines")
		requireOneLineError(t, cli(t, "--database-url", url, "schedules", "pause", "nightly"), ExitFailure,
			`schedule not found: "nightly": the database holds none: declare schedules in Config.Schedules, and a runner stores them when it starts`)

		twoSchedules(t, url)
		nightly := storedSchedule(t, url, "nightly")
		hourly := storedSchedule(t, url, "hourly")
		list := func() []row {
			t.Helper()
			header, rows := parseTable(t, ok(t, url, "schedules", "list"))
			require.Equal(t, row{"NAME", "WORKFLOW", "CRON", "TIMEZONE", "CATCH UP", "STATE", "NEXT TICK", "LAST TICK", "LAST RUN", "FIRED"}, header)
			return rows
		}
		rows := list()
		require.Len(t, rows, 2)
		require.Equal(t, row{"hourly", "report", "@hourly", "UTC", "all", "active", formatTime(hourly.NextFireAt), "-", "-", "0"}, rows[0], "by name")
		require.Equal(t, row{"nightly", "report", "0 3 * * *", "Europe/Paris", "latest", "active", formatTime(nightly.NextFireAt), "-", "-", "0"}, rows[1])
		paris, err := time.LoadLocation("Europe/Paris")
		require.NoError(t, err)
		next := nightly.NextFireAt.In(paris)
		require.Equal(t, 3, next.Hour(), "03:00 Paris time")
		require.WithinDuration(t, time.Now(), next, 25*time.Hour)

		lines := jsonLines(t, ok(t, url, "schedules", "list", "--json"))
		require.Len(t, lines, 2)
		require.Equal(t, "hourly", lines[0]["name"])
		j := lines[1]
		require.Equal(t, "nightly", j["name"])
		require.Equal(t, "report", j["workflow"])
		require.Equal(t, "0 3 * * *", j["cron"])
		require.Equal(t, "Europe/Paris", j["timezone"])
		require.Equal(t, "latest", j["catch_up"])
		require.Equal(t, float64(2*time.Hour/time.Millisecond), j["max_lateness_ms"])
		require.Equal(t, "active", j["state"])
		require.Equal(t, map[string]any{"region": "eu"}, j["input"])
		require.Equal(t, float64(0), j["fired"])
		require.Equal(t, float64(0), j["skipped"])
		require.Equal(t, "allow", j["overlap"])
		for _, k := range []string{"last_tick_at", "last_run_id", "last_fired_at"} {
			require.Contains(t, j, k)
			require.Nil(t, j[k], k)
		}
		at, err := time.Parse(time.RFC3339Nano, j["next_fire_at"].(string))
		require.NoError(t, err)
		require.Equal(t, time.UTC, at.Location())
		require.True(t, nightly.NextFireAt.Equal(at), "%s, want %s", at, nightly.NextFireAt)
		require.Equal(t, float64(0), lines[0]["max_lateness_ms"], "no limit")

		out := ok(t, url, "schedules", "get", "nightly")
		fields, ticks, found := strings.Cut(out, "\n\n")
		require.True(t, found, out)
		fields += "\n"
		require.Contains(t, fields, "schedule      nightly\n")
		require.Contains(t, fields, "workflow      report\n")
		require.Contains(t, fields, "cron          0 3 * * *\n")
		require.Contains(t, fields, "timezone      Europe/Paris\n")
		require.Contains(t, fields, "catch up      latest\n")
		require.Contains(t, fields, "max lateness  2h0m0s\n")
		require.Contains(t, fields, "overlap       allow\n")
		require.NotContains(t, fields, "skipped", "shown only when a tick was skipped")
		require.Contains(t, fields, "state         active\n")
		require.Contains(t, fields, "next tick     "+formatTime(nightly.NextFireAt)+"\n")
		require.Contains(t, fields, "last run      -\n")
		require.Contains(t, fields, "fired         0\n")
		require.Contains(t, fields, "input         {\"region\":\"eu\"}\n")
		require.Equal(t, "no ticks fired yet\n", ticks)
		require.NotContains(t, ok(t, url, "schedules", "get", "hourly"), "max lateness", "shown only when set")
		detail := jsonObject(t, ok(t, url, "schedules", "get", "nightly", "--json"))
		require.Equal(t, "nightly", detail["name"])
		require.Equal(t, map[string]any{"region": "eu"}, detail["input"])
		require.Equal(t, []any{}, detail["ticks"])

		require.Equal(t, "schedule nightly is paused: no tick fires until it is resumed\n", ok(t, url, "schedules", "pause", "nightly"))
		require.Equal(t, "schedule nightly is paused: no tick fires until it is resumed\n", ok(t, url, "schedules", "pause", "nightly"),
			"pausing twice is harmless")
		require.True(t, storedSchedule(t, url, "nightly").Paused)
		rows = list()
		require.Equal(t, row{"nightly", "report", "0 3 * * *", "Europe/Paris", "latest", "paused", "-", "-", "-", "0"}, rows[1],
			"no next tick while paused")
		require.Equal(t, "active", rows[0][5], "only nightly is paused")
		lines = jsonLines(t, ok(t, url, "schedules", "list", "--json"))
		require.Equal(t, "paused", lines[1]["state"])
		require.Nil(t, lines[1]["next_fire_at"])
		require.Contains(t, ok(t, url, "schedules", "get", "nightly"), "state         paused\nnext tick     -\n")

		out = ok(t, url, "schedules", "resume", "nightly")
		nightly = storedSchedule(t, url, "nightly")
		require.False(t, nightly.Paused)
		require.Equal(t, "schedule nightly is active: next tick "+formatTime(nightly.NextFireAt)+"\n", out)
		require.Equal(t, row{"nightly", "report", "0 3 * * *", "Europe/Paris", "latest", "active", formatTime(nightly.NextFireAt)}, list()[1][:7])

		// Unknown names: one line, with the closest name when there is one.
		for _, cmd := range [][]string{{"get"}, {"pause"}, {"resume"}, {"delete", "--yes"}} {
			args := append([]string{"--database-url", url, "schedules", cmd[0], "nightli"}, cmd[1:]...)
			requireOneLineError(t, cli(t, args...), ExitFailure, `schedule not found: "nightli": did you mean "nightly"?`)
			args = append([]string{"--database-url", url, "schedules", cmd[0], "weekly_cleanup"}, cmd[1:]...)
			requireOneLineError(t, cli(t, args...), ExitFailure,
				`schedule not found: "weekly_cleanup": list them with Runner.Schedules or `+"`cloacina schedules list`")
		}

		// Without --yes nothing is deleted.
		requireOneLineError(t, cli(t, "--database-url", url, "schedules", "delete", "nightly"), ExitUsage,
			"deleting schedule nightly removes it and the record of its ticks for good (the runs it started stay): add --yes to confirm")
		require.Len(t, list(), 2)

		require.Equal(t, "schedule nightly deleted: remove it from Config.Schedules too, or a runner that declares it stores it again when it starts\n",
			ok(t, url, "schedules", "delete", "nightly", "--yes"))
		rows = list()
		require.Len(t, rows, 1)
		require.Equal(t, "hourly", rows[0][0])
		requireOneLineError(t, cli(t, "--database-url", url, "schedules", "get", "nightly"), ExitFailure,
			`schedule not found: "nightly"`)
		requireOneLineError(t, cli(t, "--database-url", url, "schedules", "delete", "nightly", "--yes"), ExitFailure,
			`schedule not found: "nightly"`)
	})
}

// get shows the ticks a schedule fired, newest first, with the runs they
// started; list shows the newest of them.
func TestScheduleTicks(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r := startScheduler(t, url, cloacina.Schedule{Name: "every_second", Workflow: "report", Cron: "* * * * * *"})
		require.Eventually(t, func() bool {
			ticks, err := r.ScheduleTicks(ctx, "every_second", 0)
			return err == nil && len(ticks) >= 2
		}, followDeadline, 10*time.Millisecond, "two ticks of a schedule that fires every second")
		require.NoError(t, r.Stop(ctx)) // no more ticks
		ticks, err := r.ScheduleTicks(ctx, "every_second", 0)
		require.NoError(t, err)
		s := storedSchedule(t, url, "every_second")
		require.Equal(t, int64(len(ticks)), s.Fired)

		out := ok(t, url, "schedules", "get", "every_second")
		fields, table, found := strings.Cut(out, "\n\n")
		require.True(t, found, out)
		fields += "\n"
		require.Contains(t, fields, "last tick   "+formatTime(ticks[0].At)+"\n")
		require.Contains(t, fields, "last run    "+ticks[0].RunID.String()+"\n")
		require.Contains(t, fields, "last fired  "+formatTime(ticks[0].FiredAt)+"\n")
		require.Contains(t, fields, "fired       "+jsonNumber(len(ticks))+"\n")
		header, rows := parseTable(t, table)
		require.Equal(t, row{"TICK", "RUN", "FIRED AT"}, header)
		require.Len(t, rows, len(ticks))
		for i, tk := range ticks {
			require.Equal(t, row{formatTime(tk.At), tk.RunID.String(), formatTime(tk.FiredAt)}, rows[i], "newest first")
		}
		require.True(t, ticks[0].At.After(ticks[1].At))

		_, rows = parseTable(t, strings.SplitN(ok(t, url, "schedules", "get", "every_second", "--limit", "1"), "\n\n", 2)[1])
		require.Equal(t, []row{{formatTime(ticks[0].At), ticks[0].RunID.String(), formatTime(ticks[0].FiredAt)}}, rows)

		_, rows = parseTable(t, ok(t, url, "schedules", "list"))
		require.Equal(t, row{formatTime(ticks[0].At), ticks[0].RunID.String(), jsonNumber(len(ticks))}, rows[0][7:])

		j := jsonObject(t, ok(t, url, "schedules", "get", "every_second", "--limit", "1", "--json"))
		require.Equal(t, ticks[0].RunID.String(), j["last_run_id"])
		require.Equal(t, float64(len(ticks)), j["fired"])
		jt := j["ticks"].([]any)
		require.Len(t, jt, 1)
		tick := jt[0].(map[string]any)
		require.Equal(t, ticks[0].RunID.String(), tick["run_id"])
		at, err := time.Parse(time.RFC3339Nano, tick["at"].(string))
		require.NoError(t, err)
		require.True(t, ticks[0].At.Equal(at))
		require.Equal(t, time.UTC, at.Location())

		// The tick's run is an ordinary run, whose input names its tick.
		run := ok(t, url, "runs", "get", ticks[0].RunID.String())
		require.Contains(t, run, "workflow   report (version ")
		require.Contains(t, run, `"schedule":"every_second"`)
	})
}

// list and get only read: on SQLite they leave the files as they were,
// and on PostgreSQL a role that may only read can run them but not
// pause, resume or delete.
func TestSchedulesReadOnly(t *testing.T) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		twoSchedules(t, "sqlite://"+path)
		before := testdb.DirFiles(t, filepath.Dir(path))
		for _, args := range [][]string{{"schedules", "list"}, {"schedules", "list", "--json"}, {"schedules", "get", "nightly"}, {"schedules", "get", "nightly", "--json"}} {
			require.Contains(t, ok(t, "sqlite://"+path, args...), "nightly", args)
			require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)), "cloacina %s changed the files", strings.Join(args, " "))
		}
	})
	t.Run("postgres select-only role", func(t *testing.T) {
		t.Parallel()
		schema := testdb.NewSchema(t)
		admin := testdb.WithSchema(testdb.PostgresURL(), schema)
		twoSchedules(t, admin)
		_, reader := testdb.SelectOnlyRoleURL(t, admin, schema)

		_, rows := parseTable(t, ok(t, reader, "schedules", "list"))
		require.Len(t, rows, 2)
		require.Contains(t, ok(t, reader, "schedules", "get", "nightly"), "state         active\n")
		for _, args := range [][]string{{"schedules", "pause", "nightly"}, {"schedules", "resume", "nightly"}, {"schedules", "delete", "nightly", "--yes"}} {
			requireOneLineError(t, cli(t, append([]string{"--database-url", reader}, args...)...), ExitFailure,
				"may not read and write table(s)")
		}
		s := storedSchedule(t, admin, "nightly")
		require.False(t, s.Paused, "the refused pause changed nothing")
	})
}

// Command-line mistakes are usage errors and a missing database is a
// failure, each one line, and neither creates a file.
func TestSchedulesBadInput(t *testing.T) {
	t.Parallel()
	const noDatabase = "no database at {path}: run `cloacina migrate` or `cloacina demo` first"
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"schedules"}, ExitUsage, "missing subcommand: use one of delete, get, list, pause, resume"},
		{[]string{"schedules", "lst"}, ExitUsage, `unknown command "lst": did you mean "list"?`},
		{[]string{"schedules", "list", "nightly"}, ExitUsage, `"schedules list" takes no arguments, got 1 argument`},
		{[]string{"schedules", "get"}, ExitUsage, `"schedules get" takes a schedule name, got none`},
		{[]string{"schedules", "pause", "a", "b"}, ExitUsage, `"schedules pause" takes a schedule name, got 2 arguments`},
		{[]string{"schedules", "resume"}, ExitUsage, `"schedules resume" takes a schedule name, got none`},
		{[]string{"schedules", "get", "nightly", "--limit", "0"}, ExitUsage, `"0" is not a count`},
		{[]string{"schedules", "delete", "nightly"}, ExitUsage, "add --yes to confirm (see `cloacina schedules delete --help`)"},
		{[]string{"schedules", "list"}, ExitFailure, noDatabase},
		{[]string{"schedules", "get", "nightly"}, ExitFailure, noDatabase},
		{[]string{"schedules", "pause", "nightly"}, ExitFailure, noDatabase},
		{[]string{"schedules", "resume", "nightly"}, ExitFailure, noDatabase},
		{[]string{"schedules", "delete", "nightly", "--yes"}, ExitFailure, noDatabase},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "cloacina.db")
			res := cli(t, append([]string{"--database-url", "sqlite://" + path}, tc.args...)...)
			requireOneLineError(t, res, tc.code, strings.ReplaceAll(tc.want, "{path}", path))
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries, "a failed command must not create files")
		})
	}
}

// startBusySchedule starts a runner of schedule "busy", every second
// with OverlapSkip, whose runs' one task waits until release (called
// before the runner closes, if not before): behind the first run, every
// tick is skipped.
func startBusySchedule(t *testing.T, url string) (r *cloacina.Runner, release func()) {
	t.Helper()
	released := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(released) }) }
	slow := cloacina.MustWorkflow("report", cloacina.Task{Name: "build", Run: func(ctx context.Context, _ *cloacina.Context) error {
		select {
		case <-released:
		case <-ctx.Done():
		}
		return nil
	}})
	r, err := cloacina.Open(t.Context(), url, &cloacina.Config{Workflows: []*cloacina.Workflow{slow}, PollInterval: 10 * time.Millisecond,
		Schedules: []cloacina.Schedule{{Name: "busy", Workflow: "report", Cron: "* * * * * *", Overlap: cloacina.OverlapSkip}},
		Logger:    slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	t.Cleanup(release) // before Close
	require.NoError(t, r.Start(t.Context()))
	return r, release
}

// A tick skipped by OverlapSkip shows in get as such, with its reason,
// and in JSON with no run.
func TestScheduleSkippedTicks(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := "sqlite://" + testdb.SQLitePath(t)
	r, release := startBusySchedule(t, url)
	var s cloacina.ScheduleInfo
	require.Eventually(t, func() bool {
		s = storedSchedule(t, url, "busy")
		return s.Skipped >= 1
	}, followDeadline, 10*time.Millisecond, "a tick skipped behind the first run")
	release()
	require.NoError(t, r.Stop(ctx))
	ticks, err := r.ScheduleTicks(ctx, "busy", 0)
	require.NoError(t, err)
	s = storedSchedule(t, url, "busy")

	out := ok(t, url, "schedules", "get", "busy")
	fields, table, found := strings.Cut(out, "\n\n")
	require.True(t, found, out)
	require.Contains(t, fields+"\n", "overlap     skip\n")
	require.Contains(t, fields+"\n", "skipped     "+jsonNumber(int(s.Skipped))+"\n")
	_, rows := parseTable(t, table)
	require.Len(t, rows, len(ticks))
	oldest := ticks[len(ticks)-1]
	require.Empty(t, oldest.Skipped, "the first tick fired")
	skipped := 0
	for i, tk := range ticks {
		if tk.Skipped == "" {
			continue
		}
		skipped++
		require.Equal(t, row{formatTime(tk.At), "skipped: run " + oldest.RunID.String() + " of the schedule is unfinished (OverlapSkip)",
			formatTime(tk.FiredAt)}, rows[i])
	}
	require.Equal(t, int(s.Skipped), skipped)

	j := jsonObject(t, ok(t, url, "schedules", "get", "busy", "--json"))
	require.Equal(t, "skip", j["overlap"])
	require.Equal(t, float64(s.Skipped), j["skipped"])
	for i, raw := range j["ticks"].([]any) {
		tick := raw.(map[string]any)
		if ticks[i].Skipped != "" {
			require.Nil(t, tick["run_id"])
			require.Equal(t, ticks[i].Skipped, tick["skipped"])
		} else {
			require.Equal(t, ticks[i].RunID.String(), tick["run_id"])
			require.NotContains(t, tick, "skipped")
		}
	}
}
