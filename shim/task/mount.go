package task

import (
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"
)

// mountFlags maps mount(8) option words to the flags they set (clear is
// true for the words that remove a flag).
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"async":         {true, unix.MS_SYNCHRONOUS},
	"atime":         {true, unix.MS_NOATIME},
	"bind":          {false, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {true, unix.MS_NODEV},
	"diratime":      {true, unix.MS_NODIRATIME},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"exec":          {true, unix.MS_NOEXEC},
	"mand":          {false, unix.MS_MANDLOCK},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"nomand":        {true, unix.MS_MANDLOCK},
	"norelatime":    {true, unix.MS_RELATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"nosuid":        {false, unix.MS_NOSUID},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
	"relatime":      {false, unix.MS_RELATIME},
	"remount":       {false, unix.MS_REMOUNT},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"suid":          {true, unix.MS_NOSUID},
	"sync":          {false, unix.MS_SYNCHRONOUS},
}

// parseMountOptions splits options into mount flags and the data string
// passed to the filesystem.
func parseMountOptions(options []string) (uintptr, string) {
	var (
		flags uintptr
		data  []string
	)
	for _, o := range options {
		f, ok := mountFlags[o]
		if !ok {
			data = append(data, o)
			continue
		}
		if f.clear {
			flags &^= f.flag
		} else {
			flags |= f.flag
		}
	}
	return flags, strings.Join(data, ",")
}

// mountRootfs mounts ms, in order, on target. On failure it undoes the
// mounts it made.
func mountRootfs(ms []*types.Mount, target string) (err error) {
	for i, m := range ms {
		if err := mountOne(m, target); err != nil {
			if i > 0 {
				_ = unmountAll(target)
			}
			return err
		}
	}
	return nil
}

// mountOne performs a single mount, remounting a read-only bind mount so
// that the read-only flag takes effect.
func mountOne(m *types.Mount, target string) error {
	flags, data := parseMountOptions(m.Options)
	if len(data) > unix.Getpagesize()-1 {
		return fmt.Errorf("mount %s on %s: options too long", m.Type, target)
	}
	typ, first := m.Type, flags
	if flags&unix.MS_BIND != 0 {
		// A bind mount ignores MS_RDONLY; it is applied by a remount below.
		typ, first = "", flags&^unix.MS_RDONLY
	}
	if err := unix.Mount(m.Source, target, typ, first, data); err != nil {
		return fmt.Errorf("mount %s %s on %s: %w", m.Type, m.Source, target, err)
	}
	if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
		remount := flags | unix.MS_REMOUNT
		if err := unix.Mount("", target, "", remount, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

// unmountAll removes every mount stacked on target.
func unmountAll(target string) error {
	for range 64 {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("detach %s: %w", target, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: too many mounts", target)
}
