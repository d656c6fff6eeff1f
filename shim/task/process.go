package task

import (
	"time"

	tasktypes "github.com/containerd/containerd/api/types/task"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/shim/reaper"
)

// process is the container's init or one of its execs. Its fields are
// guarded by the Service lock.
type process struct {
	execID string
	spec   *specs.Process // exec only
	stdio  stdio

	pid        int
	status     tasktypes.Status
	exitStatus uint32
	exitedAt   time.Time
	exited     chan struct{}
	io         *procIO
	// starting is set while runc start runs; an exit seen meanwhile is
	// published after /tasks/start, held in heldExit.
	starting bool
	heldExit bool
}

// newProcess returns a process in the created state.
func newProcess(execID string, s stdio) *process {
	return &process{
		execID: execID,
		stdio:  s,
		status: tasktypes.Status_CREATED,
		exited: make(chan struct{}),
	}
}

// setExited records e and releases every waiter. It reports false when the
// process had already exited.
func (p *process) setExited(e reaper.Exit) bool {
	if p.status == tasktypes.Status_STOPPED {
		return false
	}
	p.status = tasktypes.Status_STOPPED
	p.exitStatus = uint32(e.Status)
	p.exitedAt = e.Timestamp
	close(p.exited)
	return true
}

// running reports whether the process has started and not exited.
func (p *process) running() bool {
	return p.status == tasktypes.Status_RUNNING || p.status == tasktypes.Status_PAUSED
}

// exitedAtProto is the exit time, or nil before the process exited.
func (p *process) exitedAtProto() *timestamppb.Timestamp {
	if p.exitedAt.IsZero() {
		return nil
	}
	return timestamppb.New(p.exitedAt)
}
