package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

// A lease is the newest of its term rows in cloacina_lease_terms. The
// database's clock is the host's: every process sharing a SQLite file
// runs on the machine that holds it, so the driver reads that clock here
// rather than taking the engine's.

// released is the expiry of a released term: before any real time, in
// the fixed-width layout.
var released = formatTime(time.Time{})

func (e *executor) LeaseRenew(ctx context.Context, p *driver.LeaseRenewParams) (*driver.LeaseRenewResult, error) {
	now := time.Now()
	// One statement, as on PostgreSQL: the newest term is rewritten as it
	// is unless Holder renews it, so that the row comes back either way
	// (SQLite has no data-modifying CTEs, and a second statement on every
	// heartbeat is what an idle runner's budget cannot spare).
	res := &driver.LeaseRenewResult{}
	err := e.db.QueryRowContext(ctx, `UPDATE cloacina_lease_terms
		SET expires_at = CASE WHEN holder = ?2 AND expires_at >= ?3 THEN ?4 ELSE expires_at END
		WHERE name = ?1 AND term = (SELECT MAX(term) FROM cloacina_lease_terms WHERE name = ?1)
		RETURNING holder = ?2 AND expires_at = ?4, expires_at < ?3`,
		p.Name, p.Holder, formatTime(now), formatTime(now.Add(p.TTL))).Scan(&res.Held, &res.Vacant)
	if errors.Is(err, sql.ErrNoRows) {
		res.Vacant = true // no term was ever taken
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: renew lease %s: %w", p.Name, mapError(err))
	}
	if res.Held {
		res.Margin = p.TTL // a takeover waits for this transaction's write lock
	}
	return res, nil
}

func (e *executor) LeaseGet(ctx context.Context, p *driver.LeaseGetParams) (*driver.LeaseGetResult, error) {
	var res driver.LeaseGetResult
	var expires string
	err := e.db.QueryRowContext(ctx, `SELECT holder, term, expires_at FROM cloacina_lease_terms
		WHERE name = ?1 AND expires_at >= ?2 AND term = (SELECT MAX(term) FROM cloacina_lease_terms WHERE name = ?1)`,
		p.Name, formatTime(time.Now())).Scan(&res.Holder, &res.Term, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: read lease %s: %w", p.Name, mapError(err))
	}
	if res.ExpiresAt, err = parseTime(expires); err != nil {
		return nil, fmt.Errorf("sqlite: read lease %s: %w", p.Name, err)
	}
	return &res, nil
}

func (e *executor) LeaseRelease(ctx context.Context, p *driver.LeaseReleaseParams) error {
	if _, err := e.db.ExecContext(ctx, `UPDATE cloacina_lease_terms SET expires_at = ?3
		WHERE name = ?1 AND holder = ?2 AND term = (SELECT MAX(term) FROM cloacina_lease_terms WHERE name = ?1)`,
		p.Name, p.Holder, released); err != nil {
		return fmt.Errorf("sqlite: release lease %s: %w", p.Name, mapError(err))
	}
	return nil
}

// LeaseTakeover takes the next term of a vacant lease in a write
// transaction of its own, and deletes the older terms: with one writer at
// a time, nothing can hold them.
func (d *Driver) LeaseTakeover(ctx context.Context, p *driver.LeaseTakeoverParams) (*driver.LeaseTakeoverResult, error) {
	tx, err := d.beginWrite(ctx)
	if err != nil {
		return nil, fmt.Errorf("sqlite: take over lease %s: %w", p.Name, err)
	}
	defer d.file.unlock()
	defer tx.Rollback()
	now := time.Now()
	res := &driver.LeaseTakeoverResult{}
	err = tx.QueryRowContext(ctx, `INSERT INTO cloacina_lease_terms (name, term, holder, expires_at)
		SELECT ?1, COALESCE(newest.term, 0) + 1, ?2, ?4
		FROM (SELECT 1) LEFT JOIN (
			SELECT term, expires_at FROM cloacina_lease_terms WHERE name = ?1 ORDER BY term DESC LIMIT 1) newest ON true
		WHERE newest.term IS NULL OR newest.expires_at < ?3
		ON CONFLICT (name, term) DO NOTHING
		RETURNING term`, p.Name, p.Holder, formatTime(now), formatTime(now.Add(p.TTL))).Scan(&res.Term)
	if errors.Is(err, sql.ErrNoRows) {
		return res, nil // not vacant
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: take over lease %s: %w", p.Name, mapError(err))
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM cloacina_lease_terms WHERE name = ? AND term < ?`, p.Name, res.Term); err != nil {
		return nil, fmt.Errorf("sqlite: take over lease %s: %w", p.Name, mapError(err))
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("sqlite: take over lease %s: commit: %w", p.Name, mapError(err))
	}
	res.Taken = true
	return res, nil
}
