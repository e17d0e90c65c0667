package cloacina

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloacina-go/cloacina/internal/dag"
)

// TaskFunc is the body of a task. ctx is cancelled when the run is
// cancelled, when the task's timeout passes, or when the runner loses the
// task's claim; a task should return promptly then. When the timeout ended
// it, context.Cause(ctx) is ErrTaskTimeout to errors.Is. tc holds the context
// the task received; what it holds when the function returns nil is the
// task's output. A returned error fails the attempt; wrap it with Permanent
// to skip remaining retries.
type TaskFunc func(ctx context.Context, tc *Context) error

// Task declares one task of a workflow.
type Task struct {
	// Name identifies the task within its workflow. Required.
	Name string
	// Run is the task's body. Required.
	Run TaskFunc
	// DependsOn names the tasks that must end before this one. Their
	// outputs are merged, in this order (later wins, objects merge deeply),
	// into the context the task receives.
	DependsOn []string
	// Trigger decides whether the task runs once its dependencies ended.
	// Default (zero value): run when all of them Completed, else skip.
	Trigger TriggerRule
	// Retry is the retry policy. Default (nil): one attempt, no retries.
	Retry *RetryPolicy
	// Timeout bounds one attempt; past it the task's context is cancelled
	// and the attempt fails with ErrTaskTimeout. Default: Config.TaskTimeout.
	// At least a millisecond when set.
	Timeout time.Duration
}

// Workflow is a validated DAG of tasks, built by NewWorkflow. It is
// immutable and safe to share between runners.
type Workflow struct {
	name    string
	version string
	tasks   []*taskDef // declaration order
	byName  map[string]*taskDef
	topo    []*taskDef
	leaves  []*taskDef // declaration order
}

type taskDef struct {
	Task
	index int
	deps  []*taskDef
	retry *retryPlan
	// dependents are the tasks that depend on this one, in topological
	// order, and topoIndex is this task's place in that order.
	dependents []*taskDef
	topoIndex  int
	// reads names the tasks whose status deciding this one reads: its
	// dependencies and the tasks its trigger conditions name.
	reads []string
}

// NewWorkflow validates tasks and returns the workflow. Every problem is
// reported at once in a *ValidationError (errors.Is ErrInvalidWorkflow):
// an empty workflow, a task without name or function, a duplicate name, a
// dependency on a missing task (with the closest existing name, for the
// first 20 such dependencies), a cycle (with its path), and a trigger rule
// naming a task that is not upstream. That last one alone waits for the
// dependencies to resolve: while one names a missing task, or they form a
// cycle, what is upstream of what is unknown, so the rule is checked once
// they are fixed.
func NewWorkflow(name string, tasks ...Task) (*Workflow, error) {
	verr := &ValidationError{Workflow: name}
	problem := func(format string, args ...any) { verr.Problems = append(verr.Problems, fmt.Sprintf(format, args...)) }
	if strings.TrimSpace(name) == "" {
		problem("the workflow name is empty: give the workflow a name")
	} else if why := nameProblem(name); why != "" {
		problem("the workflow name %s %s", shortName(name), why)
	}
	if len(tasks) == 0 {
		problem("the workflow has no tasks: add at least one Task")
		return nil, verr
	}
	wf := &Workflow{name: name, byName: map[string]*taskDef{}}
	names := make([]string, 0, len(tasks))
	for i, t := range tasks {
		def := &taskDef{Task: t, index: i}
		def.DependsOn = append([]string(nil), t.DependsOn...)
		switch {
		case strings.TrimSpace(t.Name) == "":
			problem("task #%d has no name: set Task.Name", i+1)
			continue
		case wf.byName[t.Name] != nil:
			problem("task name %q is used twice (tasks #%d and #%d): give each task a unique name", t.Name, wf.byName[t.Name].index+1, i+1)
			continue
		case nameProblem(t.Name) != "":
			problem("task name %s %s", shortName(t.Name), nameProblem(t.Name))
			continue
		}
		if t.Run == nil {
			problem("task %q has no function: set Task.Run", t.Name)
		}
		if t.Timeout < 0 {
			problem("task %q has a negative Timeout %s: use 0 (the runner's default) or a positive duration", t.Name, t.Timeout)
		} else if t.Timeout > 0 && t.Timeout < minInterval {
			problem("task %q has a Timeout of %s, below a millisecond, most likely a missing unit: write it as a time.Duration, such as 30 * time.Second", t.Name, t.Timeout)
		}
		plan, retryProblems := t.Retry.plan(t.Name)
		verr.Problems = append(verr.Problems, retryProblems...)
		def.retry = plan
		wf.byName[t.Name] = def
		wf.tasks = append(wf.tasks, def)
		names = append(names, t.Name)
	}
	unresolved := false // a dependency names no task
	suggested := 0      // unknown dependencies given the closest name
	for _, def := range wf.tasks {
		seen := map[string]bool{}
		for _, d := range def.DependsOn {
			switch dep := wf.byName[d]; {
			case d == def.Name:
				problem("task %q depends on itself: remove %q from its DependsOn", d, d)
			case seen[d]:
				problem("task %q lists dependency %q twice: list it once", def.Name, d)
			case dep == nil:
				unresolved = true
				s := ""
				if suggested < maxSuggestions {
					suggested++
					s = dag.Closest(d, names)
				}
				if s != "" {
					problem("task %q depends on %q, which is not a task of this workflow: did you mean %q?", def.Name, d, s)
				} else {
					problem("task %q depends on %q, which is not a task of this workflow: declare it or fix the name (tasks: %s)", def.Name, d, someNames(names))
				}
			default:
				def.deps = append(def.deps, dep)
			}
			seen[d] = true
		}
	}
	index := map[*taskDef]int{}
	for i, def := range wf.tasks {
		index[def] = i
	}
	edges := make([][]int, len(wf.tasks))
	for i, def := range wf.tasks {
		for _, dep := range def.deps {
			edges[i] = append(edges[i], index[dep])
		}
	}
	g := dag.New(edges)
	if cycle := g.FindCycle(); cycle != nil {
		// FindCycle walks from a task to its dependency; print the cycle in
		// execution order (dependency first) so it reads as "a → b → a".
		path := make([]string, len(cycle))
		for i, n := range cycle {
			path[len(cycle)-1-i] = wf.tasks[n].Name
		}
		problem("dependency cycle %s: remove one of these dependencies", strings.Join(path, " → "))
		unresolved = true
	}
	// Every problem is reported at once; only whether a trigger rule's
	// task is upstream waits for a graph without cycles or unknown names.
	// A rule usually names a direct dependency; the descendants of a task
	// named further up are found once, however many rules name it, so a
	// large workflow validates in time linear in its size.
	descendants := map[*taskDef][]bool{}
	for i, def := range wf.tasks {
		var upstream map[string]bool
		if !unresolved {
			upstream = map[string]bool{}
			for _, c := range def.Trigger.conds {
				named := wf.byName[c.task]
				if c.task == "" || named == nil || upstream[c.task] {
					continue
				}
				if slices.Contains(def.deps, named) {
					upstream[c.task] = true
					continue
				}
				below, ok := descendants[named]
				if !ok {
					below = g.Descendants(index[named])
					descendants[named] = below
				}
				upstream[c.task] = below[i]
			}
		}
		verr.Problems = append(verr.Problems, def.Trigger.validate(def.Name, upstream)...)
	}
	if len(verr.Problems) > 0 {
		return nil, verr
	}
	for _, n := range g.TopoOrder() {
		wf.topo = append(wf.topo, wf.tasks[n])
	}
	hasDependents := map[*taskDef]bool{}
	for _, def := range wf.tasks {
		for _, dep := range def.deps {
			hasDependents[dep] = true
		}
	}
	for _, def := range wf.tasks {
		if !hasDependents[def] {
			wf.leaves = append(wf.leaves, def)
		}
	}
	for i, def := range wf.topo {
		def.topoIndex = i
		for _, dep := range def.deps {
			dep.dependents = append(dep.dependents, def)
		}
		for _, dep := range def.deps {
			def.reads = append(def.reads, dep.Name)
		}
		for _, c := range def.Trigger.conds {
			if c.task != "" && !slices.Contains(def.reads, c.task) {
				def.reads = append(def.reads, c.task)
			}
		}
	}
	wf.version = wf.fingerprint()
	return wf, nil
}

