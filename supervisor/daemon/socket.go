package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/errdefs"
)

// listenUnix listens on a unix socket at path with mode and owner. A socket
// file left by a daemon that crashed is replaced; a socket some live process
// still answers on is not.
func listenUnix(path string, mode os.FileMode, uid, gid int) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: %w", path, errdefs.ErrAlreadyExists)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is served by another process: %w", path, errdefs.ErrAlreadyExists)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("check socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("set mode of socket %s: %w", path, err)
	}
	if err := os.Lchown(path, uid, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("set owner of socket %s to %d:%d: %w", path, uid, gid, err)
	}
	return l, nil
}
