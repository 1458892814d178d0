//go:build !race

package testenv

// RaceEnabled reports whether this test binary was built with -race; Build
// then builds the binaries with -race too.
const RaceEnabled = false
