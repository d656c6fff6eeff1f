package config

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit"
	"corral.dev/supervisor/placement"
)

type boltConfig struct {
	ContentSharingPolicy string   `toml:"content_sharing_policy"`
	Sync                 bool     `toml:"sync"`
	GC                   gcConfig `toml:"gc"`
}

type gcConfig struct {
	PauseThreshold float64 `toml:"pause_threshold"`
	Interval       int     `toml:"interval"`
}

type linuxConfig struct {
	Runtime   string `toml:"runtime"`
	NoShim    bool   `toml:"no_shim"`
	ShimDebug bool   `toml:"shim_debug"`
}

// testPlugins stands for the plugins of a build: two with options, one
// without.
var testPlugins = []pluginkit.Plugin{
	{Type: "io.containerd.metadata.v1", ID: "bolt", Config: func() any {
		return &boltConfig{ContentSharingPolicy: "shared", GC: gcConfig{PauseThreshold: 0.02}}
	}},
	{Type: "io.containerd.runtime.v1", ID: "linux", Config: func() any {
		return &linuxConfig{Runtime: "runc"}
	}},
	{Type: "io.containerd.content.v1", ID: "content"},
}

// The sections of testPlugins at their defaults, as Section holds them.
const (
	boltDefaults = `content_sharing_policy = "shared"
sync = false

[gc]
  pause_threshold = 0.02
  interval = 0
`
	linuxDefaults = `runtime = "runc"
no_shim = false
shim_debug = false
`
)

func writeFile(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func dump(t *testing.T, c *Config) string {
	t.Helper()
	var buf bytes.Buffer
	n, err := c.WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo = %d bytes, wrote %d", n, buf.Len())
	}
	return buf.String()
}

func TestDefaultRoundTrip(t *testing.T) {
	for _, plugins := range [][]pluginkit.Plugin{nil, testPlugins} {
		want := Default(plugins)
		text := dump(t, want)
		got, warnings, err := Load(writeFile(t, text), true, plugins)
		if err != nil {
			t.Fatalf("Load(default) error: %v\n%s", err, text)
		}
		if len(warnings) > 0 {
			t.Errorf("Load(default) warnings: %q", warnings)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("Load(WriteTo(Default)) mismatch (-want +got):\n%s\n%s", diff, text)
		}
	}
}

func TestRouter(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{"", "h2"},
		{"[plugin_host]\nrouter = \"h2\"\n", "h2"},
		{"[plugin_host]\nrouter = \"grpc\"\n", "grpc"},
	} {
		c, _, err := Load(writeFile(t, tt.doc), true, testPlugins)
		if err != nil {
			t.Fatalf("Load(%q) error: %v", tt.doc, err)
		}
		if c.PluginHost.Router != tt.want {
			t.Errorf("Load(%q) router = %q, want %q", tt.doc, c.PluginHost.Router, tt.want)
		}
	}
}

