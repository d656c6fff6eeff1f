// Package task serves containerd's shim task API (containerd.task.v2.Task)
// for the one container a shim owns, driving runc and keeping the
// container's stdio and exit status.
package task

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"corral.dev/shim/reaper"
)

// Event topics the shim publishes.
const (
	TopicCreate      = "/tasks/create"
	TopicStart       = "/tasks/start"
	TopicExit        = "/tasks/exit"
	TopicDelete      = "/tasks/delete"
	TopicExecAdded   = "/tasks/exec-added"
	TopicExecStarted = "/tasks/exec-started"
	TopicOOM         = "/tasks/oom"
	TopicPaused      = "/tasks/paused"
	TopicResumed     = "/tasks/resumed"
	TopicCheckpoint  = "/tasks/checkpointed"
)

// earlyExitTTL bounds how long an exit of an unknown pid is kept for an
// exec whose pid is not read yet.
const earlyExitTTL = 10 * time.Second

// Publisher sends events to the daemon.
type Publisher interface {
	Publish(topic string, event proto.Message)
}

// Config is what a Service needs from the shim process.
type Config struct {
	// Namespace is the containerd namespace of the container.
	Namespace string
	// RuntimeOptions are the runc options the shim was started with; the
	// options of a Create request take precedence.
	RuntimeOptions *options.Options
	// Publisher receives the task events.
	Publisher Publisher
	// Log is the shim's logger.
	Log zerolog.Logger
	// Exit is called once, when the shim should exit.
	Exit func()
}

// Service implements taskapi.TTRPCTaskService.
type Service struct {
	cfg  Config
	log  zerolog.Logger
	once sync.Once

	mu    sync.Mutex
	c     *container
	early map[int]reaper.Exit
}

// container is the one container of this shim.
type container struct {
	id      string
	bundle  string
	rootfs  string // set while the shim has mounts on it
	runcCfg runcConfig
	runc    *runc.Runc
	init    *process
	execs   map[string]*process
	watched chan struct{} // closed once cg and stopOOM are set
	cg      *cgroup
	stopOOM func()
}

var _ taskapi.TTRPCTaskService = (*Service)(nil)

// New returns a Service that learns of exits from r.
func New(cfg Config, r *reaper.Reaper) *Service {
	s := &Service{cfg: cfg, log: cfg.Log, early: make(map[int]reaper.Exit)}
	exits := r.Subscribe()
	go func() {
		for e := range exits {
			s.handleExit(e)
		}
	}()
	return s
}

// handleExit records the exit of one of the container's processes, or
// keeps it for an exec whose pid is not known yet.
func (s *Service) handleExit(e reaper.Exit) {
	s.mu.Lock()
	defer s.mu.Unlock()

	c := s.c
	if c == nil {
		return
	}
	if c.init.pid == e.Pid && c.init.setExited(e) {
		c.init.io.exited()
		s.log.Debug().Int("pid", e.Pid).Int("status", e.Status).Msg("init exited")
		if c.init.starting {
			c.init.heldExit = true
		} else {
			s.publishExit(c, c.init)
		}
		return
	}
	for _, p := range c.execs {
		if p.pid == e.Pid && p.setExited(e) {
			if p.io != nil {
				p.io.exited()
			}
			s.publishExit(c, p)
			return
		}
	}
	for pid, old := range s.early {
		if time.Since(old.Timestamp) > earlyExitTTL {
			delete(s.early, pid)
		}
	}
	s.early[e.Pid] = e
}

// publishExit sends /tasks/exit for p; the exec id names an exec.
func (s *Service) publishExit(c *container, p *process) {
	id := c.id
	if p.execID != "" {
		id = p.execID
	}
	s.cfg.Publisher.Publish(TopicExit, &eventtypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         uint32(p.pid),
		ExitStatus:  p.exitStatus,
		ExitedAt:    p.exitedAtProto(),
	})
}

// lookup returns the container with id and the process execID names.
func (s *Service) lookup(id, execID string) (*container, *process, error) {
	c := s.c
	if c == nil || c.id != id {
		return nil, nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %s in task %s: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// Create mounts the rootfs, sets up stdio and runs runc create.
func (s *Service) Create(
	ctx context.Context,
	r *taskapi.CreateTaskRequest,
) (*taskapi.CreateTaskResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "task %s", s.c.id)
	}

	c, err := s.create(ctx, r)
	if err != nil {
		s.log.Debug().Err(err).Str("id", r.ID).Msg("create failed")
		return nil, errgrpc.ToGRPC(err)
	}
	s.c = c
	s.cfg.Publisher.Publish(TopicCreate, &eventtypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO: &eventtypes.TaskIO{
			Stdin:    r.Stdin,
			Stdout:   r.Stdout,
			Stderr:   r.Stderr,
			Terminal: r.Terminal,
		},
		Checkpoint: r.Checkpoint,
		Pid:        uint32(c.init.pid),
	})
	return &taskapi.CreateTaskResponse{Pid: uint32(c.init.pid)}, nil
}

