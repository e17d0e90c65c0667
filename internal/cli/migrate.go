package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

func (a *app) migrateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database schema",
		Long: `migrate applies pending migrations to the database, creating a SQLite file
or a PostgreSQL schema if it is missing, and prints the schema version. It is
safe to run repeatedly and from several processes at once.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			version, err := cloacina.Migrate(cmd.Context(), d.url, "")
			if err != nil {
				return d.openError(err)
			}
			_, err = fmt.Fprintf(a.stdout, "database %s is at schema version %d\n", d, version)
			return err
		},
	}
}
