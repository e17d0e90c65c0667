package cli

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// TestErrors runs every way a command line can go wrong and requires the
// same shape each time: a non-zero exit, one "cloacina: " line on stderr
// that names the fix, nothing on stdout, and no database file created.
func TestErrors(t *testing.T) {
	t.Parallel()
	const (
		unreachable = "postgres://postgres@127.0.0.1:1/x"
		refused     = "cannot connect to PostgreSQL at 127.0.0.1:1/x (connect: connection refused): check that the server is running and that the URL from --database-url is right"
		noDatabase  = "no database at {path}: run `cloacina migrate` or `cloacina demo` first"
		someID      = "01a2143a-9b16-7c6a-8bc8-03346e25dd9f"
	)
	misspelt := testdb.PostgresURL() + "?schem=x"
	if strings.Contains(testdb.PostgresURL(), "?") {
		misspelt = testdb.PostgresURL() + "&schem=x"
	}
	cases := []struct {
		name string
		args []string // --database-url is added, pointing into an empty directory, unless given
		env  map[string]string
		code int
		want string // {path} stands for the SQLite file
	}{
		{"mysql URL", []string{"--database-url", "mysql://x", "migrate"}, nil, ExitUsage,
			`invalid database URL (from --database-url): unsupported scheme "mysql": use sqlite:///absolute/path.db, sqlite://relative.db or postgres://`},
		{"sqlite URL without file", []string{"--database-url", "sqlite://", "demo"}, nil, ExitUsage, `"sqlite://" names no file: use sqlite:///absolute/path.db`},
		{"postgres URL without host", []string{"--database-url", "postgres://", "runs", "list"}, nil, ExitUsage, `"postgres://" has no host: use sqlite:///absolute/path.db`},
		{"empty URL flag", []string{"--database-url", "", "migrate"}, nil, ExitUsage, `invalid database URL (from --database-url): empty`},
		{"port out of range", []string{"--database-url", "postgres://u:pw@127.0.0.1:99999/test", "migrate"}, nil, ExitUsage,
			"invalid database URL (from --database-url): cannot parse `postgres://u:xxxxx@127.0.0.1:99999/test`: invalid port"},
		{"bad sslmode", []string{"--database-url", "postgres://127.0.0.1/test?sslmode=bogus", "runs", "list"}, nil, ExitUsage, "sslmode is invalid"},
		{"empty schema", []string{"--database-url", "postgres://127.0.0.1/test?schema=", "demo"}, nil, ExitUsage,
			"has an empty schema parameter: name the schema (schema=tenant_a), or leave the parameter out to use public"},
		{"misspelt URL parameter", []string{"--database-url", misspelt, "runs", "list"}, nil, ExitUsage,
			`sets a parameter PostgreSQL does not know (unrecognized configuration parameter "schem"): check the spelling of its query parameters`},
		{"bad URL from environment", []string{"demo"}, map[string]string{EnvDatabaseURL: "mysql://x"}, ExitUsage,
			`invalid database URL (from CLOACINA_DATABASE_URL): unsupported scheme "mysql"`},

		{"unreachable migrate", []string{"--database-url", unreachable, "migrate"}, nil, ExitFailure, refused},
		{"unreachable demo", []string{"--database-url", unreachable, "demo"}, nil, ExitFailure, refused},
		{"unreachable run", []string{"--database-url", unreachable, "run", "demo"}, nil, ExitFailure, refused},
		{"unreachable events list", []string{"--database-url", unreachable, "events", "list"}, nil, ExitFailure, refused},
		{"unreachable cleanup", []string{"--database-url", unreachable, "events", "cleanup", "--older-than", "30d"}, nil, ExitFailure, refused},
		{"unreachable runs cancel", []string{"--database-url", unreachable, "runs", "cancel", someID}, nil, ExitFailure, refused},
		{"unreachable with password", []string{"--database-url", "postgres://u:hunter2@127.0.0.1:1/x", "runs", "list"}, nil, ExitFailure,
			"cannot connect to PostgreSQL at 127.0.0.1:1/x"},

		{"unknown workflow", []string{"run", "demoo"}, nil, ExitUsage, `unknown workflow "demoo": did you mean "demo"? (see ` + "`cloacina run --help`)"},
		{"far-off workflow", []string{"run", "payroll"}, nil, ExitUsage, `unknown workflow "payroll": the built-in workflows are demo`},
		{"input not an object", []string{"run", "demo", "--input", "[1]"}, nil, ExitUsage, `invalid --input "[1]": pass a JSON object such as '{"n":3}'`},
		{"input not JSON", []string{"run", "demo", "--input", "n=3"}, nil, ExitUsage, `invalid --input "n=3"`},
		{"input PostgreSQL cannot read", []string{"run", "demo", "--input", `{"s":"\ud800"}`}, nil, ExitUsage,
			`invalid --input: context key "s": the value holds a lone UTF-16 surrogate (\ud800), which PostgreSQL's JSON functions cannot read`},

		{"events list without database", []string{"events", "list"}, nil, ExitFailure, noDatabase},
		{"dry-run cleanup without database", []string{"events", "cleanup", "--older-than", "30d", "--dry-run"}, nil, ExitFailure, noDatabase},
		{"cleanup without database", []string{"events", "cleanup", "--older-than", "30d"}, nil, ExitFailure, noDatabase},
		{"runs list without database", []string{"runs", "list"}, nil, ExitFailure, noDatabase},
		{"runs get without database", []string{"runs", "get", someID}, nil, ExitFailure, noDatabase},
		{"runs cancel without database", []string{"runs", "cancel", someID}, nil, ExitFailure, noDatabase},
		{"runs pause without database", []string{"runs", "pause", someID}, nil, ExitFailure, noDatabase},
		{"runs resume without database", []string{"runs", "resume", someID}, nil, ExitFailure, noDatabase},

		{"cleanup without age", []string{"events", "cleanup"}, nil, ExitUsage, "--older-than is required, e.g. --older-than 30d"},
		{"cleanup bad age", []string{"events", "cleanup", "--older-than", "30x"}, nil, ExitUsage, `"30x" is not an age: use a positive duration such as 30d, 12h or 1d12h`},
		{"cleanup zero age", []string{"events", "cleanup", "--older-than", "0d", "--dry-run"}, nil, ExitUsage, `"0d" is not an age`},
		{"cleanup zero batch", []string{"events", "cleanup", "--older-than", "30d", "--batch-size", "0"}, nil, ExitUsage, `"0" is not a count: use a whole number of 1 or more`},
		{"zero limit", []string{"events", "list", "--limit", "0"}, nil, ExitUsage, `"0" is not a count`},
		{"word limit", []string{"runs", "list", "--limit", "ten"}, nil, ExitUsage, `"ten" is not a count`},
		{"interval without follow", []string{"events", "list", "--interval", "1s"}, nil, ExitUsage, "--interval is how often --follow polls: add --follow, or leave --interval out"},
		{"until with follow", []string{"events", "list", "--follow", "--until", "1h"}, nil, ExitUsage,
			"--follow prints new events, and --until only older ones: leave out --until to follow, or --follow to list up to a time (see `cloacina events list --help`)"},
		{"zero interval", []string{"events", "list", "--follow", "--interval", "0s"}, nil, ExitUsage, `"0s" is not an interval: use a Go duration of 1ms or more`},
		{"misspelt event type", []string{"events", "list", "--type", "task_faild"}, nil, ExitUsage, `unknown value "task_faild": did you mean "task_failed"?`},
		{"unknown event type", []string{"events", "list", "--type", "started,zzz"}, nil, ExitUsage, `unknown value "started": use one of pipeline_started,`},
		{"bad run id flag", []string{"events", "list", "--run", "nope"}, nil, ExitUsage, `"nope" is not a run id: ids are UUIDs`},
		{"task name without run", []string{"events", "list", "--task", "nope"}, nil, ExitUsage, `--task "nope" is a task name, which needs --run with its run's id: add --run, or pass the task execution's id`},
		{"misspelt status", []string{"runs", "list", "--status", "runing"}, nil, ExitUsage, `unknown value "runing": did you mean "running"?`},
		{"bad run id", []string{"runs", "get", "nope"}, nil, ExitUsage, `"nope" is not a run id`},
		{"missing run id", []string{"runs", "cancel"}, nil, ExitUsage, `"runs cancel" takes one run id, got none`},
		{"extra argument", []string{"demo", "extra"}, nil, ExitUsage, `"demo" takes no arguments, got 1 argument`},
		{"unknown command", []string{"demoo"}, nil, ExitUsage, `unknown command "demoo": did you mean "demo"? (see ` + "`cloacina --help`)"},
		{"unknown subcommand", []string{"runs", "lst"}, nil, ExitUsage, `unknown command "lst": did you mean "list"?`},
		{"unknown help topic", []string{"help", "nonexist"}, nil, ExitUsage, `unknown command "nonexist": use one of demo, events, migrate, run, runs, schedules, status, tenant (see ` + "`cloacina --help`)"},
		{"misspelt help topic", []string{"help", "shedules"}, nil, ExitUsage, `unknown command "shedules": did you mean "schedules"? (see ` + "`cloacina --help`)"},
		{"unknown help subtopic", []string{"help", "runs", "foo"}, nil, ExitUsage, `unknown command "foo": use one of cancel, cleanup, get, list, pause, resume (see ` + "`cloacina runs --help`)"},
		{"help topic past a leaf", []string{"help", "runs", "list", "foo"}, nil, ExitUsage, `unknown command "foo": "runs list" has no subcommands (see ` + "`cloacina runs list --help`)"},
		{"missing subcommand", []string{"events"}, nil, ExitUsage, "missing subcommand: use one of cleanup, list"},
		{"unknown flag", []string{"--bogus"}, nil, ExitUsage, "unknown flag: --bogus"},
		{"flag of another command", []string{"migrate", "--input", "{}"}, nil, ExitUsage, "unknown flag: --input"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "cloacina.db")
			args := tc.args
			if !hasFlag(args, "--database-url") && tc.env == nil {
				args = append([]string{"--database-url", "sqlite://" + path}, args...)
			}
			res := cliEnv(t, tc.env, args...)
			requireOneLineError(t, res, tc.code, strings.ReplaceAll(tc.want, "{path}", path))
			require.NotContains(t, res.stderr, "hunter2")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries, "a failed command must not create files")
		})
	}
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// writeCommands are the commands that write, with arguments that name
// nothing in particular: they fail before they look.
func writeCommands() [][]string {
	const id = "0199c3e1-0000-7000-8000-000000000000"
	return [][]string{
		{"runs", "cancel", id},
		{"runs", "pause", id},
		{"runs", "resume", id},
		{"runs", "cleanup", "--older-than", "1d"},
		{"events", "cleanup", "--older-than", "1d"},
		{"schedules", "pause", "nightly"},
		{"schedules", "resume", "nightly"},
		{"schedules", "delete", "nightly", "--yes"},
	}
}

