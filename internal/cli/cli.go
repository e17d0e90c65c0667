// Package cli implements the cloacina command. Every command is a plain
// function of its arguments, output writers and environment, so tests run
// the real command line against real databases without a subprocess.
//
// Errors are printed as exactly one line, "cloacina: <what went wrong and
// how to fix it>", on stderr. Exit status is 0 on success, 1 when the work
// failed (an unreachable database, a failed run) and 2 when the command
// line was wrong (an unknown command, a bad flag value, a bad URL); in
// both cases nothing is written to the database.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina/internal/dag"
)

// Exit statuses returned by Main.
const (
	// ExitOK means the command did what it was asked.
	ExitOK = 0
	// ExitFailure means the command was well formed but failed: the
	// database was unreachable, a run failed, a run id does not exist.
	ExitFailure = 1
	// ExitUsage means the command line was wrong: an unknown command or
	// flag, a missing argument, a malformed value or URL.
	ExitUsage = 2
)

// EnvDatabaseURL names the environment variable read when --database-url
// is not given.
const EnvDatabaseURL = "CLOACINA_DATABASE_URL"

// DefaultDatabaseURL is used when neither --database-url nor
// CLOACINA_DATABASE_URL is set: a SQLite file in the working directory.
const DefaultDatabaseURL = "sqlite://cloacina-demo.db"

// app is the state shared by the commands of one invocation.
type app struct {
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	logger *slog.Logger

	databaseURL string // --database-url

	// followPolled, when set, is called after each poll of events list
	// --follow --run (or --task) (a test hook).
	followPolled func()
	// eventPage, when positive, replaces eventPage: how many events
	// events list reads at once (a test hook).
	eventPage int
}

// Main runs the cloacina command line args (without the program name),
// writing results to stdout and errors to stderr, and returns the exit
// status. getenv reads the environment (os.Getenv in production).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		// The runner logs its lifecycle at Info; a CLI user only needs to
		// hear about trouble.
		logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	return a.main(ctx, args)
}

// main is Main for an app the caller made (tests set its hooks).
func (a *app) main(ctx context.Context, args []string) int {
	stdout, stderr := a.stdout, a.stderr
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(stderr, "cloacina: "+oneLine(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitFailure
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "cloacina",
		Short: "Run and operate Cloacina workflows",
		Long: `cloacina runs the built-in demo workflow and operates a Cloacina database:
migrations, runs, cron schedules and the execution event log.

The database is --database-url, else $` + EnvDatabaseURL + `, else ` + DefaultDatabaseURL + `
(a SQLite file in the working directory). URLs look like
  sqlite:///absolute/path.db
  sqlite://relative/path.db
  postgres://user:password@host:5432/database?sslmode=disable&schema=tenant_a

Commands that only read (runs list, runs get, status, schedules list, schedules
get, events list, runs cleanup --dry-run, events cleanup --dry-run) open the
database read-only and never change it.

Start with:  cloacina demo`,
		Args:          cobra.ArbitraryArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownCommand(cmd, args[0])
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.PersistentFlags().StringVar(&a.databaseURL, "database-url", "",
		"database URL (default $"+EnvDatabaseURL+", else "+DefaultDatabaseURL+")")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErrorf(cmd, "%v", err)
	})
	root.SetHelpCommand(helpCommand())
	root.AddCommand(a.demoCommand(), a.runCommand(), a.migrateCommand(), a.eventsCommand(), a.runsCommand(), a.schedulesCommand(), a.statusCommand(), a.tenantCommand())
	return root
}

// groupCommand returns a command that only holds subcommands: run bare or
// with an unknown subcommand it fails with a usage error instead of
// printing help and succeeding, as cobra would.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "missing subcommand: use one of %s", strings.Join(subcommandNames(cmd), ", "))
			}
			return unknownCommand(cmd, args[0])
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// helpCommand replaces cobra's help command, which prints the root's help
// and succeeds for a topic it does not know: here an unknown topic fails
// as the unknown command would.
func helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Long:  "help prints the help of a command: `cloacina help runs list` is `cloacina runs list --help`.",
		RunE: func(cmd *cobra.Command, args []string) error {
			topic, rest, err := cmd.Root().Find(args)
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if len(rest) > 0 {
				if !topic.HasAvailableSubCommands() {
					name := strings.TrimPrefix(topic.CommandPath(), topic.Root().Name()+" ")
					return usageErrorf(topic, "unknown command %q: %q has no subcommands", rest[0], name)
				}
				return unknownCommand(topic, rest[0])
			}
			topic.SetContext(cmd.Context())
			topic.InitDefaultHelpFlag()
			return topic.Help()
		},
	}
}

func subcommandNames(cmd *cobra.Command) []string {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return names
}

func unknownCommand(cmd *cobra.Command, name string) error {
	names := subcommandNames(cmd)
	if s := dag.Closest(name, names); s != "" {
		return usageErrorf(cmd, "unknown command %q: did you mean %q?", name, s)
	}
	return usageErrorf(cmd, "unknown command %q: use one of %s", name, strings.Join(names, ", "))
}

// exactArgs accepts exactly n positional arguments, described by what.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		name := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
		switch len(args) {
		case 0:
			return usageErrorf(cmd, "%q takes %s, got none", name, what)
		case 1:
			return usageErrorf(cmd, "%q takes %s, got 1 argument", name, what)
		}
		return usageErrorf(cmd, "%q takes %s, got %d arguments", name, what, len(args))
	}
}

// usageError is a mistake in the command line. When it concerns a
// command's shape (path set) its message ends by pointing at the
// command's help rather than dumping the usage text.
type usageError struct {
	msg  string
	path string
}

func (e *usageError) Error() string {
	if e.path == "" {
		return e.msg
	}
	return fmt.Sprintf("%s (see `%s --help`)", e.msg, e.path)
}

func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), path: cmd.CommandPath()}
}

// oneLine makes an error message fit on one line: multi-line driver
// messages are joined, and the library's own "cloacina: " prefix is
// dropped because Main adds it.
func oneLine(msg string) string {
	msg = strings.TrimPrefix(msg, "cloacina: ")
	lines := strings.Split(msg, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, " ")
}

// firstLine returns s up to its first newline, for table cells that hold
// error texts (a panic's stack trace would otherwise fill the screen).
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i]) + " …"
	}
	return s
}
