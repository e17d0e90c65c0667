package cloacina

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/jsonx"
)

// TriggerRule decides whether a task runs once all of its dependencies have
// ended. The zero value is the default rule: run when every dependency
// Completed, otherwise skip with the reason. Rules are evaluated against
// exactly the context the task would receive.
type TriggerRule struct {
	kind  ruleKind
	conds []Condition
}

type ruleKind int

const (
	ruleAllSuccess ruleKind = iota // the zero value
	ruleAlways
	ruleAll
	ruleAny
	ruleNone
)

var ruleNames = map[ruleKind]string{ruleAllSuccess: "all_success", ruleAlways: "always", ruleAll: "all", ruleAny: "any", ruleNone: "none"}

// Always runs the task whatever its dependencies' outcome. It does not
// outlast a cancel: a cancelled run starts no more tasks, so an Always
// task that had not started is Skipped ("run cancelled") like the rest.
func Always() TriggerRule { return TriggerRule{kind: ruleAlways} }

// All runs the task when every condition holds.
func All(conds ...Condition) TriggerRule { return TriggerRule{kind: ruleAll, conds: conds} }

// Any runs the task when at least one condition holds.
func Any(conds ...Condition) TriggerRule { return TriggerRule{kind: ruleAny, conds: conds} }

// None runs the task when no condition holds.
func None(conds ...Condition) TriggerRule { return TriggerRule{kind: ruleNone, conds: conds} }

// String describes the rule, e.g. any(task_failed("a"), context_value("n" greater_than 3)).
func (r TriggerRule) String() string {
	if r.kind == ruleAllSuccess || r.kind == ruleAlways {
		return ruleNames[r.kind]
	}
	parts := make([]string, len(r.conds))
	for i, c := range r.conds {
		parts[i] = c.String()
	}
	return ruleNames[r.kind] + "(" + strings.Join(parts, ", ") + ")"
}

// Operator compares a context value in a ContextValue condition.
type Operator string

// Context value operators. Equality compares JSON values (5 equals 5.0);
// greater_than and less_than compare numbers with numbers and strings with
// strings (anything else is false); contains finds a substring in a string,
// an element in an array or a key in an object. A missing key makes
// equals, greater_than, less_than and contains false and their negations
// true.
const (
	OpEquals      Operator = "equals"
	OpNotEquals   Operator = "not_equals"
	OpGreaterThan Operator = "greater_than"
	OpLessThan    Operator = "less_than"
	OpContains    Operator = "contains"
	OpNotContains Operator = "not_contains"
	OpExists      Operator = "exists"
	OpNotExists   Operator = "not_exists"
)

var operators = []Operator{OpEquals, OpNotEquals, OpGreaterThan, OpLessThan, OpContains, OpNotContains, OpExists, OpNotExists}

// Condition is one test inside a trigger rule.
type Condition struct {
	kind  condKind
	task  string
	key   string
	op    Operator
	value any             // normalised through JSON
	raw   json.RawMessage // the value's encoding, for the fingerprint
	err   error           // a value that could not be encoded, reported by validation
}

type condKind int

const (
	condTaskSuccess condKind = iota + 1
	condTaskFailed
	condTaskSkipped
	condContextValue
)

// TaskSuccess holds when the named upstream task Completed.
func TaskSuccess(task string) Condition { return Condition{kind: condTaskSuccess, task: task} }

// TaskFailed holds when the named upstream task Failed.
func TaskFailed(task string) Condition { return Condition{kind: condTaskFailed, task: task} }

// TaskSkipped holds when the named upstream task was Skipped.
func TaskSkipped(task string) Condition { return Condition{kind: condTaskSkipped, task: task} }

// ContextValue compares the context value at key with value using op. The
// value must be JSON-encodable; exists and not_exists ignore it.
func ContextValue(key string, op Operator, value any) Condition {
	c := Condition{kind: condContextValue, key: key, op: op}
	if op == OpExists || op == OpNotExists {
		return c
	}
	raw, err := json.Marshal(value)
	if err != nil {
		c.err = fmt.Errorf("value of type %T cannot be encoded as JSON: %w", value, err)
		return c
	}
	c.raw = raw
	c.value, c.err = jsonx.DecodeExact(raw)
	return c
}

// String describes the condition.
func (c Condition) String() string {
	switch c.kind {
	case condTaskSuccess:
		return fmt.Sprintf("task_success(%q)", c.task)
	case condTaskFailed:
		return fmt.Sprintf("task_failed(%q)", c.task)
	case condTaskSkipped:
		return fmt.Sprintf("task_skipped(%q)", c.task)
	case condContextValue:
		if c.op == OpExists || c.op == OpNotExists {
			return fmt.Sprintf("context_value(%q %s)", c.key, c.op)
		}
		return fmt.Sprintf("context_value(%q %s %s)", c.key, c.op, c.raw)
	}
	return "invalid_condition"
}

