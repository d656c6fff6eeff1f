// Package config reads the supervisor's config.toml, the file containerd's
// operators know: the top-level directories, the [grpc], [ttrpc], [debug] and
// [metrics] sections, our own [plugin_host] section and one [plugins.<id>]
// section per plugin.
//
// Loading is strict. An unknown key, a value of the wrong type or broken TOML
// is an error that names the key and, where it can be found, the line. The
// one exception is a section for a plugin this build does not have: files
// written for containerd itself carry such sections, so they are reported as
// warnings and dropped.
//
// A plugin section is validated against the plugin's own configuration type
// at load time and kept as TOML text, holding the plugin's defaults with the
// file's values over them; the supervisor hands that text to the plugin
// process. The key path in a plugin section belongs to the supervisor: it
// names a binary to run the plugin from.
package config

import (
	"runtime"
	"time"

	"corral.dev/pluginkit"
	"corral.dev/supervisor/placement"
)

// Defaults of the settings that have one.
const (
	DefaultVersion         = 2
	DefaultRoot            = "/var/lib/containerd"
	DefaultState           = "/run/containerd"
	DefaultAddress         = "/run/containerd/containerd.sock"
	DefaultMaxMessageSize  = 16 << 20
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"
	DefaultCallWaitTimeout = 30 * time.Second
	DefaultRestartBackoff  = 10 * time.Second
	// DefaultRouter is the public socket's router, "grpc" or "h2".
	DefaultRouter = "h2"
)

// Config is the supervisor's configuration.
type Config struct {
	// Version is the file format version; 1, 2 and 3 are read alike.
	Version int `toml:"version"`
	// Root is the directory for persistent data.
	Root string `toml:"root"`
	// State is the directory for runtime data such as sockets.
	State string `toml:"state"`
	// OOMScore is written to the supervisor's own oom_score_adj.
	OOMScore int `toml:"oom_score"`
	// Imports would name further files to merge; any entry is an error.
	Imports []string `toml:"imports"`
	// DisabledPlugins holds the short or full ids of plugins not to start.
	DisabledPlugins []string `toml:"disabled_plugins"`
	// RequiredPlugins holds the ids of plugins that must be in this build
	// and not disabled.
	RequiredPlugins []string `toml:"required_plugins"`
	// Temp and PluginDir are containerd settings that this daemon reads and
	// dumps but does not use; a value is a warning.
	Temp      string `toml:"temp"`
	PluginDir string `toml:"plugin_dir"`

	GRPC       GRPCConfig       `toml:"grpc"`
	TTRPC      TTRPCConfig      `toml:"ttrpc"`
	Debug      DebugConfig      `toml:"debug"`
	Metrics    MetricsConfig    `toml:"metrics"`
	PluginHost PluginHostConfig `toml:"plugin_host"`
	Cgroup     CgroupConfig     `toml:"cgroup"`
	// Timeouts are containerd's internal timeouts by name, such as
	// "io.containerd.timeout.shim.cleanup". They are read and dumped.
	Timeouts map[string]Duration `toml:"timeouts"`

	// Plugins holds every known plugin's configuration by full id.
	Plugins map[string]PluginConfig `toml:"-"`
}

// GRPCConfig is the public gRPC socket.
type GRPCConfig struct {
	Address            string `toml:"address"`
	UID                int    `toml:"uid"`
	GID                int    `toml:"gid"`
	MaxRecvMessageSize int    `toml:"max_recv_message_size"`
	MaxSendMessageSize int    `toml:"max_send_message_size"`
	// The TCP listener is not supported: these must stay empty.
	TCPAddress string `toml:"tcp_address"`
	TCPTLSCA   string `toml:"tcp_tls_ca"`
	TCPTLSCert string `toml:"tcp_tls_cert"`
	TCPTLSKey  string `toml:"tcp_tls_key"`
}

// TTRPCConfig is containerd's ttrpc socket. It is read and dumped, not served.
type TTRPCConfig struct {
	Address string `toml:"address"`
	UID     int    `toml:"uid"`
	GID     int    `toml:"gid"`
}

// DebugConfig is the debug socket and the log settings.
type DebugConfig struct {
	// Address is the pprof and expvar socket; empty means none.
	Address string `toml:"address"`
	UID     int    `toml:"uid"`
	GID     int    `toml:"gid"`
	// Level is one of trace, debug, info, warn, error, fatal and panic.
	Level string `toml:"level"`
	// Format is "text" or "json".
	Format string `toml:"format"`
}

// MetricsConfig is the Prometheus endpoint.
type MetricsConfig struct {
	// Address serves /v1/metrics; empty means off.
	Address       string `toml:"address"`
	GRPCHistogram bool   `toml:"grpc_histogram"`
}

// CgroupConfig is containerd's cgroup for the daemon. It is read and dumped
// but not used; a path is a warning.
type CgroupConfig struct {
	Path string `toml:"path"`
}

// PluginHostConfig tunes how the supervisor runs plugin processes.
type PluginHostConfig struct {
	// CallWaitTimeout bounds how long a call waits for a restarting plugin.
	CallWaitTimeout Duration `toml:"call_wait_timeout"`
	// RestartBackoffMax caps the delay between restarts of a crashing plugin.
	RestartBackoffMax Duration `toml:"restart_backoff_max"`
	// Router picks the router of the public and internal sockets: "grpc"
	// (a grpc-go stream proxy) or "h2" (forwarding at the HTTP/2 level).
	Router string `toml:"router"`
	// PluginProcs is the GOMAXPROCS of each plugin process: how many
	// threads run its Go code at once. 0 picks one per four CPUs, at least
	// one.
	PluginProcs int `toml:"plugin_procs"`
	// SysmonAwake keeps the Go runtime's monitor thread of every process
	// polling instead of parking when the process idles (package gotune):
	// less CPU per call, a little CPU when idle.
	SysmonAwake bool `toml:"sysmon_awake"`
	// CPUAffinity picks the CPUs the supervisor and its plugins run on
	// (package placement): "auto" (a quarter of those the daemon was
	// started with, at least one), "all" (leave the affinity alone), or a
	// CPU list such as "2-3,6".
	CPUAffinity string `toml:"cpu_affinity"`
}

