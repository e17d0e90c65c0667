package sqlite

import (
	"context"
	"database/sql"
)

// ReadOnlyPools returns both pools of a Driver opened with OpenReadOnly.
func ReadOnlyPools(d *Driver) []*sql.DB { return []*sql.DB{d.ro.live, d.ro.snapshot} }

// MigrateTo migrates d up to version upTo only.
func MigrateTo(ctx context.Context, d *Driver, upTo int) error { return d.migrateTo(ctx, upTo) }
