package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Directory modes: the root holds data no other user may read; the state
// directory must be traversable so that a socket inside it can be reached by
// the group the socket is shared with.
const (
	rootMode   os.FileMode = 0o700
	stateMode  os.FileMode = 0o711
	pluginMode os.FileMode = 0o700
)

// preflight checks, before anything is created, that each directory can be
// made: its parent must exist already and be a directory.
func preflight(dirs ...string) error {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		parent := filepath.Dir(d)
		fi, err := os.Stat(parent)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("directory %s for %s does not exist: %w", parent, d, errdefs.ErrNotFound)
			}
			return fmt.Errorf("check %s: %w", parent, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s (parent of %s) is not a directory: %w", parent, d, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// ensureDir creates dir with mode, or tightens the mode of an existing one.
func ensureDir(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", dir, err)
	}
	return nil
}

// lockDir takes an exclusive lock on dir for the life of the process, so a
// second daemon on the same directory stops at once.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock in %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another daemon: %w", dir, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}
