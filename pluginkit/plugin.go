// Package pluginkit is the contract every plugin process is built on: how the
// supervisor starts it, what it is handed (root, state, configuration, the
// internal socket), how it registers its services, logs and reports metrics.
//
// A plugin's main is one line, pluginkit.Main(plugin), and the multi-call
// containerd binary serves every linked plugin the same way.
package pluginkit

import (
	"context"
	"os"
	"strings"

	"github.com/hashicorp/go-plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
)

// Plugin describes one plugin: who it is, its configuration and how it starts.
type Plugin struct {
	// Type is the containerd plugin type, such as "io.containerd.metadata.v1".
	Type string
	// ID is the short plugin id, such as "bolt"; [plugins.<id>] configures it.
	ID string
	// Config returns a pointer to a new configuration holding the defaults.
	// The plugin's TOML section is decoded onto it. Nil means no options.
	Config func() any
	// Init prepares the plugin and registers its services on ic.Server. It
	// runs once per process, before any call is served.
	Init func(ctx context.Context, ic *InitContext) error
	// Private plugins serve other plugins only: the supervisor routes no
	// public call to them, only calls made with InitContext.Dial and the
	// calls of Methods.
	Private bool
	// Methods are full method names ("/pkg.Service/Method") of public
	// services, registered on the plugin's server, that the supervisor
	// routes to this plugin ahead of the plugin serving the rest of their
	// service: the content plugin takes Content.Write this way, so that
	// the bytes of a write reach it without crossing the metadata plugin.
	Methods []string
}

// FullID is the plugin's type and id joined by a dot, the name containerd
// uses for its directories and configuration sections.
func (p Plugin) FullID() string {
	return p.Type + "." + p.ID
}

// InitContext is what a plugin is handed when it starts.
type InitContext struct {
	// Root is the plugin's persistent directory, <root>/<type>.<id>.
	Root string
	// State is the plugin's runtime directory, <state>/<type>.<id>.
	State string
	// Config is the value Plugin.Config returned, with the section decoded onto it.
	Config any
	// Server takes the plugin's public gRPC services; unary methods are
	// also served on the plugin's lane.
	Server grpc.ServiceRegistrar
	// Events publishes events through the supervisor's exchange.
	Events Publisher
	// Metrics takes the plugin's own collectors.
	Metrics prometheus.Registerer
	// Log is the plugin's logger; its lines reach the supervisor's log.
	Log zerolog.Logger

	internal *grpc.ClientConn
	closers  []func() error
}

// OnClose registers fn to run when the plugin process shuts down, in reverse
// order of registration.
func (ic *InitContext) OnClose(fn func() error) {
	ic.closers = append(ic.closers, fn)
}

// Dial returns a connection to the plugin id through the supervisor. Calls on
// it wait while that plugin restarts, as public calls do.
func (ic *InitContext) Dial(id string) grpc.ClientConnInterface {
	return &pluginConn{cc: ic.internal, id: id}
}

// Handshake is shared by the supervisor and every plugin process. The cookie
// keeps a plugin binary from serving when a user runs it by hand.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "CORRAL_PLUGIN",
	MagicCookieValue: "e3d1c0b8-5d0a-4b0e-9f5c-corral-plugin-v1",
}

// Environment variables through which the supervisor hands a plugin process
// its place.
const (
	EnvID       = "CORRAL_PLUGIN_ID"
	EnvRoot     = "CORRAL_PLUGIN_ROOT"
	EnvState    = "CORRAL_PLUGIN_STATE"
	EnvConfig   = "CORRAL_PLUGIN_CONFIG"
	EnvInternal = "CORRAL_INTERNAL_ADDRESS"
	EnvLogLevel = "CORRAL_LOG_LEVEL"
)

// Metadata keys the supervisor and the plugins agree on.
const (
	// TargetKey names the plugin a call on the internal socket is for.
	TargetKey = "corral-plugin"
	// CallIDKey carries an id that stays the same when the supervisor replays
	// a unary call whose plugin died before answering. Plugins that change
	// state use it to answer a replay with the first outcome.
	CallIDKey = "corral-call-id"
	// HandledKey is set in the trailer of every call a plugin handler ran, so
	// the supervisor can tell a plugin's answer from a broken connection.
	HandledKey = "corral-handled"
)

// ServiceOf returns the service part of a full method name
// "/pkg.Service/Method": what the supervisor routes a call by unless a
// plugin claims the method itself.
func ServiceOf(method string) string {
	method = strings.TrimPrefix(method, "/")
	if i := strings.LastIndexByte(method, '/'); i >= 0 {
		return method[:i]
	}
	return method
}

// IngestRef is the content plugin's key for the ingest that a client of
// namespace ns calls ref. The plugins that share ingests agree on it.
func IngestRef(ns, ref string) string {
	return ns + "/" + ref
}

// LaneExport is the key of InfoResponse.Exports that holds the path of the
// plugin's lane socket, where it serves its unary methods (see package
// lane). The supervisor reads it and does not show it.
const LaneExport = "corral.lane"

// SetupPluginName is the name under which a plugin is registered with go-plugin.
const SetupPluginName = "corral"

// IsPluginProcess reports whether this process was started by the supervisor
// to serve a plugin.
func IsPluginProcess() bool {
	return os.Getenv(Handshake.MagicCookieKey) == Handshake.MagicCookieValue
}
