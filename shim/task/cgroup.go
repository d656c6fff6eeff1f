package task

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// cgroup reads a container's metrics and watches it for OOM kills on either
// cgroup hierarchy.
type cgroup struct {
	v1 cgroup1.Cgroup
	v2 *cgroup2.Manager
}

// loadCgroup finds the cgroup of pid.
func loadCgroup(pid int) (*cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("find cgroup of pid %d: %w", pid, err)
		}
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", path, err)
		}
		return &cgroup{v2: m}, nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %w", pid, err)
	}
	return &cgroup{v1: cg}, nil
}

// stats returns the metrics as the Any that containerd's clients decode.
func (c *cgroup) stats() (*anypb.Any, error) {
	var m any
	if c.v2 != nil {
		s, err := c.v2.Stat()
		if err != nil {
			return nil, fmt.Errorf("read cgroup v2 stats: %w", err)
		}
		m = s
	} else {
		s, err := c.v1.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return nil, fmt.Errorf("read cgroup v1 stats: %w", err)
		}
		m = s
	}
	return typeurl.MarshalAnyToProto(m)
}

// watchOOM calls onOOM for every OOM kill in the cgroup until stop is
// called. A cgroup without a memory controller is not watched.
func (c *cgroup) watchOOM(onOOM func()) (stop func(), err error) {
	if c.v2 != nil {
		return c.watchOOMv2(onOOM), nil
	}
	fd, err := c.v1.OOMEventFD()
	if err != nil {
		return nil, fmt.Errorf("register oom eventfd: %w", err)
	}
	f := os.NewFile(fd, "oom-eventfd")
	go func() {
		buf := make([]byte, 8)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			if binary.LittleEndian.Uint64(buf) == 0 {
				continue
			}
			// The eventfd also fires when the cgroup is removed.
			if c.v1.State() == cgroup1.Deleted {
				return
			}
			onOOM()
		}
	}()
	return func() { f.Close() }, nil
}

// watchOOMv2 follows memory.events and reports increases of oom_kill.
func (c *cgroup) watchOOMv2(onOOM func()) func() {
	done := make(chan struct{})
	events, errs := c.v2.EventChan()
	go func() {
		var last uint64
		for {
			select {
			case e := <-events:
				if e.OOMKill > last {
					last = e.OOMKill
					onOOM()
				}
			case <-errs:
				return
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
}

// MoveToCgroup puts pid into the cgroup at path (relative to the cgroup
// root), as the ShimCgroup runc option asks for the shim itself.
func MoveToCgroup(pid int, path string) error {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", path, err)
		}
		return m.AddProc(uint64(pid))
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return fmt.Errorf("load cgroup %s: %w", path, err)
	}
	return cg.AddProc(uint64(pid))
}
