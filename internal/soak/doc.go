// Package soak holds Cloacina's crash-safety soak tests. It has no API:
// everything is in its tests.
//
//   - The kill -9 soak runs a five-task workflow with random failures and
//     retries on several runner processes sharing one database (PostgreSQL:
//     three processes; SQLite: two on one file), kills one of them with
//     SIGKILL several times while runs proceed, restarts it, and then checks
//     the audit log against the stored state and against the executions the
//     task functions recorded in a table of their own.
//   - The database restart test restarts a private PostgreSQL cluster
//     (created with Debian's pg_createcluster) under running workflows and
//     checks that every run completes with every transition recorded once.
//   - The idle runner test counts the statements one idle runner sends.
//
// The runner processes are this test binary re-executed with
// CLOACINA_SOAK_RUNNER set (see TestMain). Set CLOACINA_SOAK_REPORT to a
// file path to have the figures (kill-to-resume latency, idle statements
// per second) appended to it.
package soak
