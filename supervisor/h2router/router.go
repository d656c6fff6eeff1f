// Package h2router forwards public gRPC calls to plugin processes at the
// HTTP/2 level. It decodes only each new stream's HEADERS, to pick the
// backend by :path, re-encodes them toward that backend's connection, and
// passes DATA frames through without looking into gRPC messages beyond
// their 5-byte length prefixes (for the size limits).
//
// Each side of a call has its own stream id and its own flow-control
// windows. The router gives a sender window back only as the other side
// takes the bytes, so a client that stops reading stalls its call's backend
// stream instead of filling the router's memory: at most one stream window
// per direction is held for a call.
//
// Calls whose client sends one message (unary and server-streaming) keep
// their request until the backend's response HEADERS arrive; if the plugin
// dies first, the call is sent again, with the same corral-call-id, once the
// plugin host hands out the plugin's next process. The supervisor's own
// services are served by an in-process grpc.Server reached over a socket
// pair, as one more backend.
package h2router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/lane"
	"corral.dev/supervisor/apimethods"
)

// Backends is what the router needs from the plugin host.
type Backends interface {
	// AcquireAddr returns the socket address of the plugin that serves
	// method (a full method name, "/pkg.Service/Method"), or of the plugin
	// named target when target is not empty,
	// waiting while that plugin starts or restarts. release ends the call's
	// hold on the plugin, which may then be drained. Errors are gRPC status
	// errors.
	AcquireAddr(ctx context.Context, method, target string) (addr net.Addr, release func(), err error)
}

// TryBackends is implemented by Backends that can hand out a running
// plugin's address without waiting. The router then opens a call on the
// goroutine that read its HEADERS, and starts one only when it must wait.
type TryBackends interface {
	// TryAcquireAddr is AcquireAddr for a plugin that is running now; ok
	// is false when the call would have to wait, or fail.
	TryAcquireAddr(method, target string) (addr net.Addr, release func(), ok bool)
}

// Options configure a Router.
type Options struct {
	// ByTarget routes by the pluginkit.TargetKey header (the internal
	// socket) instead of by service; calls without one go to Local.
	ByTarget bool
	// ReplayTimeout bounds how long a call is replayed after its plugin died.
	ReplayTimeout time.Duration
	// MaxRecvMsgSize and MaxSendMsgSize limit the messages a client sends
	// and receives; 0 means no limit.
	MaxRecvMsgSize, MaxSendMsgSize int
	// WriteTimeout bounds one write to a client; a client that does not
	// read its socket for that long loses its connection.
	WriteTimeout time.Duration
	// Local, if set, serves the supervisor's own services. The router
	// serves it over in-memory connections and stops it with the router;
	// its services must be registered before New.
	Local *grpc.Server
	// LocalLane, if set, has the unary methods of Local's services too:
	// the router then runs those calls in process, with no connection.
	LocalLane *lane.Server
	// Observe, if set, is called once per call with its full method name,
	// its start and its outcome (a status error, nil for OK).
	Observe func(method string, start time.Time, err error)
	// Log receives the router's debug lines.
	Log zerolog.Logger
}

// Router serves HTTP/2 connections and forwards their calls.
type Router struct {
	backends Backends
	opts     Options
	methods  apimethods.Table
	local    map[string]bool // services served by opts.Local
	localLis *pipeListener
	pool     pool[*backendConn]
	lanes    pool[*laneConn]
	seq      atomic.Uint64
	prefix   string
	ctx      context.Context
	cancel   context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[*clientConn]bool
	stopped   bool
	wg        sync.WaitGroup
}

