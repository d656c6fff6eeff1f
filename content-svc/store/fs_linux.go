package store

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing a range of f to disk, so
// that the fsync at commit has less left to do. It does not wait.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// renameNoReplace renames src to dst unless dst exists, which is
// [os.ErrExist]. errNoRenameNoReplace means the file system cannot tell.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return os.ErrExist
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		return errNoRenameNoReplace
	}
	return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
}
