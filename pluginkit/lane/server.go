package lane

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Interceptor wraps every unary handler, as grpc.UnaryInterceptor
	// does. It may be nil.
	Interceptor grpc.UnaryServerInterceptor
	// StreamInterceptor wraps every server-streaming handler, as
	// grpc.StreamInterceptor does. It may be nil.
	StreamInterceptor grpc.StreamServerInterceptor
	// Accept vets each connection before it is served; an error closes the
	// connection. It may be nil.
	Accept func(net.Conn) error
	// MaxRecvMsgSize and MaxSendMsgSize bound a request's and a response's
	// payload; zero means no limit.
	MaxRecvMsgSize, MaxSendMsgSize int
	// Log takes the lifecycle of listeners and connections, never a call.
	Log zerolog.Logger
}

// Server serves the unary and server-streaming methods of registered gRPC
// services on lane connections. Client-streaming and bidirectional methods
// are left to the gRPC server.
type Server struct {
	opts ServerOptions
	reg  atomic.Pointer[registry]

	mu        sync.Mutex // guards the fields below and reg's replacement
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	serving   sync.WaitGroup // connection loops
}

// registry is the set of served methods. It is replaced, never changed, so
// that a call looks a method up without a lock.
type registry struct {
	methods  map[string]method // by full method, "/<service>/<method>"
	services map[string]bool
}

// method is a served method: a unary one has a handler, a server-streaming
// one a stream.
type method struct {
	impl    any
	handler grpc.MethodHandler
	stream  grpc.StreamHandler
}

// NewServer returns a Server with no services.
func NewServer(opts ServerOptions) *Server {
	s := &Server{
		opts:      opts,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	s.reg.Store(&registry{methods: map[string]method{}, services: map[string]bool{}})
	return s
}

// RegisterService registers the unary and server-streaming methods of desc,
// implemented by impl.
// Like grpc.Server, it panics when impl does not implement desc.HandlerType
// or when the service is already registered.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	if impl != nil && desc.HandlerType != nil {
		ht := reflect.TypeOf(desc.HandlerType).Elem()
		if st := reflect.TypeOf(impl); !st.Implements(ht) {
			panic(fmt.Sprintf("lane: RegisterService: %v does not implement %v", st, ht))
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.reg.Load()
	if old.services[desc.ServiceName] {
		panic(fmt.Sprintf("lane: RegisterService: service %q registered twice", desc.ServiceName))
	}
	reg := &registry{
		methods:  make(map[string]method, len(old.methods)+len(desc.Methods)+len(desc.Streams)),
		services: make(map[string]bool, len(old.services)+1),
	}
	for k, v := range old.methods {
		reg.methods[k] = v
	}
	for k := range old.services {
		reg.services[k] = true
	}
	reg.services[desc.ServiceName] = true
	prefix := "/" + desc.ServiceName + "/"
	for _, md := range desc.Methods {
		reg.methods[prefix+md.MethodName] = method{impl: impl, handler: md.Handler}
	}
	for _, sd := range desc.Streams {
		if sd.ServerStreams && !sd.ClientStreams {
			reg.methods[prefix+sd.StreamName] = method{impl: impl, stream: sd.Handler}
		}
	}
	s.reg.Store(reg)
}

// Serve accepts connections on l and serves each on its own goroutine. It
// returns nil once Close is called, or the error that ended accepting; l is
// closed either way.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l) {
		l.Close()
		return nil
	}
	defer func() {
		s.untrack(l)
		l.Close()
	}()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.opts.Log.Warn().Err(err).Dur("retry", delay).Msg("lane accept failed")
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("lane accept: %w", err)
		}
		delay = 0
		go s.ServeConn(nc)
	}
}

// ServeConn serves nc until the peer closes it, a frame is malformed, a
// write fails or the Server is closed. Calls still running when it ends are
// cancelled and their replies dropped.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.serving.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.serving.Done()
	}()

	if s.opts.Accept != nil {
		if err := s.opts.Accept(nc); err != nil {
			if c.ctx.Err() == nil {
				s.opts.Log.Warn().Err(err).Msg("lane connection refused")
			}
			c.close()
			return
		}
	}
	c.serve()
}

// Close closes the listeners and connections and cancels the calls in
// flight on them; it waits for the connection loops, not for the handlers.
// Calls to Dispatch are not affected. Close may be called more than once.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	ls, cs := s.listeners, s.conns
	s.listeners, s.conns = map[net.Listener]struct{}{}, map[*conn]struct{}{}
	s.mu.Unlock()

	for l := range ls {
		l.Close()
	}
	for c := range cs {
		c.close()
	}
	s.serving.Wait()
}

func (s *Server) track(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
