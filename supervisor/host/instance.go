package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit"
	pluginv1 "corral.dev/proto/plugin/v1"
	"corral.dev/supervisor/gotune"
	"corral.dev/supervisor/router"
)

// State is where a plugin is in its life.
type State string

// The states of a plugin.
const (
	Starting   State = "starting"
	Running    State = "running"
	Restarting State = "restarting"
	Failed     State = "failed"
	Stopped    State = "stopped"
)

const (
	minBackoff   = 100 * time.Millisecond
	stableUptime = 10 * time.Second
	drainTimeout = 10 * time.Second
	infoTimeout  = 10 * time.Second
)

// Instance is one plugin and its current process.
type Instance struct {
	h        *Host
	log      zerolog.Logger
	requests chan restartRequest

	mu        sync.Mutex
	spec      Spec
	state     State
	changed   chan struct{} // closed and replaced on every state change
	idle      *sync.Cond    // signalled when inflight drops to zero
	inflight  int
	client    *plugin.Client
	proc      *procRunner
	conn      *grpc.ClientConn
	info      *pluginv1.InfoResponse
	lane      string // the process's lane socket, "" when it has none
	startedAt time.Time
	restarts  int
	lastErr   error
}

type restartRequest struct {
	path string
	done chan error
}

func newInstance(h *Host, s Spec) *Instance {
	in := &Instance{
		h:        h,
		spec:     s,
		log:      h.opts.Log.With().Str("plugin", s.Plugin.ID).Logger(),
		requests: make(chan restartRequest),
		state:    Starting,
		changed:  make(chan struct{}),
	}
	in.idle = sync.NewCond(&in.mu)
	return in
}

// run keeps the plugin running until ctx ends.
func (in *Instance) run(ctx context.Context) {
	backoff := time.Duration(0)
	var reply chan error
	for {
		err := in.start()
		if reply != nil {
			reply <- err
			reply = nil
		}

		var req *restartRequest
		switch {
		case err != nil:
			in.setState(Restarting, err)
			in.log.Error().Err(err).Dur("retry_in", backoff).Msg("plugin did not start")
			req = in.pause(ctx, backoff)
			backoff = in.nextBackoff(backoff)
		case in.State() == Failed:
			in.log.Error().Err(in.Status().err()).Msg("plugin failed to initialise")
			req = in.pause(ctx, -1)
		default:
			var exited bool
			req, exited = in.watch(ctx)
			if exited {
				backoff = in.crashed(backoff)
				req = in.pause(ctx, backoff)
			}
		}

		if ctx.Err() != nil {
			in.stop(Stopped)
			return
		}
		if req != nil {
			in.stop(Restarting)
			in.setPath(req.path)
			backoff, reply = 0, req.done
		}
	}
}

