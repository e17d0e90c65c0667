package drivertest

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testMigrate(t *testing.T, s *suite) {
	t.Run("VersionBeforeAndAfter", func(t *testing.T) {
		t.Parallel()
		b := s.setupUnmigrated(t)
		current, latest, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, 0, current, "an empty database is at version 0")
		require.GreaterOrEqual(t, latest, 1)

		require.NoError(t, b.drv.Migrate(b.ctx))
		current, latest2, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest, latest2)
		require.Equal(t, latest, current)
	})

	t.Run("Idempotent", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		require.NoError(t, b.drv.Migrate(b.ctx))
		require.NoError(t, b.drv.Migrate(b.ctx))
		current, latest, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest, current)
		b.getPipeline(t, p.ID) // data survives a second Migrate
	})

	t.Run("ConcurrentOnFreshDatabase", func(t *testing.T) {
		t.Parallel()
		b := s.setupUnmigrated(t)
		drivers := []driver.Driver{b.drv, s.opts.OpenSibling(t, b.drv), s.opts.OpenSibling(t, b.drv)}
		errs := make([]error, len(drivers))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, d := range drivers {
			wg.Go(func() {
				<-start
				errs[i] = d.Migrate(b.ctx)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "migrator %d", i)
		}
		current, latest, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest, current)
		b.insertPipeline(t)
	})

	t.Run("SchemaTooNew", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		_, latest, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		s.opts.RecordMigration(t, b.drv, latest+1)

		current, latest2, err := b.drv.MigrationVersion(b.ctx)
		require.NoError(t, err)
		require.Equal(t, latest+1, current)
		require.Equal(t, latest, latest2)

		err = b.drv.Migrate(b.ctx)
		require.ErrorIs(t, err, driver.ErrSchemaTooNew)
		// A sibling (another process, in production) is refused too.
		err = s.opts.OpenSibling(t, b.drv).Migrate(b.ctx)
		require.ErrorIs(t, err, driver.ErrSchemaTooNew)
	})
}
