package config

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"corral.dev/supervisor/placement"
)

// LogLevels are the values [debug] level takes.
var LogLevels = []string{"trace", "debug", "info", "warn", "error", "fatal", "panic"}

// problem is a setting whose value is not acceptable.
type problem struct {
	key toml.Key
	msg string
}

func (pr problem) String() string {
	return pr.key.String() + ": " + pr.msg
}

// Validate checks the settings, for a config changed after it was loaded
// (by command-line flags, say). Load has already checked what it returns.
func (c *Config) Validate() error {
	probs := c.problems()
	if len(probs) == 0 {
		return nil
	}
	msgs := make([]string, len(probs))
	for i, pr := range probs {
		msgs[i] = pr.String()
	}
	return fmt.Errorf("%s: %w", strings.Join(msgs, "; "), errdefs.ErrInvalidArgument)
}

// normalize gives the empty values containerd's files carry their meaning.
func (c *Config) normalize() {
	if c.Debug.Level == "" {
		c.Debug.Level = DefaultLogLevel
	}
	if c.Debug.Format == "" {
		c.Debug.Format = DefaultLogFormat
	}
}

// problems lists what is wrong with the settings, section by section.
func (c *Config) problems() []problem {
	var probs []problem
	add := func(msg string, key ...string) {
		probs = append(probs, problem{key: key, msg: msg})
	}

	if c.Version < 1 || c.Version > 3 {
		add(fmt.Sprintf("unsupported version %d (1, 2 and 3 are read)", c.Version), "version")
	}
	checkDir(add, "root", c.Root)
	checkDir(add, "state", c.State)
	if c.OOMScore < -1000 || c.OOMScore > 1000 {
		add(fmt.Sprintf("%d is outside -1000..1000", c.OOMScore), "oom_score")
	}
	if len(c.Imports) > 0 {
		add("not supported: merge the imported files into this one", "imports")
	}
	c.grpcProblems(add)
	checkOwner(add, "ttrpc", c.TTRPC.UID, c.TTRPC.GID)
	c.debugProblems(add)
	checkDuration(add, "call_wait_timeout", c.PluginHost.CallWaitTimeout)
	checkDuration(add, "restart_backoff_max", c.PluginHost.RestartBackoffMax)
	if c.PluginHost.PluginProcs < 0 {
		add(fmt.Sprintf("%d is negative (0 picks a count from the CPUs)", c.PluginHost.PluginProcs),
			"plugin_host", "plugin_procs")
	}
	if err := placement.Check(c.PluginHost.CPUAffinity); err != nil {
		add(fmt.Sprintf("%v (auto, all or a CPU list)", err), "plugin_host", "cpu_affinity")
	}
	if r := c.PluginHost.Router; r != "grpc" && r != "h2" {
		add(fmt.Sprintf("unknown router %q (grpc or h2)", r), "plugin_host", "router")
	}
	return probs
}

// addFunc records a problem with the setting at key.
type addFunc func(msg string, key ...string)

func (c *Config) grpcProblems(add addFunc) {
	g := c.GRPC
	if g.Address == "" {
		add("must not be empty", "grpc", "address")
	}
	checkOwner(add, "grpc", g.UID, g.GID)
	if g.MaxRecvMessageSize <= 0 {
		add("must be positive", "grpc", "max_recv_message_size")
	}
	if g.MaxSendMessageSize <= 0 {
		add("must be positive", "grpc", "max_send_message_size")
	}
	tcp := []struct{ key, value string }{
		{"tcp_address", g.TCPAddress},
		{"tcp_tls_ca", g.TCPTLSCA},
		{"tcp_tls_cert", g.TCPTLSCert},
		{"tcp_tls_key", g.TCPTLSKey},
	}
	for _, t := range tcp {
		if t.value != "" {
			add("not supported: the gRPC API is served on the unix socket only", "grpc", t.key)
		}
	}
}

func (c *Config) debugProblems(add addFunc) {
	checkOwner(add, "debug", c.Debug.UID, c.Debug.GID)
	if !slices.Contains(LogLevels, c.Debug.Level) {
		levels := strings.Join(LogLevels, ", ")
		add(fmt.Sprintf("unknown level %q (one of %s)", c.Debug.Level, levels), "debug", "level")
	}
	if c.Debug.Format != "text" && c.Debug.Format != "json" {
		add(fmt.Sprintf("unknown format %q (text or json)", c.Debug.Format), "debug", "format")
	}
}

func checkDir(add addFunc, key, dir string) {
	if !filepath.IsAbs(dir) {
		add(fmt.Sprintf("%q is not an absolute path", dir), key)
	}
}

func checkOwner(add addFunc, section string, uid, gid int) {
	if uid < 0 {
		add("must not be negative", section, "uid")
	}
	if gid < 0 {
		add("must not be negative", section, "gid")
	}
}

func checkDuration(add addFunc, key string, d Duration) {
	if d <= 0 {
		add(fmt.Sprintf("%s is not a positive duration", d), "plugin_host", key)
	}
}
