package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cloacina-go/cloacina/driver"
)

// A lease is the newest of its term rows in cloacina_lease_terms. Every
// statement here reads the database's clock (clock_timestamp(), not the
// transaction's start: a renewal must vouch for the moment it runs), and
// none waits on a term row another transaction holds: renewal and release
// skip a locked row, a takeover inserts a row no one else has, and the
// collection of old terms skips rows still locked, for a later renewal.

func (e *executor) LeaseRenew(ctx context.Context, p *driver.LeaseRenewParams) (*driver.LeaseRenewResult, error) {
	t := e.q.schema + ".cloacina_lease_terms"
	res := &driver.LeaseRenewResult{}
	var marginUS int64
	// newest is the term as this statement's snapshot has it, before the
	// renewal: what it had left is the renewal's margin.
	err := e.db.QueryRow(ctx, `WITH clock AS (SELECT clock_timestamp() AS now),
		newest AS (SELECT term, expires_at FROM `+t+` WHERE name = $1 ORDER BY term DESC LIMIT 1),
		mine AS (
			SELECT term FROM `+t+` WHERE name = $1 AND holder = $2 AND term = (SELECT term FROM newest)
				AND expires_at >= (SELECT now FROM clock)
			FOR UPDATE SKIP LOCKED),
		renewed AS (
			UPDATE `+t+` l SET expires_at = clock.now + $3::float8 * interval '1 microsecond' FROM mine, clock
			WHERE l.name = $1 AND l.term = mine.term RETURNING l.term),
		collected AS (
			DELETE FROM `+t+` WHERE name = $1 AND term IN (
				SELECT term FROM `+t+` WHERE name = $1 AND term < (SELECT term FROM renewed) FOR UPDATE SKIP LOCKED))
		SELECT EXISTS (SELECT FROM renewed), NOT EXISTS (SELECT FROM newest, clock WHERE newest.expires_at >= clock.now),
			COALESCE((SELECT (extract(epoch FROM newest.expires_at - clock.now) * 1000000)::bigint FROM newest, clock, renewed), 0)`,
		p.Name, p.Holder, p.TTL.Microseconds()).Scan(&res.Held, &res.Vacant, &marginUS)
	if err != nil {
		return nil, fmt.Errorf("postgres: renew lease %s: %w", p.Name, mapError(err))
	}
	res.Margin = time.Duration(marginUS) * time.Microsecond
	return res, nil
}

func (e *executor) LeaseGet(ctx context.Context, p *driver.LeaseGetParams) (*driver.LeaseGetResult, error) {
	t := e.q.schema + ".cloacina_lease_terms"
	var res driver.LeaseGetResult
	err := e.db.QueryRow(ctx, `SELECT holder, term, expires_at FROM `+t+`
		WHERE name = $1 AND expires_at >= clock_timestamp() AND term = (SELECT max(term) FROM `+t+` WHERE name = $1)`,
		p.Name).Scan(&res.Holder, &res.Term, &res.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: read lease %s: %w", p.Name, mapError(err))
	}
	res.ExpiresAt = res.ExpiresAt.UTC()
	return &res, nil
}

func (e *executor) LeaseRelease(ctx context.Context, p *driver.LeaseReleaseParams) error {
	t := e.q.schema + ".cloacina_lease_terms"
	if _, err := e.db.Exec(ctx, `UPDATE `+t+` SET expires_at = '-infinity' WHERE name = $1 AND term IN (
			SELECT term FROM `+t+` WHERE name = $1 AND holder = $2
				AND term = (SELECT max(term) FROM `+t+` WHERE name = $1)
			FOR UPDATE SKIP LOCKED)`, p.Name, p.Holder); err != nil {
		return fmt.Errorf("postgres: release lease %s: %w", p.Name, mapError(err))
	}
	return nil
}

// LeaseTakeover takes the next term of a vacant lease in one statement on
// the pool, which PostgreSQL commits on its own: no process can freeze
// between the insert and its commit. Two takers of one term meet on the
// primary key; the second waits only for that statement, then does
// nothing.
func (d *Driver) LeaseTakeover(ctx context.Context, p *driver.LeaseTakeoverParams) (*driver.LeaseTakeoverResult, error) {
	t := d.q.schema + ".cloacina_lease_terms"
	res := &driver.LeaseTakeoverResult{}
	err := d.pool.QueryRow(ctx, `WITH clock AS (SELECT clock_timestamp() AS now),
		newest AS (SELECT term, expires_at FROM `+t+` WHERE name = $1 ORDER BY term DESC LIMIT 1)
		INSERT INTO `+t+` (name, term, holder, expires_at)
		SELECT $1, COALESCE((SELECT term FROM newest), 0) + 1, $2, clock.now + $3::float8 * interval '1 microsecond' FROM clock
		WHERE NOT EXISTS (SELECT FROM newest WHERE newest.expires_at >= clock.now)
		ON CONFLICT (name, term) DO NOTHING
		RETURNING term`, p.Name, p.Holder, p.TTL.Microseconds()).Scan(&res.Term)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, nil // not vacant, or another taker got the term
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: take over lease %s: %w", p.Name, mapError(err))
	}
	res.Taken = true
	return res, nil
}
