package launch

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// logFIFO is the FIFO containerd creates in the bundle and copies to its
// own output.
const logFIFO = "log"

// openLog returns the shim's logger, writing to the bundle's log FIFO at
// debug level with -debug and at info level otherwise.
func openLog(f *flags) zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	level := zerolog.InfoLevel
	if f.debug {
		level = zerolog.DebugLevel
	}
	w := fifoWriter(-1)
	// containerd 1.6 makes the FIFO; without one the log is a plain file.
	flags := unix.O_WRONLY | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_CREAT | unix.O_APPEND
	fd, err := unix.Open(filepath.Join(f.bundle, logFIFO), flags, 0o600)
	if err == nil {
		w = fifoWriter(fd)
		// A panic reaches the daemon's log too.
		_ = debug.SetCrashOutput(os.NewFile(uintptr(fd), logFIFO), debug.CrashOptions{})
	}
	return zerolog.New(w).Level(level).With().Timestamp().
		Str("runtime", "io.containerd.corral.v2").
		Str("namespace", f.namespace).
		Str("id", f.id).
		Logger()
}

// fifoWriter writes whole lines to a non-blocking FIFO. Lines that do not
// fit, or find no reader (the daemon is down), are dropped: logging must
// never stall the shim.
type fifoWriter int

// Write implements io.Writer.
func (w fifoWriter) Write(p []byte) (int, error) {
	if w >= 0 {
		_, _ = unix.Write(int(w), p)
	}
	return len(p), nil
}
