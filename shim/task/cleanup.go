package task

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	runc "github.com/containerd/go-runc"
)

// Cleanup removes what a dead shim left of container id in bundle: the
// runc container, with any process still in it, and the rootfs mounts.
func Cleanup(ctx context.Context, bundle, namespace, id string) error {
	rc := loadRuncConfig(bundle, namespace)
	r := rc.runc(bundle)
	var errs []error
	// containerd runs this after every shim exit; a shim that deleted its
	// container left no runc state, and runc need not be started at all.
	if _, err := os.Stat(filepath.Join(rc.Root, id)); err == nil {
		if err := r.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
			if _, serr := r.State(ctx, id); serr == nil {
				errs = append(errs, fmt.Errorf("runc delete %s: %w", id, runcError(bundle, err)))
			}
		}
	}
	if err := unmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		errs = append(errs, err)
	}
	// The namespace's runc root goes with its last container.
	_ = os.Remove(rc.Root)
	return errors.Join(errs...)
}
