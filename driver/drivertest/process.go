package drivertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// claimerEnv carries a claimer process's instructions from
// StartClaimerProcess to ServeClaimerProcess.
const claimerEnv = "CLOACINA_DRIVERTEST_CLAIMER"

type claimerJob struct {
	Database string        `json:"database"`
	Config   ClaimerConfig `json:"config"`
}

// ServeClaimerProcess turns the test binary into a claimer when
// StartClaimerProcess started it, and returns at once otherwise. Call it
// first in the backend's TestMain. open opens the database named by the
// string the backend passed to StartClaimerProcess. The process prints
// "ready", waits for a line on stdin, claims until the outbox is empty,
// printing "claimed <task id>" per task, "started <pipeline id>" per
// pipeline it started and "transient <error>" per retried transaction,
// and exits.
func ServeClaimerProcess(open func(ctx context.Context, database string) (driver.Driver, error)) {
	raw := os.Getenv(claimerEnv)
	if raw == "" {
		return
	}
	if err := serveClaimer(raw, open); err != nil {
		fmt.Fprintln(os.Stderr, "claimer process:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serveClaimer(raw string, open func(ctx context.Context, database string) (driver.Driver, error)) error {
	var job claimerJob
	if err := json.Unmarshal([]byte(raw), &job); err != nil {
		return fmt.Errorf("decode %s: %w", claimerEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	drv, err := openRetrying(ctx, job.Database, open)
	if err != nil {
		return err
	}
	defer drv.Close()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	if err := out.Flush(); err != nil {
		return err
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("wait for the go signal: %w", err)
	}
	err = claimUntilEmpty(ctx, drv, job.Config, func(res *claimResult) {
		for _, id := range res.tasks {
			fmt.Fprintln(out, "claimed", id)
		}
		for _, id := range res.started {
			fmt.Fprintln(out, "started", id)
		}
		if res.transient != nil {
			fmt.Fprintln(out, "transient", strings.ReplaceAll(res.transient.Error(), "\n", " "))
		}
	})
	return errors.Join(err, out.Flush())
}

// openRetrying opens the driver, retrying transient failures until ctx
// ends: a PostgreSQL server busy with the rest of the suite can refuse a
// connection for a moment ("too many clients"), which says nothing about
// claiming.
func openRetrying(ctx context.Context, database string, open func(ctx context.Context, database string) (driver.Driver, error)) (driver.Driver, error) {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		drv, err := open(ctx, database)
		if err == nil || !errors.Is(err, driver.ErrTransient) {
			return drv, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

// ClaimerProcess is a claimer running in another OS process.
type ClaimerProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *bytes.Buffer
	done   chan claimerOutput
	waited bool
}

// claimerOutput is what a claimer process reported on stdout.
type claimerOutput struct {
	tasks, started []uuid.UUID
	transients     []string
	err            error
}

// StartClaimerProcess re-executes the running test binary as a claimer
// on database, a string the binary's ServeClaimerProcess open function
// understands, and returns once the process has opened the database. It
// claims nothing until [ClaimerProcess.Go]. The process is killed if it
// is still running when t ends.
func StartClaimerProcess(t *testing.T, database string, cfg ClaimerConfig) *ClaimerProcess {
	t.Helper()
	job, err := json.Marshal(claimerJob{Database: database, Config: cfg})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), claimerEnv+"="+string(job))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	p := &ClaimerProcess{cmd: cmd, stdin: stdin, stderr: &bytes.Buffer{}, done: make(chan claimerOutput, 1)}
	cmd.Stderr = p.stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if !p.waited {
			cmd.Process.Kill()
			<-p.done
			cmd.Wait()
		}
		cancel()
	})

	ready := make(chan struct{})
	go func() {
		var out claimerOutput
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "ready":
				close(ready)
			case strings.HasPrefix(line, "transient "):
				out.transients = append(out.transients, strings.TrimPrefix(line, "transient "))
			case strings.HasPrefix(line, "claimed "), strings.HasPrefix(line, "started "):
				kind, rest, _ := strings.Cut(line, " ")
				id, err := uuid.Parse(rest)
				if err != nil && out.err == nil {
					out.err = fmt.Errorf("claimer process: bad line %q", line)
				}
				if kind == "claimed" {
					out.tasks = append(out.tasks, id)
				} else {
					out.started = append(out.started, id)
				}
			default:
				if out.err == nil {
					out.err = fmt.Errorf("claimer process: unexpected output %q", line)
				}
			}
		}
		if err := sc.Err(); err != nil && out.err == nil {
			out.err = err
		}
		p.done <- out
	}()
	select {
	case <-ready:
		return p
	case out := <-p.done:
		p.done <- out
		p.waited = true
		err := cmd.Wait()
		t.Fatalf("claimer process exited before it was ready (%v; does TestMain call drivertest.ServeClaimerProcess?): %v\n%s",
			err, out.err, p.stderr.String())
	case <-ctx.Done():
		t.Fatalf("claimer process not ready: %v\n%s", ctx.Err(), p.stderr.String())
	}
	return nil
}

// Go lets the process start claiming.
func (p *ClaimerProcess) Go() error {
	_, err := io.WriteString(p.stdin, "go\n")
	return errors.Join(err, p.stdin.Close())
}

// Wait waits for the process to drain the outbox and exit, and returns
// the ids of the tasks it claimed and of the pipelines it started, and
// the transient errors it retried.
func (p *ClaimerProcess) Wait(t *testing.T) (tasks, started []uuid.UUID, transients []string) {
	t.Helper()
	out := <-p.done
	p.waited = true
	err := p.cmd.Wait()
	require.NoError(t, out.err)
	require.NoError(t, err, "claimer process failed:\n%s", p.stderr.String())
	return out.tasks, out.started, out.transients
}
