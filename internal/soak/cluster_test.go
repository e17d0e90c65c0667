package soak

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// clusterPrefix starts the name of every private cluster; the test
// process's pid follows, so a later run can drop the clusters of runs that
// died before their cleanup.
const clusterPrefix = "cloacina_soak_"

// privateCluster is a PostgreSQL server of the test's own, made with
// Debian's postgresql-common tools, so the test can restart a server
// without disturbing the shared one other tests use.
type privateCluster struct {
	version string
	name    string
	port    int
}

// newPrivateCluster creates and starts a cluster on a free port, trusting
// local connections, and drops it when the test ends. Without
// postgresql-common the test fails: the restart test must not vanish
// quietly from a run.
func newPrivateCluster(t *testing.T) *privateCluster {
	t.Helper()
	for _, tool := range []string{"pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the PostgreSQL restart test needs %s, from Debian's postgresql-common, to create a private cluster it can restart "+
				"(the shared server must not be restarted under other tests): %v\n"+
				"install postgresql-common and a postgresql-<version> server package, and run the tests as root or as postgres", tool, err)
		}
	}
	version := newestServerVersion(t)
	dropStaleClusters(t, version)
	suffix := make([]byte, 4)
	_, err := rand.Read(suffix)
	require.NoError(t, err)
	c := &privateCluster{version: version, name: fmt.Sprintf("%s%d_%s", clusterPrefix, os.Getpid(), hex.EncodeToString(suffix)), port: freePort(t)}
	// fsync=off only drops durability against an OS crash: a restart,
	// even an immediate one, loses nothing that was committed.
	c.run(t, "pg_createcluster", c.version, c.name, "-p", strconv.Itoa(c.port), "-o", "fsync=off",
		"--", "--auth=trust", "--no-sync")
	t.Cleanup(func() {
		if out, err := exec.Command("pg_dropcluster", "--stop", c.version, c.name).CombinedOutput(); err != nil {
			t.Errorf("drop private cluster %s/%s: %v\n%s", c.version, c.name, err, out)
		}
	})
	c.run(t, "pg_ctlcluster", "--skip-systemctl-redirect", c.version, c.name, "start")
	c.waitReady(t)
	return c
}

// url returns a Cloacina URL on the cluster's postgres database.
func (c *privateCluster) url(schema string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&schema=%s", c.port, schema)
}

// restart restarts the server with a pg_ctl shutdown mode ("fast" rolls
// back open transactions and disconnects clients; "immediate" stops
// without a checkpoint, so the server recovers from its WAL at start) and
// returns how long the server was away.
func (c *privateCluster) restart(t *testing.T, mode string) time.Duration {
	t.Helper()
	start := time.Now()
	c.run(t, "pg_ctlcluster", "--skip-systemctl-redirect", "-m", mode, c.version, c.name, "restart")
	c.waitReady(t)
	return time.Since(start)
}

func (c *privateCluster) run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
}

// waitReady waits until the server accepts connections.
func (c *privateCluster) waitReady(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitUntil(t, ctx, 20*time.Millisecond, fmt.Sprintf("private cluster %s to accept connections", c.name), func(ctx context.Context) (bool, error) {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", c.port))
		if err != nil {
			return false, err
		}
		return true, conn.Close(ctx)
	})
}

// newestServerVersion returns the newest PostgreSQL major version with a
// server installed.
func newestServerVersion(t *testing.T) string {
	t.Helper()
	paths, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	var versions []int
	for _, p := range paths {
		if v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p)))); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		t.Fatal("the PostgreSQL restart test needs a PostgreSQL server installed under /usr/lib/postgresql/<version>: install a postgresql-<version> package")
	}
	sort.Ints(versions)
	return strconv.Itoa(versions[len(versions)-1])
}

// dropStaleClusters drops private clusters left by test processes that no
// longer exist (killed before their cleanup ran).
func dropStaleClusters(t *testing.T, version string) {
	t.Helper()
	out, err := exec.Command("pg_lsclusters", "-h").Output()
	require.NoError(t, err)
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != version || !strings.HasPrefix(f[1], clusterPrefix) {
			continue
		}
		pidText, _, _ := strings.Cut(strings.TrimPrefix(f[1], clusterPrefix), "_")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		if out, err := exec.Command("pg_dropcluster", "--stop", version, f[1]).CombinedOutput(); err != nil {
			t.Logf("drop stale private cluster %s: %v\n%s", f[1], err, out)
		}
	}
}

// freePort returns a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