// TestErrorsUnmigrated covers databases that exist but hold no Cloacina
// tables, or older ones: every operator command, reading or writing, must
// say so, without the advice to migrate where that would set up Cloacina
// in another application's database, and leave the database alone.
func TestErrorsUnmigrated(t *testing.T) {
	t.Parallel()
	const outdated = "is not set up for this version of cloacina: run `cloacina migrate` first"
	operatorCommands := append(writeCommands(), readCommands("0199c3e1-0000-7000-8000-000000000000")...)
	t.Run("postgres misspelt schema", func(t *testing.T) {
		t.Parallel()
		schema := testdb.NewSchema(t)
		url := testdb.WithSchema(testdb.PostgresURL(), schema)
		for _, args := range operatorCommands {
			requireOneLineError(t, cli(t, append([]string{"--database-url", url}, args...)...), ExitFailure,
				"database PostgreSQL 127.0.0.1:5432/test (schema "+schema+") holds no Cloacina tables: check the schema name, or run `cloacina migrate` to set it up")
		}
		require.False(t, schemaExists(t, schema), "a command created the schema")
	})
	t.Run("postgres older schema", func(t *testing.T) {
		t.Parallel()
		url := testdb.PostgresSchemaURL(t)
		ok(t, url, "migrate")
		u, err := cloacina.ParseDatabaseURL(url)
		require.NoError(t, err)
		conn, err := pgx.Connect(t.Context(), testdb.PostgresURL())
		require.NoError(t, err)
		defer conn.Close(context.Background())
		migrations := pgx.Identifier{u.Schema, "cloacina_migrations"}.Sanitize()
		_, err = conn.Exec(t.Context(), "DELETE FROM "+migrations+" WHERE version = (SELECT max(version) FROM "+migrations+")")
		require.NoError(t, err)
		for _, args := range operatorCommands {
			requireOneLineError(t, cli(t, append([]string{"--database-url", url}, args...)...), ExitFailure,
				"database PostgreSQL 127.0.0.1:5432/test (schema "+u.Schema+") "+outdated)
		}
	})
	// A file of another application, in rollback-journal mode as SQLite
	// makes them: a write command that opened it for writing first would
	// switch it to WAL, rewriting its header.
	t.Run("sqlite another application's file", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		_, err = db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); INSERT INTO orders (item) VALUES ('tea')")
		require.NoError(t, err)
		require.NoError(t, db.Close())
		before := testdb.DirFiles(t, filepath.Dir(path))
		for _, args := range operatorCommands {
			res := cli(t, append([]string{"--database-url", "sqlite://" + path}, args...)...)
			require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)), "cloacina %s changed the files", strings.Join(args, " "))
			requireJournalMode(t, path, "delete")
			requireOneLineError(t, res, ExitFailure, "database "+path+" holds no Cloacina tables: check the path, or run `cloacina migrate` to set it up")
		}
	})
	t.Run("sqlite older schema", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		ok(t, "sqlite://"+path, "migrate")
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		_, err = db.Exec("DELETE FROM cloacina_migrations WHERE version = (SELECT max(version) FROM cloacina_migrations)")
		require.NoError(t, err)
		require.NoError(t, db.Close())
		before := testdb.DirFiles(t, filepath.Dir(path))
		for _, args := range operatorCommands {
			requireOneLineError(t, cli(t, append([]string{"--database-url", "sqlite://" + path}, args...)...), ExitFailure,
				"database "+path+" "+outdated)
			require.Equal(t, before, testdb.DirFiles(t, filepath.Dir(path)), "cloacina %s changed the files", strings.Join(args, " "))
		}
	})
	t.Run("sqlite empty file", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		require.NoError(t, os.WriteFile(path, nil, 0o644))
		for _, args := range operatorCommands {
			requireOneLineError(t, cli(t, append([]string{"--database-url", "sqlite://" + path}, args...)...), ExitFailure,
				"database "+path+" is an empty file: run `cloacina migrate` or `cloacina demo` first")
		}
		info, err := os.Stat(path)
		require.NoError(t, err)
		require.Zero(t, info.Size(), "a command wrote to the file")
	})
}