func TestDefaultValues(t *testing.T) {
	c := Default(testPlugins)
	if c.Version != 2 || c.Root != "/var/lib/containerd" || c.State != "/run/containerd" {
		t.Errorf("Default() = version %d root %q state %q", c.Version, c.Root, c.State)
	}
	g := c.GRPC
	if g.Address != "/run/containerd/containerd.sock" ||
		g.MaxRecvMessageSize != 16777216 || g.MaxSendMessageSize != 16777216 {
		t.Errorf("Default().GRPC = %+v", c.GRPC)
	}
	if c.Debug.Address != "" || c.Debug.Level != "info" || c.Debug.Format != "text" {
		t.Errorf("Default().Debug = %+v", c.Debug)
	}
	if c.CallWaitTimeout() != 30*time.Second || c.RestartBackoffMax() != 10*time.Second {
		t.Errorf("Default() durations = %v, %v", c.CallWaitTimeout(), c.RestartBackoffMax())
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
	if n, want := c.PluginProcs(), max(1, runtime.NumCPU()/4); n != want {
		t.Errorf("Default().PluginProcs() = %d, want %d", n, want)
	}
	c.PluginHost.PluginProcs = 5
	if n := c.PluginProcs(); n != 5 {
		t.Errorf("PluginProcs() with plugin_procs = 5 is %d", n)
	}
	c.PluginHost.PluginProcs = 0
	t.Setenv(placement.EnvHostCPUs, "0-15")
	if n := c.PluginProcs(); n != 4 {
		t.Errorf("PluginProcs() of a daemon started on 16 CPUs is %d, want 4", n)
	}
	if c.PluginHost.CPUAffinity != placement.Auto {
		t.Errorf("Default() cpu_affinity = %q, want %q", c.PluginHost.CPUAffinity, placement.Auto)
	}
	if !c.PluginHost.SysmonAwake {
		t.Error("Default() parks the runtime monitor when idle")
	}
	path, section := c.PluginSection("bolt")
	if path != "" || section != boltDefaults {
		t.Errorf("PluginSection(bolt) = %q, %q; want \"\", %q", path, section, boltDefaults)
	}
}

const containerdFile = `version = 2
root = "/srv/containerd"
state = "/run/corral"
oom_score = -999
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "linux"]
required_plugins = ["bolt"]
plugin_dir = ""
temp = "/tmp/containerd"

[grpc]
  address = "/run/corral/containerd.sock"
  tcp_address = ""
  tcp_tls_cert = ""
  tcp_tls_key = ""
  uid = 0
  gid = 1000
  max_recv_message_size = 8388608
  max_send_message_size = 8388608

[ttrpc]
  address = ""
  uid = 0
  gid = 0

[debug]
  address = "/run/corral/debug.sock"
  uid = 0
  gid = 0
  level = ""

[metrics]
  address = "127.0.0.1:1338"
  grpc_histogram = true

[plugin_host]
  call_wait_timeout = "1m"

[cgroup]
  path = ""

[timeouts]
  "io.containerd.timeout.shim.cleanup" = "5s"
  "io.containerd.timeout.task.state" = "2s"

[proxy_plugins]

[stream_processors]
  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+encrypted"]
    path = "ctd-decoder"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
  [plugins.bolt]
    content_sharing_policy = "isolated"
    [plugins.bolt.gc]
      interval = 5
  [plugins."io.containerd.runtime.v1.linux"]
    path = "/opt/corral/runtime-linux"
    shim_debug = true
`

func TestLoadContainerdFile(t *testing.T) {
	c, warnings, err := Load(writeFile(t, containerdFile), true, testPlugins)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	want := Default(testPlugins)
	want.Root, want.State, want.OOMScore = "/srv/containerd", "/run/corral", -999
	want.DisabledPlugins = []string{"io.containerd.grpc.v1.cri", "linux"}
	want.RequiredPlugins = []string{"bolt"}
	want.Temp = "/tmp/containerd"
	want.Timeouts = map[string]Duration{
		"io.containerd.timeout.shim.cleanup": Duration(5 * time.Second),
		"io.containerd.timeout.task.state":   Duration(2 * time.Second),
	}
	want.GRPC.Address, want.GRPC.GID = "/run/corral/containerd.sock", 1000
	want.GRPC.MaxRecvMessageSize, want.GRPC.MaxSendMessageSize = 8388608, 8388608
	want.Debug.Address = "/run/corral/debug.sock"
	want.Metrics = MetricsConfig{Address: "127.0.0.1:1338", GRPCHistogram: true}
	want.PluginHost.CallWaitTimeout = Duration(time.Minute)
	want.Plugins["io.containerd.metadata.v1.bolt"] = PluginConfig{
		Type: "io.containerd.metadata.v1", ID: "bolt",
		Section: strings.NewReplacer(`"shared"`, `"isolated"`, "interval = 0", "interval = 5").
			Replace(boltDefaults),
	}
	want.Plugins["io.containerd.runtime.v1.linux"] = PluginConfig{
		Type: "io.containerd.runtime.v1", ID: "linux", Path: "/opt/corral/runtime-linux",
		Section: strings.Replace(linuxDefaults, "shim_debug = false", "shim_debug = true", 1),
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("Load mismatch (-want +got):\n%s", diff)
	}

	wantWarnings := []string{
		`line 54: plugins."io.containerd.grpc.v1.cri": no such plugin in this build; section ignored`,
		`line 49: stream_processors."io.containerd.ocicrypt.decoder.v1.tar": ` +
			`stream processors are not supported; section ignored`,
		`disabled_plugins: no plugin "io.containerd.grpc.v1.cri" in this build`,
		`line 9: temp: not used by this daemon; ignored`,
	}
	if diff := cmp.Diff(wantWarnings, warnings); diff != "" {
		t.Errorf("warnings mismatch (-want +got):\n%s", diff)
	}
	if !c.Disabled(testPlugins[1]) || c.Disabled(testPlugins[0]) {
		t.Errorf("Disabled(linux), Disabled(bolt) = %v, %v; want true, false",
			c.Disabled(testPlugins[1]), c.Disabled(testPlugins[0]))
	}

	// A dump of the loaded config loads back unchanged.
	again, _, err := Parse([]byte(dump(t, c)), testPlugins)
	if err != nil {
		t.Fatalf("Parse(dump): %v", err)
	}
	if diff := cmp.Diff(c, again); diff != "" {
		t.Errorf("Parse(WriteTo(Load)) mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadVersions(t *testing.T) {
	for _, v := range []string{"1", "2", "3"} {
		doc := "version = " + v + "\n[plugins.linux]\nno_shim = true\n"
		c, _, err := Parse([]byte(doc), testPlugins)
		if err != nil {
			t.Errorf("Parse(version = %s) error: %v", v, err)
			continue
		}
		if _, section := c.PluginSection("linux"); !strings.Contains(section, "no_shim = true") {
			t.Errorf("Parse(version = %s) linux section = %q", v, section)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // substrings of the error
	}{
		{"unknown top-level key", "version = 2\nroot_dir = \"/x\"\n",
			[]string{`line 2: unknown key "root_dir"`}},
		{"unknown section", "[grpc]\naddress = \"/x.sock\"\n\n[cgroups]\npath = \"\"\n",
			[]string{`line 4: unknown key "cgroups"`}},
		{"unknown grpc key", "[grpc]\n  adress = \"/x.sock\"\n",
			[]string{`line 2: unknown key "grpc.adress"`}},
		{"unknown dotted key", "debug.levle = \"info\"\n",
			[]string{`line 1: unknown key "debug.levle"`}},
		{"unknown keys in inline table", "metrics = { address = \"\", histogram = true }\n",
			[]string{`line 1: unknown key "metrics.histogram"`}},
		{"unknown plugin_host key", "[plugin_host]\ncall_timeout = \"1s\"\n",
			[]string{`line 2: unknown key "plugin_host.call_timeout"`}},
		{"several unknown keys", "[ttrpc]\nadress = \"\"\n[debug]\nlevle = \"info\"\n", []string{
			`line 2: unknown key "ttrpc.adress"`, `line 4: unknown key "debug.levle"`}},
		{"unknown plugin option", "[plugins.bolt]\ncontent_sharing = \"isolated\"\n", []string{
			`line 2: unknown key "plugins.bolt.content_sharing"`}},
		{"unknown nested plugin option", "[plugins.\"io.containerd.metadata.v1.bolt\".gc]\nperiod = 3\n",
			[]string{
				`line 2: unknown key plugins."io.containerd.metadata.v1.bolt".gc.period`}},
		{"option for plugin without options", "[plugins.content]\nsync = true\n", []string{
			`line 2: unknown key "plugins.content.sync"`}},
		{"wrong type top-level", "version = 2\noom_score = \"high\"\n",
			[]string{"line 2", "oom_score", "incompatible types"}},
		{"wrong type grpc", "[grpc]\nuid = \"root\"\n", []string{"line 2", "grpc.uid"}},
		{"wrong type section", "grpc = 3\n", []string{"line 1", "grpc"}},
		{"wrong type plugin option", "[plugins.bolt]\nsync = \"yes\"\n",
			[]string{"line 2", "plugins.bolt.sync", "incompatible types"}},
		{"wrong type plugin path", "[plugins.linux]\npath = 1\n",
			[]string{"line 2", "plugins.linux.path"}},
		{"wrong type plugin section", "[plugins]\nbolt = 1\n",
			[]string{"line 2: plugins.bolt must be a table, not integer"}},
		{"wrong type list", "disabled_plugins = \"cri\"\n", []string{"line 1", "disabled_plugins"}},
		{"broken toml", "version = 2\n[grpc\naddress = \"x\"\n",
			[]string{"line 2, column 6: expected '.' or ']'"}},
		{"broken array", "a = [1,\n2,\n", []string{"line 2, column 3: unexpected EOF"}},
		{"duplicate key", "root = \"/a\"\nroot = \"/b\"\n", []string{"line 2", "root"}},
		{"unterminated string", "[debug]\nlevel = \"info\n", []string{"line 2, column 14"}},
		{"plugin configured twice", "[plugins.bolt]\nsync = true\n[plugins.\"io.containerd.metadata.v1.bolt\"]\nsync = false\n",
			[]string{
				"line 3: plugin io.containerd.metadata.v1.bolt is configured twice",
				`as plugins.bolt and plugins."io.containerd.metadata.v1.bolt"`}},
		{"proxy plugin", "[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = \"snapshot\"\n",
			[]string{"line 2: proxy_plugins.stargz: proxy plugins are not supported"}},
		{"unknown required plugin", "required_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
			[]string{`line 1: required_plugins: no plugin "io.containerd.grpc.v1.cri" in this build`}},
		{"required and disabled", "required_plugins = [\"bolt\"]\ndisabled_plugins = [\"bolt\"]\n",
			[]string{`required_plugins: "bolt" is also in disabled_plugins`}},
		{"bad timeout", "[timeouts]\n\"io.containerd.timeout.shim.load\" = \"5\"\n",
			[]string{"line 2", "io.containerd.timeout.shim.load"}},
		{"version 4", "version = 4\n", []string{`line 1: version: unsupported version 4`}},
		{"relative root", "root = \"var/lib\"\n",
			[]string{`line 1: root: "var/lib" is not an absolute path`}},
		{"oom score range", "oom_score = -1001\n",
			[]string{"oom_score: -1001 is outside -1000..1000"}},
		{"imports", "imports = [\"/etc/containerd/conf.d/*.toml\"]\n",
			[]string{"line 1: imports: not supported"}},
		{"tcp address", "[grpc]\ntcp_address = \"0.0.0.0:1234\"\n",
			[]string{"line 2: grpc.tcp_address: not supported"}},
		{"tcp tls key", "[grpc]\ntcp_tls_key = \"/k\"\n",
			[]string{"grpc.tcp_tls_key: not supported"}},
		{"negative uid", "[grpc]\nuid = -1\n", []string{"line 2: grpc.uid: must not be negative"}},
		{"zero message size", "[grpc]\nmax_recv_message_size = 0\n",
			[]string{"grpc.max_recv_message_size: must be positive"}},
		{"bad level", "[debug]\nlevel = \"verbose\"\n",
			[]string{`line 2: debug.level: unknown level "verbose"`}},
		{"bad format", "[debug]\nformat = \"xml\"\n",
			[]string{`debug.format: unknown format "xml"`}},
		{"bad duration", "[plugin_host]\ncall_wait_timeout = \"soon\"\n",
			[]string{"line 2", "plugin_host.call_wait_timeout", "soon"}},
		{"duration without unit", "[plugin_host]\nrestart_backoff_max = 10\n",
			[]string{"line 2", "plugin_host.restart_backoff_max"}},
		{"zero duration", "[plugin_host]\nrestart_backoff_max = \"0s\"\n", []string{
			"line 2: plugin_host.restart_backoff_max: 0s is not a positive duration"}},
		{"negative duration", "[plugin_host]\ncall_wait_timeout = \"-1s\"\n",
			[]string{"plugin_host.call_wait_timeout: -1s is not"}},
		{"negative plugin procs", "[plugin_host]\nplugin_procs = -1\n",
			[]string{"line 2: plugin_host.plugin_procs: -1 is negative"}},
		{"cpu list backwards", "[plugin_host]\ncpu_affinity = \"3-1\"\n",
			[]string{`line 2: plugin_host.cpu_affinity: CPU list "3-1": range 3-1 runs backwards (auto, all or a CPU list)`}},
		{"cpu affinity word", "[plugin_host]\ncpu_affinity = \"none\"\n",
			[]string{`line 2: plugin_host.cpu_affinity:`, `"none" is not a CPU number`}},
		{"unknown router", "[plugin_host]\nrouter = \"fast\"\n",
			[]string{`line 2: plugin_host.router: unknown router "fast" (grpc or h2)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.doc)
			_, _, err := Load(path, true, testPlugins)
			if err == nil {
				t.Fatalf("Load(%q) = nil error, want %q", tt.doc, tt.want)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Load(%q) = %v, want an invalid argument error", tt.doc, err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("Load(%q) = %v, want the path in it", tt.doc, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Load(%q) = %v, want %q in it", tt.doc, err, w)
				}
			}
		})
	}
}

func TestLoadAmbiguousShortID(t *testing.T) {
	plugins := []pluginkit.Plugin{
		{Type: "io.containerd.snapshotter.v1", ID: "overlayfs"},
		{Type: "io.containerd.differ.v1", ID: "overlayfs"},
	}
	_, _, err := Parse([]byte("[plugins.overlayfs]\n"), plugins)
	if err == nil || !strings.Contains(err.Error(), "use the full id") {
		t.Errorf("Parse(ambiguous short id) = %v, want an error asking for the full id", err)
	}
	full := "[plugins.\"io.containerd.differ.v1.overlayfs\"]\n"
	if _, _, err := Parse([]byte(full), plugins); err != nil {
		t.Errorf("Parse(full id) = %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")

	c, warnings, err := Load(path, false, testPlugins)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Load(missing, false) = %v, %q", err, warnings)
	}
	if diff := cmp.Diff(Default(testPlugins), c); diff != "" {
		t.Errorf("Load(missing, false) mismatch (-want +got):\n%s", diff)
	}

	_, _, err = Load(path, true, testPlugins)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), path) {
		t.Errorf("Load(missing, true) = %v, want a not found error naming %s", err, path)
	}
}

func TestResolvePluginID(t *testing.T) {
	tests := []struct {
		name   string
		wantID string
		wantOK bool
	}{
		{"bolt", "io.containerd.metadata.v1.bolt", true},
		{"io.containerd.metadata.v1.bolt", "io.containerd.metadata.v1.bolt", true},
		{"io.containerd.metadata.v1", "", false},
		{"cri", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		p, ok := ResolvePluginID(testPlugins, tt.name)
		got := ""
		if ok {
			got = p.FullID()
		}
		if got != tt.wantID || ok != tt.wantOK {
			t.Errorf("ResolvePluginID(%q) = %q, %v; want %q, %v",
				tt.name, got, ok, tt.wantID, tt.wantOK)
		}
	}
}

func TestPluginSection(t *testing.T) {
	c, _, err := Parse([]byte("[plugins.linux]\npath = \"/bin/rt\"\n"), testPlugins)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id, wantPath, wantSection string
	}{
		{"linux", "/bin/rt", linuxDefaults},
		{"io.containerd.runtime.v1.linux", "/bin/rt", linuxDefaults},
		{"content", "", ""},
		{"cri", "", ""},
	}
	for _, tt := range tests {
		path, section := c.PluginSection(tt.id)
		if path != tt.wantPath || section != tt.wantSection {
			t.Errorf("PluginSection(%q) = %q, %q; want %q, %q",
				tt.id, path, section, tt.wantPath, tt.wantSection)
		}
	}
}

func TestValidateAfterChange(t *testing.T) {
	c := Default(nil)
	c.Root = "relative"
	c.Debug.Level = "loud"
	err := c.Validate()
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Validate() = %v, want invalid argument", err)
	}
	for _, w := range []string{"root:", "debug.level:"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %v, want %q in it", err, w)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte(containerdFile))
	f.Add([]byte("version = 2\n[grpc]\nadress = 1\n"))
	f.Add([]byte("[plugins.bolt]\nsync = \"x\"\n[plugins.\"io.containerd.metadata.v1.bolt\"]\n"))
	f.Add([]byte("metrics = { address = \"\" }\n[[debug]]\n"))
	var buf bytes.Buffer
	if _, err := Default(testPlugins).WriteTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())

	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, _, err := Load(path, true, testPlugins)
		if err != nil {
			return
		}
		// Whatever loads must dump and load back unchanged.
		var out bytes.Buffer
		if _, err := c.WriteTo(&out); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
		again, _, err := Parse(out.Bytes(), testPlugins)
		if err != nil {
			t.Fatalf("Parse(WriteTo(Load)) error: %v\n%s", err, out.String())
		}
		if diff := cmp.Diff(c, again); diff != "" {
			t.Fatalf("Parse(WriteTo(Load)) mismatch (-want +got):\n%s", diff)
		}
	})
}
