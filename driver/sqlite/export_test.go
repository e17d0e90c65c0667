package sqlite

import "database/sql"

// ReadOnlyPools returns both pools of a Driver opened with OpenReadOnly.
func ReadOnlyPools(d *Driver) []*sql.DB { return []*sql.DB{d.ro.live, d.ro.snapshot} }
