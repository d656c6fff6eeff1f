// Package daemon runs the supervisor: it prepares the root and state
// directories, starts the plugin processes, and serves the public socket,
// the internal socket, the debug socket and the metrics endpoint.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/lane"
	adminv1 "corral.dev/proto/admin/v1"
	"corral.dev/supervisor/config"
	"corral.dev/supervisor/events"
	"corral.dev/supervisor/h2router"
	"corral.dev/supervisor/host"
	"corral.dev/supervisor/router"
)

// internalSocket is the supervisor's socket for plugins, inside state.
const internalSocket = "internal.sock"

// stopTimeout bounds how long calls in flight may take to finish at shutdown.
const stopTimeout = 10 * time.Second

// Options are what the daemon needs beside its configuration.
type Options struct {
	// Plugins are every plugin this build knows.
	Plugins []pluginkit.Plugin
	// Executable is the binary plugins run from unless configured otherwise.
	Executable string
	// LogLevel is handed to plugins.
	LogLevel string
	// Log is the supervisor's logger.
	Log zerolog.Logger
	// Ready, if set, is called once every socket is serving.
	Ready func()
}

// Run serves until ctx ends, then stops everything it started.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	d := &daemon{cfg: cfg, opts: opts, log: opts.Log}
	defer d.close()
	if err := d.prepare(); err != nil {
		return err
	}
	if err := d.serve(ctx); err != nil {
		return err
	}
	if opts.Ready != nil {
		opts.Ready()
	}
	d.log.Info().Str("address", cfg.GRPC.Address).Msg("containerd successfully booted")
	select {
	case <-ctx.Done():
	case err := <-d.errs:
		d.log.Error().Err(err).Msg("serving failed, shutting down")
	}
	d.log.Info().Msg("stopping")
	return nil
}

type daemon struct {
	cfg  *config.Config
	opts Options
	log  zerolog.Logger

	locks    []*os.File
	host     *host.Host
	public   *grpc.Server
	internal *grpc.Server
	https    []*http.Server
	sockets  []string
	errs     chan error

	// The routers of the public and internal sockets when [plugin_host]
	// router = "h2"; public and internal stay nil then.
	publicH2, internalH2 *h2router.Router
}

// prepare checks what can be checked before anything is created, then makes
// the directories, takes the locks and sets the OOM score. When a step fails,
// the directories it made are removed again.
func (d *daemon) prepare() (err error) {
	c := d.cfg
	if err := preflight(c.Root, c.State); err != nil {
		return err
	}
	for _, addr := range []string{c.GRPC.Address, c.Debug.Address} {
		if addr == "" {
			continue
		}
		if err := preflight(addr); err != nil {
			return fmt.Errorf("socket %s: %w", addr, err)
		}
	}
	if addr := c.Metrics.Address; addr != "" {
		if _, err := net.ResolveTCPAddr("tcp", addr); err != nil {
			return fmt.Errorf("metrics address %q: %w: %w", addr, err, errdefs.ErrInvalidArgument)
		}
	}

	var created []string
	defer func() {
		if err != nil {
			for _, dir := range slices.Backward(created) {
				os.RemoveAll(dir)
			}
		}
	}()
	for _, dir := range []struct {
		path string
		mode os.FileMode
	}{{c.Root, rootMode}, {c.State, stateMode}} {
		if _, err := os.Lstat(dir.path); errors.Is(err, fs.ErrNotExist) {
			created = append(created, dir.path)
		}
		if err := ensureDir(dir.path, dir.mode); err != nil {
			return err
		}
	}
	for _, dir := range []string{c.Root, c.State} {
		f, err := lockDir(dir)
		if err != nil {
			return err
		}
		d.locks = append(d.locks, f)
	}
	return setOOMScore(c.OOMScore, d.log)
}

