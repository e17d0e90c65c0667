package cloacina

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// Sentinel errors, for errors.Is.
var (
	// ErrKeyExists is returned by Context.Insert for a key already present.
	ErrKeyExists = errors.New("key already exists")
	// ErrKeyNotFound is returned for a context key that is not present.
	ErrKeyNotFound = errors.New("key not found")
	// ErrTypeMismatch is returned by Get when a value does not decode as the
	// requested type.
	ErrTypeMismatch = errors.New("type mismatch")
	// ErrInvalidWorkflow is matched by every *ValidationError.
	ErrInvalidWorkflow = errors.New("invalid workflow")
	// ErrUnknownWorkflow is returned when a run asks for a workflow the
	// runner has not registered.
	ErrUnknownWorkflow = errors.New("unknown workflow")
	// ErrRunNotFound is returned for a run id that does not exist (or whose
	// ExecuteTx transaction has not committed).
	ErrRunNotFound = errors.New("run not found")
	// ErrTaskNotFound is returned for a task id that does not exist.
	ErrTaskNotFound = errors.New("task not found")
	// ErrRunFinished is returned when cancelling, pausing or resuming a run
	// that already reached a terminal status, and when a task of a finished
	// (cancelled) run starts a child run.
	ErrRunFinished = errors.New("run already finished")
	// ErrInvalidURL is returned for a database URL that cannot be used.
	ErrInvalidURL = errors.New("invalid database URL")
	// ErrSchemaTooNew is returned when the database was migrated by a newer
	// version of Cloacina.
	ErrSchemaTooNew = driver.ErrSchemaTooNew
	// ErrSchemaOutdated is returned when migrations are skipped and the
	// database is behind the code.
	ErrSchemaOutdated = errors.New("database schema is older than this version of cloacina")
	// ErrTaskTimeout is wrapped by the error of a task that ran past its
	// timeout. Timeouts are transient: they are retried under RetryTransient.
	ErrTaskTimeout = errors.New("task timed out")
	// ErrRunnerStarted is returned by Start on a runner already started.
	// (Register accepts workflows before and after Start.)
	ErrRunnerStarted = errors.New("runner already started")
	// ErrRunnerClosed is wrapped by the error of every call on a closed
	// runner that would use its database (see Runner.Close, which lets
	// its own tasks' calls through while it stops them), whether or not
	// the runner opened that database.
	ErrRunnerClosed = errors.New("runner closed")
	// ErrReadOnly is returned by the calls that write of a runner opened
	// with Config.ReadOnly.
	ErrReadOnly = driver.ErrReadOnly
	// ErrWrongDatabase is returned by ExecuteTx for a transaction on
	// another database than the runner's: another SQLite file, another
	// PostgreSQL database or server (see ExecuteTx for how a server is
	// told apart).
	ErrWrongDatabase = driver.ErrWrongDatabase
)

// ValidationError lists everything wrong with a workflow definition. Each
// problem says how to fix it.
type ValidationError struct {
	Workflow string
	Problems []string
}

// Error lists the problems.
func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("invalid workflow %q: %s", e.Workflow, e.Problems[0])
	}
	return fmt.Sprintf("invalid workflow %q: %d problems:\n  - %s", e.Workflow, len(e.Problems), strings.Join(e.Problems, "\n  - "))
}

// Is matches ErrInvalidWorkflow.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidWorkflow }

// RunError describes a run that ended Failed or Cancelled; it is returned by
// ExecutionResult.Err.
type RunError struct {
	RunID    uuid.UUID
	Workflow string
	Status   PipelineStatus
	Message  string
}

// Error describes the run's outcome.
func (e *RunError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("run %s of workflow %q %s", e.RunID, e.Workflow, e.Status)
	}
	return fmt.Sprintf("run %s of workflow %q %s: %s", e.RunID, e.Workflow, e.Status, e.Message)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the task fails at once,
// whatever attempts its retry policy has left.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type transientError struct{ err error }

func (e *transientError) Error() string   { return e.err.Error() }
func (e *transientError) Unwrap() error   { return e.err }
func (e *transientError) Transient() bool { return true }

// Transient marks err as a passing failure (a timeout, an unavailable
// service), which RetryTransient retries.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// IsTransient reports whether err is transient: marked with Transient,
// implementing Transient() bool returning true, or a task timeout.
func IsTransient(err error) bool {
	if errors.Is(err, ErrTaskTimeout) {
		return true
	}
	var t interface{ Transient() bool }
	return errors.As(err, &t) && t.Transient()
}
