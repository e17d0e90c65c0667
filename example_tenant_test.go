package cloacina_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cloacina-go/cloacina"
)

// On SQLite a tenant is a database file: runners for several tenants run
// side by side in one process and share nothing but the process. The same
// workflow name in two tenants names two separate queues.
func Example_tenantsOnSQLite() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	runners := map[string]*cloacina.Runner{}
	for _, tenant := range []string{"acme", "globex"} {
		wf := cloacina.MustWorkflow("invoice",
			cloacina.Task{Name: "bill", Run: func(ctx context.Context, tc *cloacina.Context) error {
				return tc.Set("billed_by", tenant)
			}},
		)
		r, err := cloacina.Open(ctx, "sqlite://"+filepath.Join(dir, tenant+".db"), &cloacina.Config{
			Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			log.Fatal(err)
		}
		defer r.Close()
		if err := r.Start(ctx); err != nil {
			log.Fatal(err)
		}
		runners[tenant] = r
	}

	for range 2 {
		if _, err := runners["acme"].Execute(ctx, "invoice", nil); err != nil {
			log.Fatal(err)
		}
	}
	res, err := runners["globex"].Execute(ctx, "invoice", nil)
	if err != nil {
		log.Fatal(err)
	}
	by, _ := cloacina.Get[string](res.Context, "billed_by")
	fmt.Println("globex's run was billed by", by)

	for _, tenant := range []string{"acme", "globex"} {
		runs, _ := runners[tenant].List(ctx, nil)
		fmt.Printf("%s sees %d run(s)\n", tenant, len(runs))
	}
	_, err = runners["acme"].Get(ctx, res.ID)
	fmt.Println("acme looking up globex's run:", err != nil)
	// Output:
	// globex's run was billed by globex
	// acme sees 2 run(s)
	// globex sees 1 run(s)
	// acme looking up globex's run: true
}

// On PostgreSQL a tenant is a schema owned by a login role of its own.
// An administrator creates it; the tenant's runners connect with the URL
// it returns and can reach nothing of other tenants'. (This example needs
// a PostgreSQL server, so it is compiled but not run.)
func ExampleCreateTenant() {
	ctx := context.Background()
	admin := "postgres://postgres@localhost:5432/app?sslmode=disable"

	tenant, err := cloacina.CreateTenant(ctx, admin, "acme", nil) // role acme, generated password
	if err != nil {
		log.Fatal(err)
	}
	// postgres://acme:<password>@localhost:5432/app?schema=acme&sslmode=disable
	runner, err := cloacina.Open(ctx, tenant.URL, &cloacina.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()

	tenants, err := cloacina.ListTenants(ctx, admin)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range tenants {
		fmt.Println(t.Schema, t.SchemaVersion, t.Runs)
	}

	runner.Close()
	if err := cloacina.DropTenant(ctx, admin, "acme"); err != nil {
		log.Fatal(err)
	}
}
