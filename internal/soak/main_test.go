package soak

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina"
)

func TestMain(m *testing.M) {
	// A runner process never returns from here.
	serveRunnerProcess()
	goleak.VerifyTestMain(m)
}

// testContext bounds everything one test does; a hang fails instead of
// blocking the suite.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond every interval until it reports true, failing the
// test when ctx ends first. It is for state only the database knows (other
// processes change it), where nothing can signal the test. Errors from
// cond are retried: the database may be restarting.
func waitUntil(t *testing.T, ctx context.Context, interval time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var lastErr error
	for {
		done, err := cond(ctx)
		if err == nil && done {
			return
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (last error: %v)", what, lastErr)
		case <-ticker.C:
		}
	}
}

// EnvReport names the file the soak figures are appended to.
const EnvReport = "CLOACINA_SOAK_REPORT"

var reportMu sync.Mutex

// report logs figures and appends them to the file named by EnvReport, so
// BENCHMARKS.md can quote a real run.
func report(t *testing.T, lines ...string) {
	t.Helper()
	for _, l := range lines {
		t.Log(l)
	}
	path := os.Getenv(EnvReport)
	if path == "" {
		return
	}
	reportMu.Lock()
	defer reportMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("write soak report: %v", err)
		return
	}
	defer f.Close()
	stamp := time.Now().UTC().Format(time.RFC3339)
	for _, l := range lines {
		fmt.Fprintf(f, "%s %s: %s\n", stamp, t.Name(), l)
	}
}

// durationStats summarises latencies.
type durationStats struct {
	n                int
	min, median, max time.Duration
}

func statsOf(ds []time.Duration) durationStats {
	if len(ds) == 0 {
		return durationStats{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return durationStats{n: len(s), min: s[0], median: med, max: s[len(s)-1]}
}

func (s durationStats) String() string {
	return fmt.Sprintf("n=%d median=%s max=%s min=%s", s.n, ms(s.median), ms(s.max), ms(s.min))
}

// ms prints a duration in milliseconds with one decimal.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

// joinDurations prints a list of durations.
func joinDurations(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = ms(d)
	}
	return strings.Join(parts, " ")
}

// openSubmitter opens the test process's own runner on url — it submits
// runs of the soak workflow with behaviour b and reads results, and runs
// no task — and the store of task executions, with its table created.
func openSubmitter(t *testing.T, ctx context.Context, url string, b behaviour) (*cloacina.Runner, *store) {
	t.Helper()
	submitter, err := cloacina.Open(ctx, url, &cloacina.Config{Workflows: []*cloacina.Workflow{newWorkflow(b, nil)},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, submitter.Close()) })
	st := openStore(t, url)
	require.NoError(t, st.createExecutionsTable(ctx))
	return submitter, st
}