// create does the work of Create; on failure it leaves nothing behind.
func (s *Service) create(
	ctx context.Context,
	r *taskapi.CreateTaskRequest,
) (_ *container, err error) {
	if r.Checkpoint != "" {
		return nil, fmt.Errorf("restore from checkpoint: %w", errdefs.ErrNotImplemented)
	}
	opts, err := s.runcOptions(r.Options)
	if err != nil {
		return nil, err
	}
	rc := newRuncConfig(s.cfg.Namespace, opts)
	if err := rc.save(r.Bundle); err != nil {
		return nil, fmt.Errorf("save runc config: %w", err)
	}
	c := &container{
		id:      r.ID,
		bundle:  r.Bundle,
		runcCfg: rc,
		runc:    rc.runc(r.Bundle),
		execs:   make(map[string]*process),
		watched: make(chan struct{}),
	}

	// Mount the rootfs the daemon prepared.
	if err := c.mount(r.Rootfs); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && c.rootfs != "" {
			_ = unmountAll(c.rootfs)
		}
	}()

	// Connect stdio and let runc create the container. Exits reaped
	// meanwhile wait in the reaper's subscription for the lock.
	c.init, err = c.createInit(ctx, stdioOf(r.Stdin, r.Stdout, r.Stderr, r.Terminal))
	if err != nil {
		return nil, err
	}

	// Watch the cgroup for stats and OOM kills, while the daemon sends
	// Start: the process cannot run, or use memory, before that.
	go s.watch(c)
	return c, nil
}

// watch finds the container's cgroup and watches it for OOM kills; a
// failure costs only those. It closes c.watched when done.
func (s *Service) watch(c *container) {
	defer close(c.watched)
	cg, err := loadCgroup(c.init.pid)
	if err != nil {
		s.log.Warn().Err(err).Str("id", c.id).Msg("no cgroup for stats")
		return
	}
	c.cg = cg
	c.stopOOM, err = cg.watchOOM(func() {
		s.cfg.Publisher.Publish(TopicOOM, &eventtypes.TaskOOM{ContainerID: c.id})
	})
	if err != nil {
		s.log.Warn().Err(err).Str("id", c.id).Msg("no oom watch")
	}
}

// stdioOf collects the stdio fields of a request.
func stdioOf(stdin, stdout, stderr string, terminal bool) stdio {
	return stdio{stdin: stdin, stdout: stdout, stderr: stderr, terminal: terminal}
}

// mount mounts ms on the bundle's rootfs directory.
func (c *container) mount(ms []*types.Mount) error {
	if len(ms) == 0 {
		return nil
	}
	rootfs := filepath.Join(c.bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o711); err != nil {
		return fmt.Errorf("create rootfs dir: %w", err)
	}
	if err := mountRootfs(ms, rootfs); err != nil {
		return err
	}
	c.rootfs = rootfs
	return nil
}

// createInit runs runc create with the init process's stdio; on failure
// no runc container is left.
func (c *container) createInit(ctx context.Context, sio stdio) (_ *process, err error) {
	p := newProcess("", sio)
	if p.io, err = newProcIO(sio, c.runcCfg.IOUid, c.runcCfg.IOGid); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.io.close()
			_ = c.runc.Delete(context.WithoutCancel(ctx), c.id, &runc.DeleteOpts{Force: true})
		}
	}()

	pidFile := filepath.Join(c.bundle, "init.pid")
	rio, sock := p.io.runcIO()
	err = c.runc.Create(ctx, c.id, c.bundle, &runc.CreateOpts{
		PidFile:       pidFile,
		IO:            rio,
		ConsoleSocket: sock,
		NoPivot:       c.runcCfg.NoPivotRoot,
		NoNewKeyring:  c.runcCfg.NoNewKeyring,
	})
	if err != nil {
		return nil, fmt.Errorf("runc create: %w", runcError(c.bundle, err))
	}
	if err := p.io.started(); err != nil {
		return nil, err
	}
	if p.pid, err = readPidFile(pidFile); err != nil {
		return nil, err
	}
	return p, nil
}

