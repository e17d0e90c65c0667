package cloacina

import (
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"time"
)

// Backoff is how the delay between attempts grows.
type Backoff int

// Backoff kinds.
const (
	// BackoffExponential multiplies the delay by Multiplier after each
	// attempt: InitialDelay, InitialDelay×2, ×4… It is the default.
	BackoffExponential Backoff = iota
	// BackoffFixed waits InitialDelay between every attempt.
	BackoffFixed
	// BackoffLinear waits InitialDelay × the number of the failed attempt.
	BackoffLinear
)

// Retry policy defaults, applied to zero fields.
const (
	DefaultInitialDelay = time.Second
	DefaultMaxDelay     = 5 * time.Minute
	DefaultMultiplier   = 2.0
)

// RetryPolicy says how often and when a failed task runs again. The zero
// value (and a nil policy) means one attempt and no retries.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included: 3 means one
	// try and up to two retries. 0 means 1.
	MaxAttempts int
	// Backoff shapes the delay between attempts. Default: BackoffExponential.
	Backoff Backoff
	// InitialDelay is the first retry's delay. Default: 1s.
	InitialDelay time.Duration
	// MaxDelay caps every delay, jitter included. Default: 5m, or
	// InitialDelay when that is longer.
	MaxDelay time.Duration
	// Multiplier is the exponential growth factor. Default: 2.
	Multiplier float64
	// Jitter spreads each delay randomly by up to this fraction of it
	// (0.2 = ±20%), never beyond MaxDelay. Default: 0, no jitter.
	Jitter float64
	// RetryOn lists the conditions under which a failure is retried; they
	// combine with OR. Default: RetryAll. An error marked with Permanent is
	// never retried.
	RetryOn []RetryCondition
}

// RetryCondition selects the failures a policy retries.
type RetryCondition struct {
	kind     retryKind
	patterns []string
	compiled []*regexp.Regexp
}

type retryKind int

const (
	retryAll retryKind = iota + 1
	retryNever
	retryTransient
	retryPattern
)

// RetryAll retries every failure. It is the default.
func RetryAll() RetryCondition { return RetryCondition{kind: retryAll} }

// RetryNever retries nothing.
func RetryNever() RetryCondition { return RetryCondition{kind: retryNever} }

// RetryTransient retries failures that IsTransient reports as transient
// (marked with Transient, or a task timeout).
func RetryTransient() RetryCondition { return RetryCondition{kind: retryTransient} }

// RetryOnPattern retries failures whose error text matches any of the
// regular expressions (Go syntax, unanchored).
func RetryOnPattern(patterns ...string) RetryCondition {
	return RetryCondition{kind: retryPattern, patterns: patterns}
}

// retryPlan is a validated policy with defaults applied.
type retryPlan struct {
	maxAttempts int
	backoff     Backoff
	initial     time.Duration
	maxDelay    time.Duration
	multiplier  float64
	jitter      float64
	conds       []RetryCondition
}

