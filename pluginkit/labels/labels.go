// Package labels holds the limits every plugin applies to the labels
// clients set on objects, so that a label is refused the same way whichever
// process sees it first.
package labels

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// MaxSize is the most bytes the key and value of one label may take
// together, the limit containerd applies.
const MaxSize = 4096

// Validate returns an error wrapping [errdefs.ErrInvalidArgument] if the
// label key=value is one no store accepts.
func Validate(key, value string) error {
	if key == "" {
		return fmt.Errorf("label key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if n := len(key) + len(value); n > MaxSize {
		return fmt.Errorf("label %.64q: key and value take %d bytes, more than %d: %w",
			key, n, MaxSize, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateAll is Validate of every label of set.
func ValidateAll(set map[string]string) error {
	for k, v := range set {
		if err := Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}