// start runs one process of the plugin and asks it who it is.
func (in *Instance) start() error {
	in.mu.Lock()
	spec := in.spec
	in.mu.Unlock()

	sockDir := filepath.Join(spec.State, "s")
	if err := os.RemoveAll(sockDir); err != nil {
		return fmt.Errorf("clear socket directory: %w", err)
	}
	if err := os.Mkdir(sockDir, 0o700); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	env := []string{
		pluginkit.EnvID + "=" + spec.Plugin.ID,
		pluginkit.EnvRoot + "=" + spec.Root,
		pluginkit.EnvState + "=" + spec.State,
		pluginkit.EnvConfig + "=" + spec.Config,
		pluginkit.EnvInternal + "=" + in.h.opts.InternalAddress,
		pluginkit.EnvLogLevel + "=" + in.h.opts.LogLevel,
		// go-plugin's own directory would make the socket path longer than
		// sun_path allows under a deep state directory.
		"PLUGIN_UNIX_SOCKET_DIR=" + sockDir,
	}
	if n := in.h.opts.Procs; n > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(n))
	}
	if in.h.opts.SysmonAwake {
		env = append(env, gotune.Env())
	}
	var proc *procRunner
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  pluginkit.Handshake,
		Plugins:          pluginkit.ClientPlugins(),
		RunnerFunc:       newRunner(spec.Path, env, func(r *procRunner) { proc = r }),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           hclog.NewNullLogger(),
		Stderr:           &logRelay{log: in.log},
		StartTimeout:     in.h.opts.StartTimeout,
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: sockDir},
		GRPCDialOptions:  pluginkit.WindowDialOptions(),
	})
	conn, info, err := handshake(client)
	if err != nil {
		client.Kill()
		return fmt.Errorf("start plugin %s from %s: %w", spec.Plugin.ID, spec.Path, err)
	}

	lanePath := info.Exports[pluginkit.LaneExport]
	delete(info.Exports, pluginkit.LaneExport)
	if lanePath != "" && filepath.Dir(lanePath) != filepath.Clean(sockDir) {
		in.log.Warn().Str("lane", lanePath).Msg("plugin's lane socket is outside its socket directory; not used")
		lanePath = ""
	}

	in.mu.Lock()
	in.client, in.proc, in.conn, in.info, in.lane = client, proc, conn, info, lanePath
	in.startedAt = time.Now()
	in.mu.Unlock()
	if info.InitError != "" {
		in.setState(Failed, status.Error(codes.Code(info.InitErrorCode), info.InitError))
		return nil
	}
	in.h.route(in, info.Services, info.Methods)
	in.setState(Running, nil)
	ev := in.log.Info().Int("pid", proc.Pid()).Strs("services", info.Services)
	if len(info.Methods) > 0 {
		ev = ev.Strs("methods", info.Methods)
	}
	ev.Msg("plugin running")
	return nil
}

func handshake(client *plugin.Client) (*grpc.ClientConn, *pluginv1.InfoResponse, error) {
	cp, err := client.Client()
	if err != nil {
		return nil, nil, err
	}
	raw, err := cp.Dispense(pluginkit.SetupPluginName)
	if err != nil {
		return nil, nil, err
	}
	conn, ok := raw.(*grpc.ClientConn)
	if !ok {
		return nil, nil, fmt.Errorf("plugin handed out %T, not a connection", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), infoTimeout)
	defer cancel()
	info, err := pluginv1.NewPluginClient(conn).Info(ctx, &pluginv1.InfoRequest{})
	if err != nil {
		return nil, nil, fmt.Errorf("ask plugin for its info: %w", err)
	}
	return conn, info, nil
}

// watch waits for the process to exit, a restart request or ctx's end.
func (in *Instance) watch(ctx context.Context) (req *restartRequest, exited bool) {
	in.mu.Lock()
	proc := in.proc
	in.mu.Unlock()
	select {
	case <-proc.exited:
		return nil, true
	case r := <-in.requests:
		return &r, false
	case <-ctx.Done():
		return nil, false
	}
}

// crashed records an unexpected exit and returns the delay before the next start.
func (in *Instance) crashed(backoff time.Duration) time.Duration {
	in.mu.Lock()
	proc, client, uptime := in.proc, in.client, time.Since(in.startedAt)
	in.restarts++
	in.mu.Unlock()

	err := fmt.Errorf("plugin process %d exited: %v", proc.Pid(), proc.err)
	in.setState(Restarting, err)
	in.log.Error().Err(err).Dur("uptime", uptime).Msg("plugin exited unexpectedly, restarting")
	client.Kill()
	if uptime >= stableUptime {
		return 0
	}
	return in.nextBackoff(backoff)
}

func (in *Instance) nextBackoff(b time.Duration) time.Duration {
	return min(max(2*b, minBackoff), in.h.opts.BackoffMax)
}

// pause waits d (forever when d < 0), returning early with a restart request
// or when ctx ends.
func (in *Instance) pause(ctx context.Context, d time.Duration) *restartRequest {
	var timeout <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case r := <-in.requests:
		return &r
	case <-timeout:
	case <-ctx.Done():
	}
	return nil
}

