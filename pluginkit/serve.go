package pluginkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/hashicorp/go-plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit/lane"
	pluginv1 "corral.dev/proto/plugin/v1"
)

// MaxMsgSize is the largest gRPC message a plugin sends or receives, the
// limit containerd and its clients use.
const MaxMsgSize = 16 << 20

// Flow-control windows of the connections between the supervisor and the
// plugins. grpc-go starts a stream at 64 KiB and grows it by probing, which
// leaves a stream of 1 MiB chunks waiting on window updates at every hop;
// these links are local, so they start wide.
const (
	StreamWindow = 4 << 20
	ConnWindow   = 16 << 20
)

// WindowServerOptions are the flow-control options for a server on a link
// between the supervisor and the plugins.
func WindowServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(StreamWindow), grpc.InitialConnWindowSize(ConnWindow)}
}

// WindowDialOptions are the flow-control options for a client on a link
// between the supervisor and the plugins.
func WindowDialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(StreamWindow), grpc.WithInitialConnWindowSize(ConnWindow)}
}

// Main serves the plugin the supervisor asked for (by EnvID) from plugins,
// and exits when the supervisor closes it. It never returns.
func Main(plugins ...Plugin) {
	log := NewLogger(os.Stderr, os.Getenv(EnvLogLevel))
	// The plugin's socket and files are for the supervisor alone.
	syscall.Umask(0o077)
	id := os.Getenv(EnvID)
	for _, p := range plugins {
		if p.ID == id {
			os.Exit(serve(p, log))
		}
	}
	log.Error().Str("plugin", id).Msg("no such plugin in this binary")
	os.Exit(2)
}

// serve runs p until the supervisor shuts it down, and returns the exit code.
func serve(p Plugin, log zerolog.Logger) int {
	log = log.With().Str("plugin", p.ID).Logger()
	h := &host{plugin: p, log: log}
	defer h.close()

	// SIGTERM (also the parent-death signal) stops serving; calls in flight
	// are cut, and the closers still run.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		h.stop()
	}()

	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{SetupPluginName: &setupPlugin{host: h}},
		GRPCServer:      h.newServer,
	})
	return 0
}

// host is the plugin side of the contract: it initialises the plugin and
// answers the supervisor's Info and Metrics calls.
type host struct {
	pluginv1.UnimplementedPluginServer

	plugin  Plugin
	log     zerolog.Logger
	reg     *prometheus.Registry
	ic      *InitContext
	initErr error

	mu       sync.Mutex
	server   *grpc.Server
	lane     *lane.Server // nil without a lane
	lanePath string
}

func (h *host) newServer(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts,
		grpc.Creds(PeerCredentials()),
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		grpc.ChainUnaryInterceptor(markHandledUnary),
		grpc.ChainStreamInterceptor(markHandledStream),
	)
	opts = append(opts, WindowServerOptions()...)
	s := grpc.NewServer(opts...)
	h.mu.Lock()
	h.server = s
	h.mu.Unlock()
	return s
}

func (h *host) stop() {
	h.mu.Lock()
	s := h.server
	h.mu.Unlock()
	h.closeLane()
	if s != nil {
		s.Stop()
	}
}

// startLane serves the plugin's unary methods on a unix socket in the
// private directory the supervisor names. Without it, or when listening
// fails, the supervisor reaches the plugin over HTTP/2 alone.
func (h *host) startLane() *lane.Server {
	dir := os.Getenv(plugin.EnvUnixSocketDir)
	if dir == "" {
		return nil
	}
	path := filepath.Join(dir, fmt.Sprintf("lane-%d", os.Getpid()))
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		h.log.Warn().Err(err).Msg("serving without a lane")
		return nil
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		h.log.Warn().Err(err).Msg("serving without a lane")
		return nil
	}
	ls := lane.NewServer(lane.ServerOptions{
		// The same check as the gRPC server's, and the same limits; the
		// handled mark is for HTTP/2 only, since a lane reply is always
		// the handler's.
		Accept: func(nc net.Conn) error {
			_, err := checkPeer(nc)
			return err
		},
		MaxRecvMsgSize: MaxMsgSize,
		MaxSendMsgSize: MaxMsgSize,
		Log:            h.log,
	})
	h.mu.Lock()
	h.lane, h.lanePath = ls, path
	h.mu.Unlock()
	go func() {
		if err := ls.Serve(l); err != nil {
			h.log.Warn().Err(err).Msg("lane stopped accepting")
		}
	}()
	h.log.Info().Msg("lane listening")
	return ls
}

// closeLane closes the lane, cancelling its calls in flight, and removes
// its socket.
func (h *host) closeLane() {
	h.mu.Lock()
	ls, path := h.lane, h.lanePath
	h.lane, h.lanePath = nil, ""
	h.mu.Unlock()
	if ls == nil {
		return
	}
	ls.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		h.log.Warn().Err(err).Msg("remove lane socket")
	}
}