// PluginConfig is the configuration of one plugin.
type PluginConfig struct {
	// Type and ID name the plugin, as in pluginkit.Plugin.
	Type string
	ID   string
	// Path is the binary to run the plugin from; empty means the
	// supervisor's own multi-call binary.
	Path string
	// Section is the plugin's configuration as TOML text, defaults included.
	Section string
}

// Duration is a time.Duration written in TOML as a string such as "30s".
type Duration time.Duration

// String formats d as time.Duration does.
func (d Duration) String() string {
	return time.Duration(d).String()
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Default returns the configuration used when there is no file, with every
// plugin of plugins at its defaults.
func Default(plugins []pluginkit.Plugin) *Config {
	c := &Config{
		Version:         DefaultVersion,
		Root:            DefaultRoot,
		State:           DefaultState,
		Imports:         []string{},
		DisabledPlugins: []string{},
		RequiredPlugins: []string{},
		Timeouts:        map[string]Duration{},
		GRPC: GRPCConfig{
			Address:            DefaultAddress,
			MaxRecvMessageSize: DefaultMaxMessageSize,
			MaxSendMessageSize: DefaultMaxMessageSize,
		},
		Debug: DebugConfig{Level: DefaultLogLevel, Format: DefaultLogFormat},
		PluginHost: PluginHostConfig{
			CallWaitTimeout:   Duration(DefaultCallWaitTimeout),
			RestartBackoffMax: Duration(DefaultRestartBackoff),
			Router:            DefaultRouter,
			SysmonAwake:       true,
			CPUAffinity:       placement.Auto,
		},
		Plugins: make(map[string]PluginConfig, len(plugins)),
	}
	for _, p := range plugins {
		var cfg any
		if p.Config != nil {
			cfg = p.Config()
		}
		section, err := encodeSection(cfg)
		if err != nil {
			// A plugin whose defaults cannot be written is a bug in the
			// plugin, found by any test that builds the default config.
			panic("config: encode defaults of plugin " + p.FullID() + ": " + err.Error())
		}
		c.Plugins[p.FullID()] = PluginConfig{Type: p.Type, ID: p.ID, Section: section}
	}
	return c
}

// PluginSection returns the binary path and the TOML section of the plugin
// with the short or full id. Both are empty for an unknown plugin.
func (c *Config) PluginSection(id string) (path, section string) {
	pc, ok := c.plugin(id)
	if !ok {
		return "", ""
	}
	return pc.Path, pc.Section
}

// plugin finds a plugin's configuration by full id, or by a short id that
// only one plugin has.
func (c *Config) plugin(id string) (PluginConfig, bool) {
	if pc, ok := c.Plugins[id]; ok {
		return pc, true
	}
	var found []PluginConfig
	for _, pc := range c.Plugins {
		if pc.ID == id {
			found = append(found, pc)
		}
	}
	if len(found) != 1 {
		return PluginConfig{}, false
	}
	return found[0], true
}

// Disabled reports whether p is listed in disabled_plugins, by short or
// full id.
func (c *Config) Disabled(p pluginkit.Plugin) bool {
	for _, name := range c.DisabledPlugins {
		if name == p.ID || name == p.FullID() {
			return true
		}
	}
	return false
}

// CallWaitTimeout is how long a call waits for a restarting plugin.
func (c *Config) CallWaitTimeout() time.Duration {
	return time.Duration(c.PluginHost.CallWaitTimeout)
}

// PluginProcs returns the GOMAXPROCS each plugin process runs with. A
// plugin mostly waits for the supervisor and answers one call at a time
// per client, and a Go process with idle Ps wakes and parks threads around
// every call: on two CPUs a plugin with one P served a 32 KiB Content.Read
// in 20% less CPU and a Namespaces.List 18% faster than with two. The
// default counts the CPUs the daemon was started with, not those it pinned
// itself to.
func (c *Config) PluginProcs() int {
	if n := c.PluginHost.PluginProcs; n > 0 {
		return n
	}
	n := runtime.NumCPU()
	if host, err := placement.HostCPUs(); err == nil && len(host) > 0 {
		n = len(host)
	}
	return max(1, n/4)
}

// RestartBackoffMax caps the delay between restarts of a crashing plugin.
func (c *Config) RestartBackoffMax() time.Duration {
	return time.Duration(c.PluginHost.RestartBackoffMax)
}

// ResolvePluginID finds the plugin that name designates: a full id
// ("io.containerd.metadata.v1.bolt"), or a short id ("bolt") that exactly one
// plugin of plugins has.
func ResolvePluginID(plugins []pluginkit.Plugin, name string) (pluginkit.Plugin, bool) {
	found := matchPlugins(plugins, name)
	if len(found) != 1 {
		return pluginkit.Plugin{}, false
	}
	return found[0], true
}

// matchPlugins returns the plugin with the full id name, or else every
// plugin with the short id name.
func matchPlugins(plugins []pluginkit.Plugin, name string) []pluginkit.Plugin {
	var short []pluginkit.Plugin
	for _, p := range plugins {
		if p.FullID() == name {
			return []pluginkit.Plugin{p}
		}
		if p.ID == name {
			short = append(short, p)
		}
	}
	return short
}
