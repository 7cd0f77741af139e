// Package repocheck holds checks over the repository's tracked files
// (narration_test.go). It has no code of its own: the checks run with the
// rest of the test suite, so that `go test ./...` enforces them.
package repocheck