func (p *RetryPolicy) plan(task string) (*retryPlan, []string) {
	var problems []string
	if p == nil {
		p = &RetryPolicy{}
	}
	rp := &retryPlan{maxAttempts: p.MaxAttempts, backoff: p.Backoff, initial: p.InitialDelay, maxDelay: p.MaxDelay,
		multiplier: p.Multiplier, jitter: p.Jitter}
	if rp.maxAttempts < 0 {
		problems = append(problems, fmt.Sprintf("task %q has MaxAttempts %d: use 1 or more (it counts the first attempt too)", task, p.MaxAttempts))
	}
	if rp.maxAttempts > math.MaxInt32 {
		// Attempts are stored as 32-bit integers.
		problems = append(problems, fmt.Sprintf("task %q has MaxAttempts %d: use at most %d", task, p.MaxAttempts, math.MaxInt32))
	}
	if rp.maxAttempts == 0 {
		rp.maxAttempts = 1
	}
	if p.Backoff < BackoffExponential || p.Backoff > BackoffLinear {
		problems = append(problems, fmt.Sprintf("task %q has unknown Backoff %d: use BackoffExponential, BackoffFixed or BackoffLinear", task, p.Backoff))
	}
	if p.InitialDelay < 0 || p.MaxDelay < 0 {
		problems = append(problems, fmt.Sprintf("task %q has a negative retry delay: delays must be 0 (default) or positive", task))
	}
	if rp.initial == 0 {
		rp.initial = DefaultInitialDelay
	}
	if rp.maxDelay == 0 {
		rp.maxDelay = max(DefaultMaxDelay, rp.initial)
	}
	if rp.maxDelay < rp.initial {
		problems = append(problems, fmt.Sprintf("task %q has MaxDelay %s below InitialDelay %s: raise MaxDelay or lower InitialDelay", task, rp.maxDelay, rp.initial))
	}
	if p.Multiplier != 0 && (p.Multiplier < 1 || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0)) {
		problems = append(problems, fmt.Sprintf("task %q has Multiplier %g: use 1 or more (default 2)", task, p.Multiplier))
	}
	if rp.multiplier == 0 {
		rp.multiplier = DefaultMultiplier
	}
	if p.Jitter < 0 || p.Jitter > 1 || math.IsNaN(p.Jitter) {
		problems = append(problems, fmt.Sprintf("task %q has Jitter %g: use a fraction between 0 and 1", task, p.Jitter))
	}
	for _, c := range p.RetryOn {
		switch c.kind {
		case retryAll, retryNever, retryTransient:
			rp.conds = append(rp.conds, c)
		case retryPattern:
			if len(c.patterns) == 0 {
				problems = append(problems, fmt.Sprintf("task %q has RetryOnPattern() without patterns: give at least one regular expression", task))
			}
			compiled := RetryCondition{kind: retryPattern, patterns: c.patterns}
			for _, pat := range c.patterns {
				re, err := regexp.Compile(pat)
				if err != nil {
					problems = append(problems, fmt.Sprintf("task %q has retry pattern %q that is not a valid regular expression: %v", task, pat, err))
					continue
				}
				compiled.compiled = append(compiled.compiled, re)
			}
			rp.conds = append(rp.conds, compiled)
		default:
			problems = append(problems, fmt.Sprintf("task %q has a zero RetryCondition: use RetryAll, RetryNever, RetryTransient or RetryOnPattern", task))
		}
	}
	if len(rp.conds) == 0 {
		rp.conds = []RetryCondition{RetryAll()}
	}
	return rp, problems
}

// shouldRetry decides whether the failure of attempt (1-based) is retried.
func (rp *retryPlan) shouldRetry(err error, attempt int) bool {
	return rp.shouldRetryWithin(err, attempt, rp.maxAttempts)
}

// shouldRetryWithin is shouldRetry with an attempt budget of its own: the
// one a task was created with, which a workflow changed since (another
// MaxAttempts) does not change.
func (rp *retryPlan) shouldRetryWithin(err error, attempt, maxAttempts int) bool {
	if attempt >= maxAttempts || IsPermanent(err) {
		return false
	}
	for _, c := range rp.conds {
		switch c.kind {
		case retryAll:
			return true
		case retryTransient:
			if IsTransient(err) {
				return true
			}
		case retryPattern:
			for _, re := range c.compiled {
				if re.MatchString(err.Error()) {
					return true
				}
			}
		}
	}
	return false
}

// delay is the wait after the failure of attempt (1-based).
func (rp *retryPlan) delay(attempt int) time.Duration {
	var d float64
	switch rp.backoff {
	case BackoffFixed:
		d = float64(rp.initial)
	case BackoffLinear:
		d = float64(rp.initial) * float64(attempt)
	default:
		d = float64(rp.initial) * math.Pow(rp.multiplier, float64(attempt-1))
	}
	if rp.jitter > 0 {
		d *= 1 + rp.jitter*(2*rand.Float64()-1)
	}
	// >=: a delay of exactly MaxDelay when that is MaxInt64 is 2^63 as a
	// float, which would wrap to a negative Duration.
	if d >= float64(rp.maxDelay) || math.IsInf(d, 0) || math.IsNaN(d) {
		return rp.maxDelay
	}
	if d < 0 {
		return 0
	}
	return time.Duration(d)
}

func (rp *retryPlan) canonical() any {
	conds := make([]map[string]any, len(rp.conds))
	for i, c := range rp.conds {
		conds[i] = map[string]any{"kind": int(c.kind), "patterns": c.patterns}
	}
	return map[string]any{"max_attempts": rp.maxAttempts, "backoff": int(rp.backoff), "initial": rp.initial.String(),
		"max_delay": rp.maxDelay.String(), "multiplier": rp.multiplier, "jitter": rp.jitter, "retry_on": conds}
}