// requireJournalMode requires the SQLite database at path to be in the
// journal mode want, reading it without changing it.
func requireJournalMode(t *testing.T, path, want string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	require.NoError(t, err)
	defer db.Close()
	var mode string
	require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
	require.Equal(t, want, mode)
}

// A command that writes cannot use a SQLite file the user may not write:
// the error says so, and that read commands need no more than read
// access. Root writes anything, so the driver's error is given to
// openError directly.
func TestOpenErrorReadOnlySQLite(t *testing.T) {
	t.Parallel()
	parsed, err := cloacina.ParseDatabaseURL("sqlite:///srv/cloacina.db")
	require.NoError(t, err)
	d := &database{raw: "sqlite:///srv/cloacina.db", parsed: parsed, source: "--database-url"}
	err = d.openError(errors.New("sqlite: open /srv/cloacina.db: attempt to write a readonly database (8)"))
	require.ErrorContains(t, err, "cannot write database /srv/cloacina.db: this command changes the database, and SQLite may not write the file: "+
		"run it as a user who may write the file and its directory (commands that only read, such as `cloacina runs list`, need read access only)")
	// A file the process may not open for writing, or one on a read-only
	// file system, is refused by sqlite.Open before SQLite opens it.
	for _, cause := range []error{fs.ErrPermission, syscall.EROFS} {
		err = d.openError(fmt.Errorf("sqlite: %w (this process cannot write the database file)", &fs.PathError{Op: "open", Path: "/srv/cloacina.db", Err: cause}))
		require.ErrorContains(t, err, "cannot write database /srv/cloacina.db: this command changes the database", cause.Error())
	}
}