// runcOptions decodes the request's runc options, falling back to the
// options the shim was started with.
func (s *Service) runcOptions(a *anypb.Any) (*options.Options, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return s.cfg.RuntimeOptions, nil
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("decode task options %s: %w: %w",
			a.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	o, ok := v.(*options.Options)
	if !ok {
		return nil, fmt.Errorf("task options of unknown type %s: %w",
			a.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	return o, nil
}

// readPidFile reads the pid runc wrote.
func readPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("parse pid file %s: %w", path, err)
	}
	return pid, nil
}

// Start starts the init process or an exec.
func (s *Service) Start(
	ctx context.Context,
	r *taskapi.StartRequest,
) (*taskapi.StartResponse, error) {
	s.mu.Lock()
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err == nil && p.status != tasktypes.Status_CREATED {
		err = fmt.Errorf("process %s is %s: %w", p.execID, p.status, errdefs.ErrFailedPrecondition)
	}
	if err == nil && r.ExecID != "" && !c.init.running() {
		err = fmt.Errorf("task %s is not running: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	if r.ExecID == "" {
		return s.startInit(ctx, c, p)
	}
	return s.startExec(ctx, c, p)
}

// startInit runs runc start.
func (s *Service) startInit(
	ctx context.Context,
	c *container,
	p *process,
) (*taskapi.StartResponse, error) {
	<-c.watched
	s.mu.Lock()
	p.starting = true
	s.mu.Unlock()
	err := c.runc.Start(ctx, c.id)

	s.mu.Lock()
	defer s.mu.Unlock()
	p.starting = false
	if err == nil {
		if p.status == tasktypes.Status_CREATED {
			p.status = tasktypes.Status_RUNNING
		}
		s.cfg.Publisher.Publish(TopicStart, &eventtypes.TaskStart{
			ContainerID: c.id,
			Pid:         uint32(p.pid),
		})
	}
	if p.heldExit {
		p.heldExit = false
		s.publishExit(c, p)
	}
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc start: %w", runcError(c.bundle, err)))
	}
	return &taskapi.StartResponse{Pid: uint32(p.pid)}, nil
}

// startExec runs runc exec detached and adopts the new process.
func (s *Service) startExec(
	ctx context.Context,
	c *container,
	p *process,
) (_ *taskapi.StartResponse, err error) {
	if p.io, err = newProcIO(p.stdio, c.runcCfg.IOUid, c.runcCfg.IOGid); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pidFile := filepath.Join(c.bundle, p.execID+".pid")
	defer os.Remove(pidFile)
	rio, sock := p.io.runcIO()
	err = c.runc.Exec(ctx, c.id, *p.spec, &runc.ExecOpts{
		PidFile:       pidFile,
		IO:            rio,
		ConsoleSocket: sock,
		Detach:        true,
	})
	if err == nil {
		err = p.io.started()
	}
	var pid int
	if err == nil {
		pid, err = readPidFile(pidFile)
	}
	if err != nil {
		p.io.close()
		s.mu.Lock()
		p.io = nil
		p.setExited(reaper.Exit{Status: 255, Timestamp: time.Now()})
		s.mu.Unlock()
		return nil, errgrpc.ToGRPC(fmt.Errorf("runc exec: %w", runcError(c.bundle, err)))
	}

	s.mu.Lock()
	p.pid = pid
	p.status = tasktypes.Status_RUNNING
	s.cfg.Publisher.Publish(TopicExecStarted, &eventtypes.TaskExecStarted{
		ContainerID: c.id,
		ExecID:      p.execID,
		Pid:         uint32(pid),
	})
	if e, ok := s.early[pid]; ok {
		delete(s.early, pid)
		p.setExited(e)
		p.io.exited()
		s.publishExit(c, p)
	}
	s.mu.Unlock()
	return &taskapi.StartResponse{Pid: uint32(pid)}, nil
}

// Delete removes an exec, or the container once its init has stopped.
func (s *Service) Delete(
	ctx context.Context,
	r *taskapi.DeleteRequest,
) (*taskapi.DeleteResponse, error) {
	s.mu.Lock()
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err == nil && p.running() {
		err = fmt.Errorf("process %s is %s: %w", r.ID, p.status, errdefs.ErrFailedPrecondition)
	}
	if err == nil && r.ExecID != "" {
		delete(c.execs, r.ExecID)
	}
	s.mu.Unlock()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	if r.ExecID == "" {
		if err := s.deleteInit(ctx, c); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	} else if p.io != nil {
		p.io.close()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskapi.DeleteResponse{
		Pid:        uint32(p.pid),
		ExitStatus: p.exitStatus,
		ExitedAt:   p.exitedAtProto(),
	}, nil
}

// deleteInit deletes the runc container, its stdio and its rootfs.
func (s *Service) deleteInit(ctx context.Context, c *container) error {
	// A created task still has an init process; runc delete kills it.
	if err := c.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: true}); err != nil {
		if _, serr := c.runc.State(ctx, c.id); serr == nil {
			return fmt.Errorf("runc delete: %w", runcError(c.bundle, err))
		}
	}
	// The namespace's runc root goes with its last container.
	_ = os.Remove(c.runcCfg.Root)
	select {
	case <-c.init.exited:
	case <-time.After(2 * time.Second):
		s.mu.Lock()
		killed := reaper.Exit{Pid: c.init.pid, Status: 128 + int(unix.SIGKILL), Timestamp: time.Now()}
		c.init.setExited(killed)
		s.mu.Unlock()
	}
	<-c.watched
	if c.stopOOM != nil {
		c.stopOOM()
	}

	s.mu.Lock()
	execs := c.execs
	c.execs = nil
	s.c = nil
	s.mu.Unlock()
	for _, p := range execs {
		if p.io != nil {
			p.io.close()
		}
	}
	c.init.io.close()
	if c.rootfs != "" {
		if err := unmountAll(c.rootfs); err != nil {
			s.log.Error().Err(err).Str("id", c.id).Msg("unmount rootfs")
		}
	}
	s.cfg.Publisher.Publish(TopicDelete, &eventtypes.TaskDelete{
		ContainerID: c.id,
		Pid:         uint32(c.init.pid),
		ExitStatus:  c.init.exitStatus,
		ExitedAt:    c.init.exitedAtProto(),
	})
	return nil
}
