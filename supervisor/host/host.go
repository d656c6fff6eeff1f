// Package host starts, watches and restarts the plugin processes, and hands
// the router a connection to the plugin serving a call while it waits out
// restarts.
package host

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit"
	"corral.dev/supervisor/router"
)

// Spec says how to run one plugin.
type Spec struct {
	// Plugin is the plugin's identity.
	Plugin pluginkit.Plugin
	// Path is the binary the plugin runs from.
	Path string
	// Root and State are the plugin's own directories.
	Root, State string
	// Config is the plugin's configuration section as TOML.
	Config string
}

// Options configure a Host.
type Options struct {
	// InternalAddress is the supervisor's internal socket, handed to plugins.
	InternalAddress string
	// LogLevel is handed to plugins.
	LogLevel string
	// WaitTimeout bounds how long a call waits for a plugin that is starting
	// or restarting.
	WaitTimeout time.Duration
	// BackoffMax caps the delay between restarts of a plugin that keeps failing.
	BackoffMax time.Duration
	// Procs is the GOMAXPROCS of each plugin process; 0 leaves it to the
	// Go runtime.
	Procs int
	// SysmonAwake starts plugins with the GODEBUG of gotune.Env.
	SysmonAwake bool
	// StartTimeout bounds one start of a plugin process.
	StartTimeout time.Duration
	// Log is the supervisor's logger.
	Log zerolog.Logger
}

// Host runs a set of plugins.
type Host struct {
	opts      Options
	instances map[string]*Instance // by plugin id

	mu sync.RWMutex
	// routes holds the plugin of each public service, by full service name,
	// and of each method a plugin takes ahead of its service's plugin, by
	// full method name ("/pkg.Service/Method").
	routes map[string]*Instance

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a host for specs; nothing runs before Start.
func New(specs []Spec, opts Options) *Host {
	if opts.WaitTimeout == 0 {
		opts.WaitTimeout = 30 * time.Second
	}
	if opts.BackoffMax == 0 {
		opts.BackoffMax = 10 * time.Second
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	h := &Host{
		opts:      opts,
		instances: make(map[string]*Instance, len(specs)),
		routes:    make(map[string]*Instance),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	for _, s := range specs {
		h.instances[s.Plugin.ID] = newInstance(h, s)
	}
	return h
}

// Start starts every plugin and returns once each is running or has failed,
// or when ctx ends. Plugins that fail keep being retried in the background.
func (h *Host) Start(ctx context.Context) {
	for _, in := range h.instances {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			in.run(h.ctx)
		}()
	}
	for _, in := range h.instances {
		in.waitSettled(ctx)
	}
}

// Stop drains and stops every plugin.
func (h *Host) Stop() {
	h.cancel()
	h.wg.Wait()
}

// Acquire implements router.Backends.
func (h *Host) Acquire(ctx context.Context, method, target string) (router.Lease, error) {
	var in *Instance
	if target != "" {
		in = h.instances[target]
		if in == nil {
			return nil, status.Errorf(codes.NotFound, "plugin %q: not found", target)
		}
	} else if in = h.lookup(method); in == nil {
		return nil, status.Errorf(codes.Unimplemented, "unknown service %s", pluginkit.ServiceOf(method))
	}
	return in.acquire(ctx, h.opts.WaitTimeout)
}

// lookup returns the plugin that serves the full method name method, or nil.
func (h *Host) lookup(method string) *Instance {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if in := h.routes[method]; in != nil {
		return in
	}
	return h.routes[pluginkit.ServiceOf(method)]
}

// Restart drains the plugin id and starts it again, from path when path is
// not empty. It returns once the new process is running or has failed.
func (h *Host) Restart(ctx context.Context, id, path string) (Status, error) {
	in := h.instances[id]
	if in == nil {
		return Status{}, fmt.Errorf("plugin %q: %w", id, errdefs.ErrNotFound)
	}
	if err := in.restart(ctx, path); err != nil {
		return in.Status(), err
	}
	return in.Status(), nil
}

// Instances returns every plugin instance, ordered by id.
func (h *Host) Instances() []*Instance {
	out := make([]*Instance, 0, len(h.instances))
	for _, in := range h.instances {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Plugin.ID < out[j].spec.Plugin.ID })
	return out
}

// route records that in serves services, and methods ahead of their
// services' plugins.
func (h *Host) route(in *Instance, services, methods []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range slices.Concat(services, methods) {
		if other := h.routes[s]; other != nil && other != in {
			h.opts.Log.Warn().Str("service", s).Str("plugin", in.spec.Plugin.ID).
				Str("other", other.spec.Plugin.ID).Msg("served by two plugins, keeping the first")
			continue
		}
		h.routes[s] = in
	}
}
