package sqlite_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// A database this process may not write (no write permission on the
// file or its directory, or a read-only file system) fails Open with an
// error that says so and names the read-only open, which can read it;
// SQLite alone says "unable to open database file" on a read-only file
// system.
func TestOpenNotWritable(t *testing.T) {
	t.Parallel()
	// A migrated database in WAL mode, closed: its -wal and -shm are gone.
	migrated := func(t *testing.T, path string) {
		t.Helper()
		drv, err := sqlite.Open(path)
		require.NoError(t, err)
		require.NoError(t, drv.Migrate(t.Context()))
		require.NoError(t, drv.Close())
	}
	refused := func(t *testing.T, path string) {
		t.Helper()
		_, err := sqlite.Open(path)
		require.Error(t, err)
		require.ErrorContains(t, err, path)
		require.ErrorContains(t, err, "cannot write")
		require.ErrorContains(t, err, "OpenReadOnly")
		drv := openReadOnly(t, path)
		_, _, err = drv.MigrationVersion(t.Context())
		require.NoError(t, err, "the read-only open the error names reads it")
	}

	t.Run("permissions", func(t *testing.T) {
		t.Parallel()
		if path := os.Getenv(asNobodyEnv); path != "" {
			// The child process below: not root, the file not its own.
			refused(t, path)
			return
		}
		path := testdb.SQLitePath(t)
		migrated(t, path)
		dir := filepath.Dir(path)
		check := func() {
			t.Helper()
			if os.Geteuid() == 0 {
				// Root may write any file: look as an unprivileged user.
				asNobody(t, path)
			} else {
				refused(t, path)
			}
		}
		require.NoError(t, os.Chmod(path, 0o444))
		check()
		require.NoError(t, os.Chmod(path, 0o644))
		require.NoError(t, os.Chmod(dir, 0o555))
		t.Cleanup(func() { os.Chmod(dir, 0o755) })
		check()
	})

	t.Run("read-only file system", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
			t.Skipf("cannot mount a file system here: %v", err)
		}
		t.Cleanup(func() { require.NoError(t, syscall.Unmount(dir, 0)) })
		path := filepath.Join(dir, "cloacina.db")
		migrated(t, path)
		require.NoError(t, syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""))
		refused(t, path)
	})
}

// asNobodyEnv names, in the child process asNobody starts, the database
// to look at.
const asNobodyEnv = "CLOACINA_TEST_NOT_WRITABLE_AS_NOBODY"

// asNobody runs the permissions subtest again in a child process as the
// unprivileged user nobody, on path: root may write any file, so a
// process running as root cannot see the refusal itself. The test binary
// is copied where nobody may run it, and the directories leading to path
// are opened for traversal.
func asNobody(t *testing.T, path string) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "sqlite.test")
	data, err := os.ReadFile(self)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, data, 0o755))
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin)), filepath.Dir(filepath.Dir(path))} {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	if info, err := os.Stat(filepath.Dir(path)); err == nil && info.Mode().Perm()&0o005 == 0 {
		require.NoError(t, os.Chmod(filepath.Dir(path), info.Mode().Perm()|0o005))
	}
	cmd := exec.CommandContext(t.Context(), bin, "-test.run", "^TestOpenNotWritable$/^permissions$", "-test.count", "1", "-test.v")
	cmd.Env = append(os.Environ(), asNobodyEnv+"="+path)
	cmd.Dir = filepath.Dir(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the check as nobody failed:\n%s", out)
	require.Contains(t, string(out), "--- PASS: TestOpenNotWritable/permissions", "the check ran in the child:\n%s", out)
}