// init builds the InitContext and runs the plugin's Init, registering its
// services on s. A failure is kept and reported through Info.
func (h *host) init(s *grpc.Server) {
	h.reg = prometheus.NewRegistry()
	h.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	pluginv1.RegisterPluginServer(s, h)

	ic := &InitContext{
		Root:    os.Getenv(EnvRoot),
		State:   os.Getenv(EnvState),
		Server:  registrar{gs: s, lane: h.startLane()},
		Metrics: h.reg,
		Log:     h.log,
	}
	h.ic = ic
	if addr := os.Getenv(EnvInternal); addr != "" {
		dialOpts := append(WindowDialOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(
				grpc.MaxCallRecvMsgSize(MaxMsgSize),
				grpc.MaxCallSendMsgSize(MaxMsgSize),
			),
		)
		cc, err := grpc.NewClient("unix://"+addr, dialOpts...)
		if err != nil {
			h.initErr = fmt.Errorf("dial supervisor %q: %w", addr, err)
			return
		}
		ic.internal = cc
		ic.OnClose(cc.Close)
	}
	ic.Events = &publisher{cc: ic.internal}

	cfg, err := DecodeConfig(h.plugin, os.Getenv(EnvConfig))
	if err != nil {
		h.initErr = err
		return
	}
	ic.Config = cfg
	if h.plugin.Init == nil {
		return
	}
	if err := h.plugin.Init(context.Background(), ic); err != nil {
		h.initErr = err
		return
	}
	if err := checkMethods(h.plugin.Methods, s.GetServiceInfo()); err != nil {
		h.initErr = err
		return
	}
	h.log.Info().Msg("plugin initialised")
}

func (h *host) close() {
	h.closeLane()
	if h.ic == nil {
		return
	}
	for i := len(h.ic.closers) - 1; i >= 0; i-- {
		if err := h.ic.closers[i](); err != nil {
			h.log.Error().Err(err).Msg("close plugin")
		}
	}
	h.log.Info().Msg("plugin stopped")
}

// Info implements pluginv1.PluginServer.
func (h *host) Info(ctx context.Context, _ *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	resp := &pluginv1.InfoResponse{
		Type: h.plugin.Type,
		Id:   h.plugin.ID,
		Pid:  int64(os.Getpid()),
		Exports: map[string]string{
			"root":  h.ic.Root,
			"state": h.ic.State,
		},
	}
	if h.initErr != nil {
		resp.InitError = h.initErr.Error()
		resp.InitErrorCode = int32(status.Code(errgrpc.ToGRPC(h.initErr)))
		return resp, nil
	}
	h.mu.Lock()
	s, lanePath := h.server, h.lanePath
	h.mu.Unlock()
	if lanePath != "" {
		resp.Exports[LaneExport] = lanePath
	}
	for name := range s.GetServiceInfo() {
		if !h.plugin.Private && isPublicService(name) {
			resp.Services = append(resp.Services, name)
		}
	}
	sort.Strings(resp.Services)
	resp.Methods = append(resp.Methods, h.plugin.Methods...)
	return resp, nil
}

// Metrics implements pluginv1.PluginServer.
func (h *host) Metrics(ctx context.Context, _ *pluginv1.MetricsRequest) (*pluginv1.MetricsResponse, error) {
	mfs, err := h.reg.Gather()
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("gather metrics: %w", err))
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("encode metric %s: %w", mf.GetName(), err))
		}
	}
	return &pluginv1.MetricsResponse{Families: buf.Bytes()}, nil
}

// checkMethods returns an error wrapping [errdefs.ErrInvalidArgument]
// unless every method of methods is a public method the server serves.
func checkMethods(methods []string, served map[string]grpc.ServiceInfo) error {
	for _, m := range methods {
		svc, name, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
		found := false
		for _, mi := range served[svc].Methods {
			found = found || mi.Name == name
		}
		if !ok || !strings.HasPrefix(m, "/") || !isPublicService(svc) || !found {
			return fmt.Errorf("plugin claims method %q, which it does not serve publicly: %w",
				m, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// isPublicService reports whether a registered service is one the plugin
// serves to clients, rather than part of the plugin contract or a service
// of ours that plugins serve each other.
func isPublicService(name string) bool {
	return !strings.HasPrefix(name, "corral.") &&
		!strings.HasPrefix(name, "plugin.") &&
		!strings.HasPrefix(name, "grpc.")
}

// DecodeConfig decodes a plugin's TOML section onto a fresh default
// configuration. Keys the plugin does not know are an error naming them, and
// a configuration with a Validate() error method must pass it, so that the
// supervisor refuses a bad section before it starts anything.
func DecodeConfig(p Plugin, section string) (any, error) {
	if p.Config == nil {
		if strings.TrimSpace(section) != "" {
			return nil, fmt.Errorf("plugin %q takes no configuration: %w", p.ID, errdefs.ErrInvalidArgument)
		}
		return nil, nil
	}
	cfg := p.Config()
	md, err := toml.Decode(section, cfg)
	if err != nil {
		return nil, fmt.Errorf("plugins.%s: %w: %w", p.ID, err, errdefs.ErrInvalidArgument)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		keys := make([]string, len(undec))
		for i, k := range undec {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("plugins.%s: unknown key %s: %w", p.ID, strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
	}
	if v, ok := cfg.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func markHandledUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	_ = grpc.SetTrailer(ctx, handledMD)
	return handler(ctx, req)
}

func markHandledStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ss.SetTrailer(handledMD)
	return handler(srv, ss)
}

var handledMD = metadata.Pairs(HandledKey, "1")

// registrar registers each of a plugin's services on its gRPC server and,
// when it has one, on its lane.
type registrar struct {
	gs   *grpc.Server
	lane *lane.Server
}

func (r registrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.gs.RegisterService(desc, impl)
	if r.lane != nil {
		r.lane.RegisterService(desc, impl)
	}
}

// setupPlugin is what go-plugin dispenses: on the plugin side it initialises
// the plugin on go-plugin's server, on the supervisor side it hands back the
// raw connection to the plugin.
type setupPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	host *host
}

func (sp *setupPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	sp.host.init(s)
	return nil
}

func (sp *setupPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return cc, nil
}

// ClientPlugins is the plugin set the supervisor hands go-plugin: dispensing
// SetupPluginName yields the plugin's *grpc.ClientConn.
func ClientPlugins() plugin.PluginSet {
	return plugin.PluginSet{SetupPluginName: &setupPlugin{}}
}
