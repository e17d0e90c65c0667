package cloacina_test

import (
	"errors"
	"fmt"

	"github.com/cloacina-go/cloacina"
)

// Context values are JSON: Insert adds, Update changes, Set does either, and
// Get decodes into the type asked for.
func ExampleContext() {
	tc := cloacina.NewContext()
	_ = tc.Insert("user", map[string]any{"name": "ada", "age": 36})
	err := tc.Insert("user", "again")
	fmt.Println(errors.Is(err, cloacina.ErrKeyExists))

	err = tc.Update("missing", 1)
	fmt.Println(errors.Is(err, cloacina.ErrKeyNotFound))

	_ = tc.Set("attempts", 2)
	type user struct {
		Name string
		Age  int
	}
	u, _ := cloacina.Get[user](tc, "user")
	fmt.Println(u.Name, u.Age)

	_, err = cloacina.Get[int](tc, "user")
	fmt.Println(err)

	// A value that is not JSON is rejected when it is set.
	fmt.Println(tc.Set("callback", func() {}) != nil)
	fmt.Println(tc)
	// Output:
	// true
	// true
	// ada 36
	// context key "user" holds {"age":36,"name":"ada"}, which does not decode as int: type mismatch
	// true
	// {"attempts":2,"user":{"age":36,"name":"ada"}}
}