// specs lists the plugins to run, creating their directories.
func (d *daemon) specs() ([]host.Spec, error) {
	var specs []host.Spec
	for _, p := range d.opts.Plugins {
		if d.cfg.Disabled(p) {
			d.log.Info().Str("plugin", p.ID).Msg("plugin disabled by configuration")
			continue
		}
		path, section := d.cfg.PluginSection(p.FullID())
		if path == "" {
			path = d.opts.Executable
		}
		s := host.Spec{
			Plugin: p,
			Path:   path,
			Root:   filepath.Join(d.cfg.Root, p.FullID()),
			State:  filepath.Join(d.cfg.State, p.FullID()),
			Config: section,
		}
		for _, dir := range []string{s.Root, s.State} {
			if err := ensureDir(dir, pluginMode); err != nil {
				return nil, err
			}
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// serve starts the plugins and every listener.
func (d *daemon) serve(ctx context.Context) error {
	c := d.cfg
	d.errs = make(chan error, 4)
	uuid, err := loadUUID(c.Root)
	if err != nil {
		return err
	}
	specs, err := d.specs()
	if err != nil {
		return err
	}
	internalPath := filepath.Join(c.State, internalSocket)
	d.host = host.New(specs, host.Options{
		InternalAddress: internalPath,
		LogLevel:        d.opts.LogLevel,
		WaitTimeout:     c.CallWaitTimeout(),
		BackoffMax:      c.RestartBackoffMax(),
		Procs:           c.PluginProcs(),
		SysmonAwake:     c.PluginHost.SysmonAwake,
		Log:             d.log,
	})
	exchange := events.NewExchange(d.log)

	// Plugins publish events as they start, so the internal socket comes first.
	if err := d.serveInternal(exchange, internalPath); err != nil {
		return err
	}
	d.host.Start(ctx)

	m := newMetrics(d.host)
	if err := d.servePublic(exchange, m, uuid); err != nil {
		return err
	}
	if c.Debug.Address != "" {
		if err := d.listenHTTP(debugHandler(), "unix", c.Debug.Address, c.Debug.UID, c.Debug.GID); err != nil {
			return err
		}
	}
	if c.Metrics.Address != "" {
		mux := http.NewServeMux()
		mux.Handle("/v1/metrics", promhttp.HandlerFor(m.gatherer(d.host), promhttp.HandlerOpts{
			ErrorHandling: promhttp.ContinueOnError,
		}))
		if err := d.listenHTTP(mux, "tcp", c.Metrics.Address, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

func (d *daemon) newInternalServer(exchange *events.Exchange) *grpc.Server {
	r := router.New(d.host, router.Options{ByTarget: true, ReplayTimeout: d.cfg.CallWaitTimeout(), Log: d.log})
	opts := append(r.ServerOptions(),
		grpc.MaxRecvMsgSize(pluginkit.MaxMsgSize),
		grpc.MaxSendMsgSize(pluginkit.MaxMsgSize),
	)
	opts = append(opts, pluginkit.WindowServerOptions()...)
	s := grpc.NewServer(opts...)
	eventsapi.RegisterEventsServer(s, exchange)
	return s
}

func (d *daemon) newPublicServer(exchange *events.Exchange, m *metrics, uuid string) *grpc.Server {
	r := router.New(d.host, router.Options{ReplayTimeout: d.cfg.CallWaitTimeout(), Log: d.log})
	opts := append(r.ServerOptions(),
		grpc.MaxRecvMsgSize(d.cfg.GRPC.MaxRecvMessageSize),
		grpc.MaxSendMsgSize(d.cfg.GRPC.MaxSendMessageSize),
		grpc.ChainUnaryInterceptor(m.unaryInterceptor),
		grpc.ChainStreamInterceptor(m.streamInterceptor),
	)
	// Clients are local too: a wide window lets an ingest stream run ahead.
	opts = append(opts, pluginkit.WindowServerOptions()...)
	s := grpc.NewServer(opts...)
	registerPublic(s, d.host, exchange, uuid)
	return s
}

// registerPublic registers the supervisor's own public services on s.
func registerPublic(s grpc.ServiceRegistrar, h *host.Host, exchange *events.Exchange, uuid string) {
	versionapi.RegisterVersionServer(s, versionService{})
	introspectionapi.RegisterIntrospectionServer(s, &introspectionService{host: h, uuid: uuid})
	eventsapi.RegisterEventsServer(s, exchange)
	adminv1.RegisterAdminServer(s, &adminService{host: h})
	healthpb.RegisterHealthServer(s, health.NewServer())
}

// serveInternal serves the internal socket through the configured router.
func (d *daemon) serveInternal(exchange *events.Exchange, path string) error {
	if d.cfg.PluginHost.Router != "h2" {
		d.internal = d.newInternalServer(exchange)
		return d.listen(d.internal, path, 0o600, os.Getuid(), os.Getgid())
	}
	local, localLane, reg := localServers(pluginkit.MaxMsgSize, pluginkit.MaxMsgSize, d.log)
	eventsapi.RegisterEventsServer(reg, exchange)
	d.internalH2 = h2router.New(d.host, h2router.Options{
		ByTarget:       true,
		ReplayTimeout:  d.cfg.CallWaitTimeout(),
		MaxRecvMsgSize: pluginkit.MaxMsgSize,
		MaxSendMsgSize: pluginkit.MaxMsgSize,
		Local:          local,
		LocalLane:      localLane,
		Log:            d.log,
	})
	return d.serveH2(d.internalH2, path, 0o600, os.Getuid(), os.Getgid())
}

// localServers returns the servers of the supervisor's own services behind
// an h2router: a gRPC server for their streaming methods and a lane server
// that runs their unary methods in process, and a registrar for both.
func localServers(maxRecv, maxSend int, log zerolog.Logger) (*grpc.Server, *lane.Server, grpc.ServiceRegistrar) {
	s := grpc.NewServer(grpc.MaxRecvMsgSize(maxRecv), grpc.MaxSendMsgSize(maxSend))
	l := lane.NewServer(lane.ServerOptions{MaxRecvMsgSize: maxRecv, MaxSendMsgSize: maxSend, Log: log})
	return s, l, bothRegistrar{s, l}
}

// bothRegistrar registers each service on a gRPC server and a lane server.
type bothRegistrar struct {
	s *grpc.Server
	l *lane.Server
}

func (b bothRegistrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	b.s.RegisterService(desc, impl)
	b.l.RegisterService(desc, impl)
}

// serveH2 serves an h2router on a new unix socket.
func (d *daemon) serveH2(r *h2router.Router, path string, mode os.FileMode, uid, gid int) error {
	l, err := listenUnix(path, mode, uid, gid)
	if err != nil {
		return err
	}
	d.sockets = append(d.sockets, path)
	go func() {
		if err := r.Serve(l); err != nil {
			d.errs <- fmt.Errorf("serve %s: %w", path, err)
		}
	}()
	return nil
}

// servePublic serves the public socket through the configured router.
func (d *daemon) servePublic(exchange *events.Exchange, m *metrics, uuid string) error {
	c := d.cfg
	if c.PluginHost.Router != "h2" {
		d.public = d.newPublicServer(exchange, m, uuid)
		return d.listen(d.public, c.GRPC.Address, 0o660, c.GRPC.UID, c.GRPC.GID)
	}
	// The supervisor's own services sit behind the router, which counts
	// every call itself.
	local, localLane, reg := localServers(c.GRPC.MaxRecvMessageSize, c.GRPC.MaxSendMessageSize, d.log)
	registerPublic(reg, d.host, exchange, uuid)
	d.publicH2 = h2router.New(d.host, h2router.Options{
		ReplayTimeout:  c.CallWaitTimeout(),
		MaxRecvMsgSize: c.GRPC.MaxRecvMessageSize,
		MaxSendMsgSize: c.GRPC.MaxSendMessageSize,
		Local:          local,
		LocalLane:      localLane,
		Observe:        m.observe,
		Log:            d.log,
	})
	return d.serveH2(d.publicH2, c.GRPC.Address, 0o660, c.GRPC.UID, c.GRPC.GID)
}

func (d *daemon) listen(s *grpc.Server, path string, mode os.FileMode, uid, gid int) error {
	l, err := listenUnix(path, mode, uid, gid)
	if err != nil {
		return err
	}
	d.sockets = append(d.sockets, path)
	go func() {
		if err := s.Serve(l); err != nil {
			d.errs <- fmt.Errorf("serve %s: %w", path, err)
		}
	}()
	return nil
}

func (d *daemon) listenHTTP(h http.Handler, network, addr string, uid, gid int) error {
	var l net.Listener
	var err error
	if network == "unix" {
		if l, err = listenUnix(addr, 0o660, uid, gid); err == nil {
			d.sockets = append(d.sockets, addr)
		}
	} else {
		l, err = net.Listen(network, addr)
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	d.https = append(d.https, srv)
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.errs <- fmt.Errorf("serve %s: %w", addr, err)
		}
	}()
	return nil
}

// close stops everything in the reverse order of starting.
func (d *daemon) close() {
	for _, srv := range d.https {
		srv.Close()
	}
	if d.public != nil {
		gracefulStop(d.public)
	}
	if d.publicH2 != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		d.publicH2.GracefulStop(ctx)
		cancel()
	}
	if d.host != nil {
		d.host.Stop()
	}
	if d.internal != nil {
		d.internal.Stop()
	}
	if d.internalH2 != nil {
		d.internalH2.Stop()
	}
	for _, s := range d.sockets {
		os.Remove(s)
	}
	for _, f := range d.locks {
		f.Close()
	}
}

// gracefulStop lets calls in flight finish, up to stopTimeout.
func gracefulStop(s *grpc.Server) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopTimeout):
		s.Stop()
	}
}
