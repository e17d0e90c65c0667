package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

func (a *app) demoCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the built-in demo workflow and show its event timeline",
		Long: `demo runs the built-in "demo" workflow, a diamond

  fetch → {transform_a, transform_b} → merge

whose transform_b fails once and is retried, then prints the run's
execution events as a timeline and a summary. It creates and migrates the
database if needed (by default the SQLite file ` + DefaultDatabaseURL + `).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			intro := func() {
				fmt.Fprintf(a.stdout, "Running the demo workflow on %s\n", d)
				fmt.Fprintf(a.stdout, "fetch → {transform_a, transform_b} → merge; transform_b fails once and is retried after %s\n\n",
					formatDuration(demoRetryDelay))
			}
			res, events, err := a.execute(cmd.Context(), d, demoWorkflow(), nil, intro)
			if err != nil {
				return err
			}
			if err := writeTimeline(a.stdout, events); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout)
			return a.finish(res)
		},
	}
}

func (a *app) runCommand() *cobra.Command {
	var inputJSON string
	cmd := &cobra.Command{
		Use:   "run <workflow>",
		Short: "Run a built-in workflow and wait for it to finish",
		Long: `run executes one of the CLI's built-in workflows (today: ` + strings.Join(builtinNames(), ", ") + `) in this
process and prints a summary when it finishes. It exits with status 1 if the
run failed. --input is the run's input context, a JSON object.`,
		Example: `  cloacina run demo
  cloacina run demo --input '{"n": 10}'`,
		Args: exactArgs(1, "one workflow name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Everything the user typed is checked before the database is
			// touched, so a typo never creates a SQLite file.
			wf, err := lookupWorkflow(args[0])
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			input, err := parseInput(inputJSON)
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			res, _, err := a.execute(cmd.Context(), d, wf, input, func() {})
			if err != nil {
				return err
			}
			return a.finish(res)
		},
	}
	cmd.Flags().StringVar(&inputJSON, "input", "", `input context as a JSON object, e.g. '{"n":3}'`)
	return cmd
}

// parseInput decodes --input, which must be a JSON object.
func parseInput(s string) (*cloacina.Context, error) {
	if s == "" {
		return cloacina.NewContext(), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil || obj == nil {
		return nil, fmt.Errorf(`invalid --input %q: pass a JSON object such as '{"n":3}'`, s)
	}
	input := cloacina.NewContext()
	if err := input.UnmarshalJSON([]byte(s)); err != nil {
		return nil, fmt.Errorf("invalid --input: %w", err)
	}
	return input, nil
}

// execute runs wf to its end on a runner of its own and returns the result
// and the run's events. It calls opened once the database is open, so
// nothing is printed before a failure to open it.
func (a *app) execute(ctx context.Context, d *database, wf *cloacina.Workflow, input *cloacina.Context, opened func()) (res *cloacina.ExecutionResult, events []*cloacina.Event, err error) {
	r, err := a.open(ctx, d, openOrCreate, wf)
	if err != nil {
		return nil, nil, err
	}
	opened()
	defer func() {
		// Close waits for this runner's tasks, including tasks of other
		// runs it picked up, so none is left half done.
		if cerr := r.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("stop runner: %w", cerr)
		}
	}()
	if err := r.Start(ctx); err != nil {
		return nil, nil, fmt.Errorf("start runner: %w", err)
	}
	exec, err := r.ExecuteAsync(ctx, wf.Name(), input)
	if err != nil {
		return nil, nil, err
	}
	res, err = exec.Wait(ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, nil, fmt.Errorf("interrupted: run %s is unfinished; the next `cloacina run %s` on this database will finish it", exec.ID(), wf.Name())
		}
		return nil, nil, fmt.Errorf("wait for run %s: %w", exec.ID(), err)
	}
	if events, err = r.RunEvents(ctx, res.ID); err != nil {
		return nil, nil, fmt.Errorf("read events of run %s: %w", res.ID, err)
	}
	return res, events, nil
}

// finish prints a run's one-line summary and turns an unsuccessful run
// into the command's error.
func (a *app) finish(res *cloacina.ExecutionResult) error {
	writeSummary(a.stdout, res)
	return res.Err()
}

func writeSummary(w io.Writer, res *cloacina.ExecutionResult) {
	// Why a run failed is the command's error, printed on stderr.
	line := fmt.Sprintf("run %s: %s in %s", res.ID, res.Status, formatDuration(res.Duration))
	if res.Context != nil {
		line += ", final context " + res.Context.String()
	}
	fmt.Fprintln(w, line)
}
