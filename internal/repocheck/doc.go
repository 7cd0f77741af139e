// Package repocheck holds checks over the repository's files: no tracked
// file narrates development (narration_test.go), every claim of
// docs/claims.md names tests that exist (claims_test.go), and the test
// command runs every fuzz target (testcmd_test.go). It has no code of its
// own: the checks run with the rest of the test suite, so that
// `go test ./...` enforces them.
package repocheck
