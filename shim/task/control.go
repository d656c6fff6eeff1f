package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"

	eventtypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
)

// empty is the reply of the calls that return nothing.
var empty = &emptypb.Empty{}

// Exec registers an exec process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	var spec specs.Process
	if r.Spec == nil || json.Unmarshal(r.Spec.GetValue(), &spec) != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: bad process spec", r.ExecID)
	}
	spec.Terminal = r.Terminal

	s.mu.Lock()
	defer s.mu.Unlock()
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if !c.init.running() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "task %s is %s", r.ID, c.init.status)
	}
	if _, ok := c.execs[r.ExecID]; ok || r.ExecID == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q in task %s", r.ExecID, r.ID)
	}
	p := newProcess(r.ExecID, stdioOf(r.Stdin, r.Stdout, r.Stderr, r.Terminal))
	p.spec = &spec
	c.execs[r.ExecID] = p
	s.cfg.Publisher.Publish(TopicExecAdded, &eventtypes.TaskExecAdded{
		ContainerID: r.ID,
		ExecID:      r.ExecID,
	})
	return empty, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(
	ctx context.Context,
	r *taskapi.ResizePtyRequest,
) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err == nil && p.io == nil {
		err = fmt.Errorf("process %q has no stdio: %w", r.ExecID, errdefs.ErrFailedPrecondition)
	}
	if err == nil {
		if rerr := p.io.resize(r.Width, r.Height); rerr != nil {
			err = fmt.Errorf("resize pty: %w: %w", rerr, errdefs.ErrFailedPrecondition)
		}
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// CloseIO closes a process's stdin once the input already sent is copied.
func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	_, p, err := s.lookup(r.ID, r.ExecID)
	var pio *procIO
	if err == nil {
		pio = p.io
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.Stdin && pio != nil {
		// EOF follows once the input already sent is copied.
		go pio.closeStdin()
	}
	return empty, nil
}

// Kill signals the init process (every process of the container with
// all) or an exec.
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	c, p, err := s.lookup(r.ID, r.ExecID)
	var pid int
	switch {
	case err != nil:
	case p.status == tasktypes.Status_STOPPED && !r.All:
		err = fmt.Errorf("process %s already finished: %w", r.ID, errdefs.ErrNotFound)
	case p.pid == 0:
		err = fmt.Errorf("process %s not started: %w", r.ExecID, errdefs.ErrFailedPrecondition)
	default:
		pid = p.pid
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	if r.ExecID != "" {
		err = signalExec(pid, r.ExecID, unix.Signal(r.Signal))
	} else {
		err = c.kill(ctx, int(r.Signal), r.All)
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return empty, nil
}

// signalExec sends sig to the exec execID, running as pid.
func signalExec(pid int, execID string, sig unix.Signal) error {
	err := unix.Kill(pid, sig)
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("process %s already finished: %w", execID, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("signal exec %s: %w", execID, err)
	}
	return nil
}

// kill signals the container's init, or with all every process in it,
// through runc.
func (c *container) kill(ctx context.Context, sig int, all bool) error {
	err := c.runc.Kill(ctx, c.id, sig, &runc.KillOpts{All: all})
	if err == nil {
		return nil
	}
	if st, serr := c.runc.State(ctx, c.id); serr != nil || st.Status == "stopped" {
		return fmt.Errorf("task %s already finished: %w", c.id, errdefs.ErrNotFound)
	}
	return fmt.Errorf("runc kill: %w", runcError(c.bundle, err))
}

// Pids lists the container's processes, naming the execs among them.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	s.mu.Lock()
	c, _, err := s.lookup(r.ID, "")
	execs := make(map[int]string)
	if err == nil {
		for id, p := range c.execs {
			if p.pid != 0 {
				execs[p.pid] = id
			}
		}
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	pids, err := c.runc.Ps(ctx, c.id)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc ps: %w", runcError(c.bundle, err)))
	}
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execs[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, errgrpc.ToGRPC(fmt.Errorf("marshal process details: %w", err))
			}
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// Pause freezes the container.
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, true)
}

// Resume thaws the container.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return s.freeze(ctx, r.ID, false)
}