func schemaExists(t *testing.T, schema string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists))
	return exists
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{}, {"--help"}, {"help"}, {"events", "list", "--help"}, {"help", "runs"}, {"help", "runs", "list"}, {"help", "help"}} {
		res := cli(t, args...)
		require.Equal(t, ExitOK, res.code, "%v: %s", args, res.stderr)
		require.Contains(t, res.stdout, "Usage:", args)
		require.Empty(t, res.stderr, args)
	}
}

// TestDatabaseURLSources checks the order --database-url, then
// CLOACINA_DATABASE_URL, then the default file in the working directory.
func TestDatabaseURLSources(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	flagPath, envPath := filepath.Join(dir, "flag.db"), filepath.Join(dir, "env.db")
	env := map[string]string{EnvDatabaseURL: "sqlite://" + envPath}

	res := cliEnv(t, env, "--database-url", "sqlite://"+flagPath, "migrate")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.FileExists(t, flagPath)
	require.NoFileExists(t, envPath)

	res = cliEnv(t, env, "migrate")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, fmt.Sprintf("database %s is at schema version %d\n", envPath, latestSchemaVersion(t)), res.stdout)
}

// TestDefaultDatabaseURL cannot run in parallel: the default database is
// relative to the working directory, which it changes.
func TestDefaultDatabaseURL(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	wd, err := os.Getwd()
	require.NoError(t, err)
	path := filepath.Join(wd, "cloacina-demo.db")

	requireOneLineError(t, cli(t, "runs", "list"), ExitFailure, "no database at "+path+": run `cloacina migrate` or `cloacina demo` first")
	require.NoFileExists(t, path)

	res := cli(t, "migrate")
	require.Equal(t, ExitOK, res.code, res.stderr)
	require.Equal(t, fmt.Sprintf("database %s is at schema version %d\n", path, latestSchemaVersion(t)), res.stdout)
	require.FileExists(t, path)
}