// maxSuggestions bounds the unknown dependencies that NewWorkflow gives
// the closest task name (each costs a pass over every name), and
// maxListedNames the task names a problem lists: a large generated
// workflow whose names are all wrong is refused at once, with problems
// that stay readable.
const (
	maxSuggestions = 20
	maxListedNames = 20
)

// someNames lists names, the first maxListedNames of them and a count of
// the rest.
func someNames(names []string) string {
	if len(names) <= maxListedNames {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:maxListedNames], ", "), len(names)-maxListedNames)
}

// MustWorkflow is NewWorkflow for package-level workflow variables: it
// panics on a validation error.
func MustWorkflow(name string, tasks ...Task) *Workflow {
	wf, err := NewWorkflow(name, tasks...)
	if err != nil {
		panic(err)
	}
	return wf
}

// Name returns the workflow's name.
func (w *Workflow) Name() string { return w.name }

// Version returns the workflow's content fingerprint: a SHA-256 over its
// name, task names, dependency edges, trigger rules, retry policies and
// timeouts. It is recorded on every run, and changes when any of them
// does.
func (w *Workflow) Version() string { return w.version }

// TaskNames returns the task names in declaration order.
func (w *Workflow) TaskNames() []string {
	out := make([]string, len(w.tasks))
	for i, t := range w.tasks {
		out[i] = t.Name
	}
	return out
}

// Dependencies returns the declared dependencies of a task, or nil for an
// unknown name.
func (w *Workflow) Dependencies(task string) []string {
	def := w.byName[task]
	if def == nil {
		return nil
	}
	return append([]string(nil), def.DependsOn...)
}

func (w *Workflow) fingerprint() string {
	type taskShape struct {
		Name    string   `json:"name"`
		Deps    []string `json:"deps"`
		Trigger any      `json:"trigger"`
		Retry   any      `json:"retry"`
		Timeout string   `json:"timeout"`
	}
	shape := struct {
		Name  string      `json:"name"`
		Tasks []taskShape `json:"tasks"`
	}{Name: w.name}
	for _, t := range w.tasks {
		deps := t.DependsOn
		if deps == nil {
			deps = []string{}
		}
		shape.Tasks = append(shape.Tasks, taskShape{Name: t.Name, Deps: deps, Trigger: t.Trigger.canonical(),
			Retry: t.retry.canonical(), Timeout: t.Timeout.String()})
	}
	b, err := json.Marshal(shape)
	if err != nil {
		panic(fmt.Sprintf("cloacina: encode workflow fingerprint: %v", err)) // only plain values are encoded
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
