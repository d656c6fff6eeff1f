// Package version holds the daemon's version, set at build time.
package version

// Package is the name the daemon reports beside its version.
const Package = "corral.dev"

// Version and Revision are set with -ldflags "-X corral.dev/supervisor/version.Version=...".
var (
	Version  = "0.1.0-dev"
	Revision = ""
)