// New returns a router that forwards to backends.
func New(backends Backends, opts Options) *Router {
	if opts.ReplayTimeout == 0 {
		opts.ReplayTimeout = 30 * time.Second
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	r := &Router{
		backends:  backends,
		opts:      opts,
		local:     make(map[string]bool),
		prefix:    fmt.Sprintf("%x-", time.Now().UnixNano()),
		listeners: make(map[net.Listener]bool),
		conns:     make(map[*clientConn]bool),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if opts.Local != nil {
		for name := range opts.Local.GetServiceInfo() {
			r.local[name] = true
		}
		r.localLis = newPipeListener()
		go func() { _ = opts.Local.Serve(r.localLis) }()
	}
	return r
}

// Serve accepts connections on l and serves each, until l fails or the
// router stops. It returns nil after a stop.
func (r *Router) Serve(l net.Listener) error {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		l.Close()
		return nil
	}
	r.listeners[l] = true
	r.mu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			r.mu.Lock()
			stopped := r.stopped
			delete(r.listeners, l)
			r.mu.Unlock()
			if stopped {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		r.ServeConn(nc)
	}
}

// ServeConn serves one connection on a goroutine of its own.
func (r *Router) ServeConn(nc net.Conn) {
	c := newClientConn(r, nc)
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		nc.Close()
		return
	}
	r.conns[c] = true
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		err := c.serve()
		c.p.mu.Lock()
		if c.p.err != nil {
			// The router failed the connection itself; that is the cause.
			err = c.p.err
		}
		c.p.mu.Unlock()
		switch {
		case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed),
			errors.Is(err, syscall.ECONNRESET):
		default:
			// The router closed a client's connection: every call on it failed.
			r.opts.Log.Warn().Err(err).Msg("client connection ended with an error")
		}
	}()
}

