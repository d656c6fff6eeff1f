package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// socketDir holds every shim socket. Paths in it have a fixed length
// (well under sun_path's 108 bytes) whatever the namespace and id.
const socketDir = "/run/corral-shim"

// socketPath is the socket of the shim for id in namespace under the
// daemon at ttrpcAddress.
func socketPath(ttrpcAddress, namespace, id string) string {
	sum := sha256.Sum256([]byte(ttrpcAddress + "\x00" + namespace + "\x00" + id))
	return filepath.Join(socketDir, hex.EncodeToString(sum[:16])+".sock")
}

// listen creates the socket at path, mode 0600 in a 0700 directory.
func listen(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(socketDir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Chmod(socketDir, 0o700); err != nil {
		return nil, fmt.Errorf("chmod socket dir: %w", err)
	}
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	return l, nil
}

// inUse reports whether a shim already serves the socket at path.
func inUse(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// addressOf is path as the unix:// address containerd expects.
func addressOf(path string) string {
	return "unix://" + path
}