// freeze pauses or resumes the container and publishes the change.
func (s *Service) freeze(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	want, from := tasktypes.Status_PAUSED, tasktypes.Status_RUNNING
	if !pause {
		want, from = from, want
	}
	s.mu.Lock()
	c, p, err := s.lookup(id, "")
	if err == nil && p.status != from {
		err = fmt.Errorf("task %s is %s: %w", id, p.status, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	if pause {
		err = c.runc.Pause(ctx, id)
	} else {
		err = c.runc.Resume(ctx, id)
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc %s: %w", want, runcError(c.bundle, err)))
	}
	s.mu.Lock()
	if p.status == from {
		p.status = want
	}
	s.mu.Unlock()
	if pause {
		s.cfg.Publisher.Publish(TopicPaused, &eventtypes.TaskPaused{ContainerID: id})
	} else {
		s.cfg.Publisher.Publish(TopicResumed, &eventtypes.TaskResumed{ContainerID: id})
	}
	return empty, nil
}

// Update changes the container's resources.
func (s *Service) Update(
	ctx context.Context,
	r *taskapi.UpdateTaskRequest,
) (*emptypb.Empty, error) {
	var res specs.LinuxResources
	if r.Resources == nil || json.Unmarshal(r.Resources.GetValue(), &res) != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "update %s: bad resources", r.ID)
	}
	s.mu.Lock()
	c, p, err := s.lookup(r.ID, "")
	if err == nil && p.status == tasktypes.Status_STOPPED {
		err = fmt.Errorf("task %s is stopped: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := c.runc.Update(ctx, r.ID, &res); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc update: %w", runcError(c.bundle, err)))
	}
	return empty, nil
}

// Wait returns once the process has exited, at once if it already has.
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	s.mu.Lock()
	_, p, err := s.lookup(r.ID, r.ExecID)
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskapi.WaitResponse{ExitStatus: p.exitStatus, ExitedAt: p.exitedAtProto()}, nil
}

// Stats returns the container's cgroup metrics.
func (s *Service) Stats(
	ctx context.Context,
	r *taskapi.StatsRequest,
) (*taskapi.StatsResponse, error) {
	s.mu.Lock()
	c, _, err := s.lookup(r.ID, "")
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	<-c.watched
	if c.cg == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "task %s has no cgroup", r.ID)
	}
	a, err := c.cg.stats()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// State describes the init process or an exec.
func (s *Service) State(
	ctx context.Context,
	r *taskapi.StateRequest,
) (*taskapi.StateResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskapi.StateResponse{
		ID:         r.ID,
		ExecID:     r.ExecID,
		Bundle:     c.bundle,
		Pid:        uint32(p.pid),
		Status:     p.status,
		Stdin:      p.stdio.stdin,
		Stdout:     p.stdio.stdout,
		Stderr:     p.stdio.stderr,
		Terminal:   p.stdio.terminal,
		ExitStatus: p.exitStatus,
		ExitedAt:   p.exitedAtProto(),
	}, nil
}

// Connect returns the shim's and the task's pids.
func (s *Service) Connect(
	ctx context.Context,
	r *taskapi.ConnectRequest,
) (*taskapi.ConnectResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: "2"}
	if s.c != nil {
		resp.TaskPid = uint32(s.c.init.pid)
	}
	return resp, nil
}

// Shutdown exits the shim once it has no container left, or at once with
// now.
func (s *Service) Shutdown(
	ctx context.Context,
	r *taskapi.ShutdownRequest,
) (*emptypb.Empty, error) {
	s.mu.Lock()
	busy := s.c != nil
	s.mu.Unlock()
	if busy && !r.Now {
		return empty, nil
	}
	s.once.Do(func() { go s.cfg.Exit() })
	return empty, nil
}

// Checkpoint dumps the container with criu.
func (s *Service) Checkpoint(
	ctx context.Context,
	r *taskapi.CheckpointTaskRequest,
) (*emptypb.Empty, error) {
	s.mu.Lock()
	c, p, err := s.lookup(r.ID, "")
	if err == nil && !p.running() {
		err = fmt.Errorf("task %s is %s: %w", r.ID, p.status, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if _, err := exec.LookPath("criu"); err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "checkpoint needs criu, which is not installed")
	}

	opts := &options.CheckpointOptions{}
	if r.Options != nil {
		if v, err := typeurl.UnmarshalAny(r.Options); err == nil {
			if o, ok := v.(*options.CheckpointOptions); ok {
				opts = o
			}
		}
	}
	var actions []runc.CheckpointAction
	if !opts.Exit {
		actions = append(actions, runc.LeaveRunning)
	}
	err = c.runc.Checkpoint(ctx, r.ID, &runc.CheckpointOpts{
		ImagePath:                r.Path,
		WorkDir:                  opts.WorkPath,
		AllowOpenTCP:             opts.OpenTcp,
		AllowExternalUnixSockets: opts.ExternalUnixSockets,
		AllowTerminal:            opts.Terminal,
		FileLocks:                opts.FileLocks,
		EmptyNamespaces:          opts.EmptyNamespaces,
	}, actions...)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc checkpoint: %w", runcError(c.bundle, err)))
	}
	s.cfg.Publisher.Publish(TopicCheckpoint, &eventtypes.TaskCheckpointed{
		ContainerID: r.ID,
		Checkpoint:  r.Path,
	})
	return empty, nil
}
