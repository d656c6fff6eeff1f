// Package identifiers validates the names containerd clients choose for
// namespaces, containers, leases and similar objects.
//
// A valid identifier is one or more runs of ASCII letters and digits joined
// by single ".", "_" or "-" characters, at most [MaxLength] bytes long. Such
// a name is safe to use as one file system path component.
package identifiers

import (
	"fmt"
	"regexp"

	"github.com/containerd/errdefs"
)

// MaxLength is the longest identifier, in bytes, that [Validate] accepts.
const MaxLength = 76

// pattern is the syntax every identifier must match.
var pattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`)

// Validate returns nil if s is a valid identifier, and otherwise an error
// wrapping [errdefs.ErrInvalidArgument] that says which rule s breaks.
func Validate(s string) error {
	if s == "" {
		return fmt.Errorf("identifier must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if len(s) > MaxLength {
		return fmt.Errorf("identifier %q must be at most %d characters long: %w",
			s, MaxLength, errdefs.ErrInvalidArgument)
	}
	if !pattern.MatchString(s) {
		return fmt.Errorf("identifier %q must match %v: %w", s, pattern, errdefs.ErrInvalidArgument)
	}
	return nil
}
