package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// runnerEnv carries a runner process's spec from startRunnerProcess to
// serveRunnerProcess.
const runnerEnv = "CLOACINA_SOAK_RUNNER"

// runnerSpec is what a runner process runs.
type runnerSpec struct {
	URL           string        `json:"url"`
	Name          string        `json:"name"`
	RunnerID      string        `json:"runner_id,omitempty"` // "": a new id per process
	Behaviour     behaviour     `json:"behaviour"`
	MaxConcurrent int           `json:"max_concurrent"`
	Poll          time.Duration `json:"poll"`
	Heartbeat     time.Duration `json:"heartbeat"`
	RunnerTimeout time.Duration `json:"runner_timeout"`
	// Cron, if set, declares the ticker schedule (see tickerSchedule)
	// firing on it.
	Cron string `json:"cron,omitempty"`
}

// serveRunnerProcess turns the test binary into a runner process when
// startRunnerProcess started it, and returns at once otherwise. The
// process opens a runner on the spec's database, starts it, prints
// "ready <runner id>", runs tasks until a line "stop" (or the end of
// stdin: the test process is gone), stops gracefully and exits 0.
func serveRunnerProcess() {
	raw := os.Getenv(runnerEnv)
	if raw == "" {
		return
	}
	if err := runRunnerProcess(raw); err != nil {
		fmt.Fprintln(os.Stderr, "runner process:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runRunnerProcess(raw string) error {
	var spec runnerSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return fmt.Errorf("decode %s: %w", runnerEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, closeDB, err := openRunner(ctx, spec, logger)
	if err != nil {
		return err
	}
	defer closeDB()
	defer r.Close()
	if err := r.Start(context.Background()); err != nil {
		return err
	}
	fmt.Printf("ready %s\n", r.ID())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() && strings.TrimSpace(sc.Text()) != "stop" {
	}
	return r.Close()
}

// openRunner opens a runner as spec says, with the soak workflow
// registered and recording its executions, and returns it with a function
// that closes what it opened besides the runner (close the runner first).
func openRunner(ctx context.Context, spec runnerSpec, logger *slog.Logger) (*cloacina.Runner, func(), error) {
	u, err := cloacina.ParseDatabaseURL(spec.URL)
	if err != nil {
		return nil, nil, err
	}
	cfg := &cloacina.Config{
		MaxConcurrentTasks: spec.MaxConcurrent,
		PollInterval:       spec.Poll,
		HeartbeatInterval:  spec.Heartbeat,
		RunnerTimeout:      spec.RunnerTimeout,
		RunnerID:           spec.RunnerID,
		RunnerName:         fmt.Sprintf("%s-%d", spec.Name, os.Getpid()),
		Logger:             logger,
	}
	if spec.Cron != "" {
		cfg.Workflows = []*cloacina.Workflow{tickerWorkflow()}
		cfg.Schedules = []cloacina.Schedule{tickerSchedule(spec.Cron)}
	}
	var r *cloacina.Runner
	var rec recorder
	closeDB := func() {}
	if u.Backend == "postgres" {
		// The application's own pool, shared with the runner, as an
		// application that records its own data would have it.
		pcfg, err := pgxpool.ParseConfig(u.DSN)
		if err != nil {
			return nil, nil, err
		}
		pcfg.MaxConns = int32(spec.MaxConcurrent + 4)
		pool, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return nil, nil, err
		}
		cfg.Schema = u.Schema
		if r, err = cloacina.OpenPool(ctx, pool, cfg); err != nil {
			pool.Close()
			return nil, nil, err
		}
		rec, closeDB = newPGRecorder(pool, u.Schema), pool.Close
	} else {
		if r, err = cloacina.Open(ctx, spec.URL, cfg); err != nil {
			return nil, nil, err
		}
		// The backend's writer connection, as its docs suggest for an
		// application's own statements on the same file.
		rec = &sqliteRecorder{db: r.Driver().(*sqlite.Driver).DB()}
	}
	if err := r.Register(newWorkflow(spec.Behaviour, rec)); err != nil {
		r.Close()
		closeDB()
		return nil, nil, err
	}
	return r, closeDB, nil
}

// runnerProcess is a runner running in another OS process.
type runnerProcess struct {
	name     string
	runnerID string
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   *tailBuffer
	exited   chan struct{} // closed once the process has been reaped
	waitErr  error         // cmd.Wait's error, set before exited closes
}

// startRunnerProcess re-executes the test binary as a runner process and
// returns once its runner has started. The process is killed and reaped
// when the test ends if it is still running.
func startRunnerProcess(t *testing.T, spec runnerSpec) *runnerProcess {
	t.Helper()
	raw, err := json.Marshal(spec)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runnerEnv+"="+string(raw))
	p := &runnerProcess{name: spec.Name, cmd: cmd, stderr: &tailBuffer{max: 64 << 10}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	p.stdin, err = cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	ready := make(chan string, 1)
	go func() {
		// The one reaper: read stdout to its end, then wait.
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				ready <- id
			}
		}
		io.Copy(io.Discard, stdout)
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	select {
	case p.runnerID = <-ready:
		return p
	case <-p.exited:
		t.Fatalf("runner process %s exited before it was ready: %v\n%s", spec.Name, p.waitErr, p.stderr)
	case <-time.After(time.Minute):
		t.Fatalf("runner process %s not ready after a minute\n%s", spec.Name, p.stderr)
	}
	return nil
}

// kill sends SIGKILL, reaps the process and returns the instant the
// signal was sent.
func (p *runnerProcess) kill(t *testing.T) time.Time {
	t.Helper()
	at := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("runner process %s (pid %d) not reaped 30s after SIGKILL", p.name, p.cmd.Process.Pid)
	}
	var exitErr *exec.ExitError
	if !errors.As(p.waitErr, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("runner process %s: want death by SIGKILL, got %v\n%s", p.name, p.waitErr, p.stderr)
	}
	return at
}

// stop asks the process to stop gracefully and waits until it exited 0.
func (p *runnerProcess) stop(t *testing.T) {
	t.Helper()
	_, err := io.WriteString(p.stdin, "stop\n")
	require.NoError(t, errors.Join(err, p.stdin.Close()))
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		t.Fatalf("runner process %s did not stop within a minute\n%s", p.name, p.stderr)
	}
	require.NoError(t, p.waitErr, "runner process %s failed:\n%s", p.name, p.stderr)
}

// tailBuffer keeps the last max bytes written to it: a runner process's
// log, shown when a test fails.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