// validate lists the rule's problems; upstream holds the names of the
// task's upstream tasks, or is nil when they are unknown (then conditions
// on a task's outcome are not checked).
func (r TriggerRule) validate(task string, upstream map[string]bool) []string {
	var problems []string
	if (r.kind == ruleAll || r.kind == ruleAny || r.kind == ruleNone) && len(r.conds) == 0 {
		problems = append(problems, fmt.Sprintf("task %q has a trigger rule %s() with no conditions: add conditions, or use Always()", task, ruleNames[r.kind]))
	}
	for _, c := range r.conds {
		switch c.kind {
		case condTaskSuccess, condTaskFailed, condTaskSkipped:
			if upstream != nil && !upstream[c.task] {
				problems = append(problems, fmt.Sprintf("task %q has a trigger condition %s naming a task that is not upstream of %q: add %q to its dependencies (directly or through another task), or remove the condition",
					task, c, task, c.task))
			}
		case condContextValue:
			if c.key == "" {
				problems = append(problems, fmt.Sprintf("task %q has a context_value condition with an empty key: name the context key to test", task))
			}
			if !validOperator(c.op) {
				problems = append(problems, fmt.Sprintf("task %q has a context_value condition with unknown operator %q: use one of %s", task, c.op, operatorList()))
			}
			if c.err != nil {
				problems = append(problems, fmt.Sprintf("task %q has a context_value condition on %q whose %v", task, c.key, c.err))
			}
		default:
			problems = append(problems, fmt.Sprintf("task %q has a zero Condition in its trigger rule: build conditions with TaskSuccess, TaskFailed, TaskSkipped or ContextValue", task))
		}
	}
	return problems
}

func validOperator(op Operator) bool {
	for _, o := range operators {
		if o == op {
			return true
		}
	}
	return false
}

func operatorList() string {
	names := make([]string, len(operators))
	for i, o := range operators {
		names[i] = string(o)
	}
	return strings.Join(names, ", ")
}

// evaluate decides the rule. status returns an upstream task's status; ctx
// is the context the task would receive. When the task must be skipped,
// reason says why.
func (r TriggerRule) evaluate(deps []string, status func(string) driver.TaskStatus, ctx map[string]json.RawMessage) (run bool, reason string) {
	switch r.kind {
	case ruleAlways:
		return true, ""
	case ruleAllSuccess:
		for _, d := range deps {
			switch s := status(d); s {
			case driver.TaskCompleted:
			case driver.TaskFailed:
				return false, fmt.Sprintf("upstream task %q failed", d)
			case driver.TaskSkipped:
				return false, fmt.Sprintf("upstream task %q was skipped", d)
			default:
				return false, fmt.Sprintf("upstream task %q is %s", d, s)
			}
		}
		return true, ""
	}
	held := 0
	for _, c := range r.conds {
		if c.holds(status, ctx) {
			held++
		}
	}
	switch r.kind {
	case ruleAll:
		if held == len(r.conds) {
			return true, ""
		}
	case ruleAny:
		if held > 0 {
			return true, ""
		}
	case ruleNone:
		if held == 0 {
			return true, ""
		}
	}
	return false, "trigger rule " + r.String() + " not satisfied"
}

func (c Condition) holds(status func(string) driver.TaskStatus, ctx map[string]json.RawMessage) bool {
	switch c.kind {
	case condTaskSuccess:
		return status(c.task) == driver.TaskCompleted
	case condTaskFailed:
		return status(c.task) == driver.TaskFailed
	case condTaskSkipped:
		return status(c.task) == driver.TaskSkipped
	case condContextValue:
		raw, exists := ctx[c.key]
		var got any
		if exists {
			v, err := jsonx.DecodeExact(raw)
			if err != nil {
				return false
			}
			got = v
		}
		switch c.op {
		case OpExists:
			return exists
		case OpNotExists:
			return !exists
		case OpEquals:
			return exists && jsonx.Equal(got, c.value)
		case OpNotEquals:
			return !exists || !jsonx.Equal(got, c.value)
		case OpGreaterThan:
			cmp, ok := jsonx.Compare(got, c.value)
			return exists && ok && cmp > 0
		case OpLessThan:
			cmp, ok := jsonx.Compare(got, c.value)
			return exists && ok && cmp < 0
		case OpContains:
			return exists && jsonx.Contains(got, c.value)
		case OpNotContains:
			return !exists || !jsonx.Contains(got, c.value)
		}
	}
	return false
}

// canonical is the rule's stable description for the workflow fingerprint.
func (r TriggerRule) canonical() any {
	conds := make([]map[string]any, len(r.conds))
	for i, c := range r.conds {
		conds[i] = map[string]any{"kind": int(c.kind), "task": c.task, "key": c.key, "op": string(c.op), "value": c.raw}
	}
	return map[string]any{"kind": ruleNames[r.kind], "conditions": conds}
}