func (r *Router) forget(c *clientConn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// Stop closes the listeners and every connection, ending calls in flight.
func (r *Router) Stop() {
	r.mu.Lock()
	r.stopped = true
	for l := range r.listeners {
		l.Close()
	}
	conns := make([]*clientConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.p.fail(net.ErrClosed)
	}
	r.wg.Wait()
	r.cancel()
	r.pool.closeAll()
	r.lanes.closeAll()
	if r.opts.Local != nil {
		r.opts.Local.Stop()
		r.localLis.Close()
	}
}

// GracefulStop stops accepting connections, tells clients to open no more
// calls, and waits for the calls in flight to end or ctx to end, then stops.
func (r *Router) GracefulStop(ctx context.Context) {
	r.mu.Lock()
	r.stopped = true
	for l := range r.listeners {
		l.Close()
	}
	conns := make([]*clientConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for _, c := range conns {
		for !c.idle() {
			select {
			case <-ctx.Done():
				r.Stop()
				return
			case <-tick.C:
			}
		}
	}
	r.Stop()
}

// Errors that make the router try a call's backend again.
var (
	errRetry    = errors.New("backend connection not usable")
	errFinished = errors.New("call already finished")
)

// tryOpen opens the call without waiting, when its plugin is running and
// connected; false leaves the call to open.
func (s *stream) tryOpen(fl *flushList) bool {
	r := s.c.r
	var addr net.Addr
	release := func() {}
	switch tb, ok := r.backends.(TryBackends); {
	case s.target == "" && r.local[s.service] && s.lane:
		s.attachLocal(fl)
		return true
	case s.target == "" && r.local[s.service]:
		addr = localAddr{}
	case ok:
		if addr, release, ok = tb.TryAcquireAddr(s.path, s.target); !ok {
			return false
		}
	default:
		return false
	}
	if path := lane.LaneOf(addr); s.lane && path != "" {
		l, ok := r.lanes.ready(path)
		if !ok {
			release()
			return false
		}
		if err := s.attachLane(fl, l, release); err != nil {
			release()
			return errors.Is(err, errFinished)
		}
		return true
	}
	b, ok := r.pool.ready(addrKey(addr))
	if ok {
		ok, _, _ = b.tryReserve()
	}
	if !ok {
		release()
		return false
	}
	if err := s.attach(fl, b, release, false); err != nil {
		release()
		return errors.Is(err, errFinished)
	}
	return true
}

// open finds the call's backend and starts the call on it, trying again
// while the backend cannot be reached and the call has not reached it.
func (s *stream) open(replay bool) {
	var fl flushList
	defer fl.flush()
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	if s.ctx == nil {
		ctx := s.c.r.ctx
		if !s.deadline.IsZero() {
			ctx, s.cancel = context.WithDeadline(ctx, s.deadline)
		} else {
			ctx, s.cancel = context.WithCancel(ctx)
		}
		s.ctx = ctx
	}
	s.mu.Unlock()
	backoff := time.Duration(0)
	if replay {
		backoff = 2 * time.Millisecond
	}
	for {
		if backoff > 0 {
			t := time.NewTimer(backoff)
			select {
			case <-s.ctx.Done():
				t.Stop()
				s.fail(&fl, status.FromContextError(s.ctx.Err()).Code(), "call ended waiting for its plugin")
				return
			case <-t.C:
			}
		}
		err := s.connect(&fl, replay)
		fl.flush()
		if err == nil || errors.Is(err, errFinished) {
			return
		}
		if !errors.Is(err, errRetry) || time.Now().After(s.replayUntil) || s.ctx.Err() != nil {
			st := status.Convert(err)
			if s.ctx.Err() != nil {
				st = status.FromContextError(s.ctx.Err())
			}
			s.fail(&fl, st.Code(), st.Message())
			return
		}
		s.c.r.opts.Log.Debug().Str("method", s.path).Err(err).Msg("plugin not reachable, trying again")
		backoff = min(max(2*backoff, 2*time.Millisecond), 100*time.Millisecond)
	}
}

// connect acquires the call's backend and attaches the call to it.
func (s *stream) connect(fl *flushList, replay bool) error {
	r := s.c.r
	addr, release, err := r.acquire(s.ctx, s.path, s.target)
	if err != nil {
		if c := status.Code(err); s.redirect != nil && (c == codes.NotFound || c == codes.Unimplemented) {
			// Not the client's NotFound: a plugin named one that is not there.
			return status.Errorf(codes.Internal, "call handed over to plugin %s: %s",
				s.target, status.Convert(err).Message())
		}
		return err
	}
	if s.redirect != nil && lane.LaneOf(addr) == "" {
		// Only a lane takes the call in its new shape.
		release()
		return status.Errorf(codes.Unavailable, "plugin %s has no lane to take a call handed over", s.target)
	}
	if path := lane.LaneOf(addr); s.lane && path != "" {
		l, err := r.getLane(s.ctx, path)
		if err != nil {
			release()
			return fmt.Errorf("%w: %w", errRetry, err)
		}
		if err := s.attachLane(fl, l, release); err != nil {
			release()
			return err
		}
		return nil
	}
	b, err := r.getConn(s.ctx, addr)
	if err != nil {
		release()
		return fmt.Errorf("%w: %w", errRetry, err)
	}
	if err := b.reserve(s.ctx); err != nil {
		release()
		return err
	}
	if err := s.attach(fl, b, release, replay); err != nil {
		release()
		return err
	}
	return nil
}

// acquire returns the address of the backend that serves method.
func (r *Router) acquire(ctx context.Context, method, target string) (net.Addr, func(), error) {
	if target == "" && r.local[pluginkit.ServiceOf(method)] {
		return localAddr{}, func() {}, nil
	}
	return r.backends.AcquireAddr(ctx, method, target)
}

// dial connects to addr, the in-process server included.
func (r *Router) dial(ctx context.Context, addr net.Addr) (net.Conn, error) {
	if _, ok := addr.(localAddr); ok {
		if r.localLis == nil {
			return nil, errors.New("no local server")
		}
		return r.localLis.dial()
	}
	var d net.Dialer
	return d.DialContext(ctx, addr.Network(), addr.String())
}

// callID returns a new corral-call-id value.
func (r *Router) callID() string {
	return r.prefix + strconv.FormatUint(r.seq.Add(1), 10)
}

// statusErr returns the status error of code, nil for OK.
func statusErr(code codes.Code) error {
	if code == codes.OK {
		return nil
	}
	return status.Error(code, code.String())
}