// stop holds new calls (next is Restarting) or refuses them (Stopped), lets
// the calls in flight finish, and ends the process.
func (in *Instance) stop(next State) {
	in.setState(next, nil)
	in.mu.Lock()
	client := in.client
	timer := time.AfterFunc(drainTimeout, in.idle.Broadcast)
	start := time.Now()
	for in.inflight > 0 && time.Since(start) < drainTimeout {
		in.idle.Wait()
	}
	timer.Stop()
	in.client, in.conn = nil, nil
	in.mu.Unlock()
	if client != nil {
		client.Kill()
		in.log.Info().Msg("plugin process ended")
	}
}

// restart asks the run loop for a restart and waits for the new process.
func (in *Instance) restart(ctx context.Context, path string) error {
	req := restartRequest{path: path, done: make(chan error, 1)}
	select {
	case in.requests <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (in *Instance) setPath(path string) {
	if path == "" {
		return
	}
	in.mu.Lock()
	in.spec.Path = path
	in.mu.Unlock()
}

func (in *Instance) setState(s State, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.state = s
	if err != nil {
		in.lastErr = err
	}
	close(in.changed)
	in.changed = make(chan struct{})
}

// waitSettled waits until the plugin's first start has run to an outcome.
func (in *Instance) waitSettled(ctx context.Context) {
	for {
		in.mu.Lock()
		s, ch := in.state, in.changed
		in.mu.Unlock()
		if s != Starting {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// acquire returns the plugin's connection for one call, waiting up to
// timeout while the plugin starts or restarts.
func (in *Instance) acquire(ctx context.Context, timeout time.Duration) (router.Lease, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		in.mu.Lock()
		s, ch := in.state, in.changed
		switch s {
		case Running:
			in.inflight++
			l := &lease{in: in, conn: in.conn}
			in.mu.Unlock()
			return l, nil
		case Failed, Stopped:
			err := in.lastErr
			in.mu.Unlock()
			return nil, status.Errorf(codes.Unavailable, "plugin %s is %s: %v", in.spec.Plugin.ID, s, err)
		}
		in.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-timer.C:
			return nil, status.Errorf(codes.Unavailable, "plugin %s is still %s after %s",
				in.spec.Plugin.ID, s, timeout)
		}
	}
}

type lease struct {
	in   *Instance
	conn *grpc.ClientConn
	once sync.Once
}

func (l *lease) Conn() grpc.ClientConnInterface { return l.conn }

func (l *lease) Release() {
	l.once.Do(func() {
		l.in.mu.Lock()
		l.in.inflight--
		if l.in.inflight == 0 {
			l.in.idle.Broadcast()
		}
		l.in.mu.Unlock()
	})
}

// State returns the plugin's state.
func (in *Instance) State() State {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state
}

// Status is a snapshot of a plugin's condition.
type Status struct {
	ID, Type  string
	State     State
	Pid       int
	Restarts  int
	LastError string
	Path      string
	Services  []string
	Exports   map[string]string
	Conn      *grpc.ClientConn
}

func (s Status) err() error {
	if s.LastError == "" {
		return nil
	}
	return errors.New(s.LastError)
}

// Status returns a snapshot of the plugin's condition.
func (in *Instance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := Status{
		ID:       in.spec.Plugin.ID,
		Type:     in.spec.Plugin.Type,
		State:    in.state,
		Restarts: in.restarts,
		Path:     in.spec.Path,
		Conn:     in.conn,
	}
	if in.proc != nil && in.state != Stopped {
		s.Pid = in.proc.Pid()
	}
	if in.lastErr != nil {
		s.LastError = in.lastErr.Error()
	}
	if in.info != nil {
		s.Services = in.info.Services
		s.Exports = in.info.Exports
	}
	return s
}
