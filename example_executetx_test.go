package cloacina_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// ExecuteTx starts a run inside the application's own transaction: the
// order row and the run that ships it commit together, or not at all.
func ExampleRunner_ExecuteTx() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "cloacina-example")
	defer os.RemoveAll(dir)

	// The application's database, opened with the DSN Cloacina expects.
	db, err := sql.Open("sqlite", sqlite.DSN(filepath.Join(dir, "app.db")))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"); err != nil {
		log.Fatal(err)
	}

	wf := cloacina.MustWorkflow("ship_order",
		cloacina.Task{Name: "ship", Run: func(ctx context.Context, tc *cloacina.Context) error {
			return tc.Set("shipped", true)
		}},
	)
	runner, err := cloacina.OpenDB(ctx, db, &cloacina.Config{
		Workflows: []*cloacina.Workflow{wf}, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer runner.Close()
	_ = runner.Start(ctx)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.Exec("INSERT INTO orders (item) VALUES ('book')"); err != nil {
		log.Fatal(err)
	}
	input, _ := cloacina.ContextFrom(map[string]any{"item": "book"})
	run, err := runner.ExecuteTx(ctx, tx, "ship_order", input)
	if err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}

	result, err := run.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(result.Status, result.Context)
	// Output:
	// completed {"item":"book","shipped":true}
}
