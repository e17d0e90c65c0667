package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
)

// ReadOnlyPools returns both pools of a Driver opened with OpenReadOnly.
func ReadOnlyPools(d *Driver) []*sql.DB { return []*sql.DB{d.ro.live, d.ro.snapshot} }

// MigrateTo migrates d up to version upTo only.
func MigrateTo(ctx context.Context, d *Driver, upTo int) error { return d.migrateTo(ctx, upTo) }

// FilesUnder counts the files this process shares among its Drivers
// (see fileFor) whose path is in dir.
func FilesUnder(dir string) int {
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		dir = resolved
	}
	filesMu.Lock()
	defer filesMu.Unlock()
	n := 0
	for key := range files {
		if strings.HasPrefix(key, dir+string(filepath.Separator)) {
			n++
		}
	}
	return n
}
