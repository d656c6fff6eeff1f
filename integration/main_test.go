//go:build linux

package integration

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// containerdBin is the binary under test, built once by TestMain.
var containerdBin string

// Plugin identity of the metadata service, as every listing shows it.
const (
	boltID     = "bolt"
	boltFullID = "io.containerd.metadata.v1.bolt"
)

// Time limits: a daemon boots in about a second; stopping may take the
// daemon's own 10 s drain of calls in flight.
const (
	bootTimeout = 20 * time.Second
	stopTimeout = 15 * time.Second
	cmdTimeout  = 30 * time.Second
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

// runTests builds the binary when the root tests will run, then runs them.
func runTests(m *testing.M) int {
	if f := flag.Lookup("test.root"); f == nil || f.Value.String() != "true" || os.Geteuid() != 0 {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "corral-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	containerdBin = filepath.Join(dir, "containerd")
	cmd := exec.Command("go", "build", "-o", containerdBin, "./cmd/containerd")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build containerd: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// layout is where one daemon keeps its files, under a temporary directory
// short enough for unix socket paths.
type layout struct {
	Dir         string
	Config      string
	Root, State string
	Socket      string
	DebugSocket string
	MetricsAddr string
}

// newLayout makes the directory, removed when t ends; root and state are
// left for the daemon to create.
func newLayout(t *testing.T) *layout {
	t.Helper()
	dir, err := os.MkdirTemp("", "ci")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return &layout{
		Dir:         dir,
		Config:      filepath.Join(dir, "config.toml"),
		Root:        filepath.Join(dir, "root"),
		State:       filepath.Join(dir, "state"),
		Socket:      filepath.Join(dir, "c.sock"),
		DebugSocket: filepath.Join(dir, "d.sock"),
		MetricsAddr: freeAddr(t),
	}
}

// settings are the parts of a configuration tests vary.
type settings struct {
	OOMScore           int
	GRPCUID, GRPCGID   int
	DebugUID, DebugGID int
	// PluginProcs, when set, is [plugin_host] plugin_procs.
	PluginProcs int
	// ParkSysmon sets [plugin_host] sysmon_awake = false.
	ParkSysmon bool
	// CPUAffinity, when set, is [plugin_host] cpu_affinity.
	CPUAffinity string
	// Extra is TOML appended after the tables the layout writes.
	Extra string
}

// configText is a complete configuration for l with s.
func (l *layout) configText(s settings) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
oom_score = %d

[grpc]
  address = %q
  uid = %d
  gid = %d

[debug]
  address = %q
  uid = %d
  gid = %d

[metrics]
  address = %q

[plugin_host]
  call_wait_timeout = "30s"
  restart_backoff_max = "2s"%s%s
%s`, l.Root, l.State, s.OOMScore, l.Socket, s.GRPCUID, s.GRPCGID,
		l.DebugSocket, s.DebugUID, s.DebugGID, l.MetricsAddr, routerLine(), s.pluginHostLines(), s.Extra)
}

// pluginHostLines are the [plugin_host] lines of the settings s makes:
// plugin_procs, sysmon_awake and cpu_affinity when they are not left to
// their defaults.
func (s settings) pluginHostLines() string {
	var b strings.Builder
	if s.PluginProcs != 0 {
		fmt.Fprintf(&b, "\n  plugin_procs = %d", s.PluginProcs)
	}
	if s.ParkSysmon {
		b.WriteString("\n  sysmon_awake = false")
	}
	if s.CPUAffinity != "" {
		fmt.Fprintf(&b, "\n  cpu_affinity = %q", s.CPUAffinity)
	}
	return b.String()
}

// EnvRouter, when set, picks the daemons' router ("grpc" or "h2") for the
// whole run, so that CI can run the suite once with each.
const EnvRouter = "CORRAL_ROUTER"

// routerLine is the [plugin_host] line that picks the router from
// EnvRouter, or nothing for the default.
func routerLine() string {
	r := os.Getenv(EnvRouter)
	if r == "" {
		return ""
	}
	return fmt.Sprintf("\n  router = %q", r)
}

// writeConfig writes the configuration for l with s to l.Config.
func (l *layout) writeConfig(t *testing.T, s settings) {
	t.Helper()
	if err := os.WriteFile(l.Config, []byte(l.configText(s)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// freeAddr returns a 127.0.0.1 address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// daemon is one running containerd process.
type daemon struct {
	*layout
	Pid int

	log     *syncBuffer
	done    chan struct{} // closed when the process has exited
	exitErr error         // how it exited, once done is closed
}

// startDaemon writes a configuration for a fresh layout with s, starts a
// daemon on it and waits until it serves. The daemon is stopped when t ends.
func startDaemon(t *testing.T, s settings) *daemon {
	t.Helper()
	l := newLayout(t)
	l.writeConfig(t, s)
	return startOn(t, l)
}

// startOn starts a daemon on l's configuration and waits until it serves.
func startOn(t *testing.T, l *layout) *daemon {
	t.Helper()
	d := &daemon{layout: l, log: &syncBuffer{}, done: make(chan struct{})}
	cmd := exec.Command(containerdBin, "-c", l.Config)
	cmd.Stdout = d.log
	cmd.Stderr = d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.Pid = cmd.Process.Pid
	go func() {
		d.exitErr = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() { d.stop(t) })

	d.waitReady(t)
	return d
}

// waitReady waits for the boot message and for the socket to answer.
func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			t.Fatalf("daemon exited while starting:\n%s", d.log)
		default:
		}
		if strings.Contains(d.log.String(), "containerd successfully booted") {
			c, err := net.Dial("unix", d.Socket)
			if err == nil {
				c.Close()
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("daemon not serving after %v:\n%s", bootTimeout, d.log)
}

// stop ends the daemon by pid (SIGTERM, then SIGKILL) and checks that it
// exits cleanly and that its plugin processes end with it.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if t.Failed() {
		t.Logf("daemon %d log:\n%s", d.Pid, d.log)
	}
	select {
	case <-d.done:
		return
	default:
	}
	children := childPIDs(d.Pid)
	syscall.Kill(d.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
		if d.exitErr != nil {
			t.Errorf("daemon %d exited with %v on SIGTERM, want status 0", d.Pid, d.exitErr)
		}
	case <-time.After(stopTimeout):
		t.Errorf("daemon %d still running %v after SIGTERM; killing it", d.Pid, stopTimeout)
		d.kill(t)
	}
	for _, pid := range children {
		if !waitGone(pid, 5*time.Second) {
			t.Errorf("plugin process %d outlived daemon %d; killing it", pid, d.Pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// kill ends the daemon with SIGKILL and waits for it to exit.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(d.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill daemon %d: %v", d.Pid, err)
	}
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		t.Fatalf("daemon %d still running after SIGKILL", d.Pid)
	}
}

// running reports whether the daemon process is still running.
func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// plugin is one row of `containerd plugins ls`.
type plugin struct {
	ID, Type, State string
	Pid, Restarts   int
}

// plugins lists the plugin processes through `containerd plugins ls`.
func (d *daemon) plugins(t *testing.T) map[string]plugin {
	t.Helper()
	out := mustRun(t, containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 1 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("containerd plugins ls: no header in %q", out)
	}
	ps := make(map[string]plugin)
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 5 {
			t.Fatalf("containerd plugins ls: short row %q", line)
		}
		pid, err1 := strconv.Atoi(f[3])
		restarts, err2 := strconv.Atoi(f[4])
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("containerd plugins ls: row %q: %v", line, err)
		}
		ps[f[0]] = plugin{ID: f[0], Type: f[1], State: f[2], Pid: pid, Restarts: restarts}
	}
	return ps
}

// runningPlugin waits until plugin id is running and returns its row.
func (d *daemon) runningPlugin(t *testing.T, id string) plugin {
	t.Helper()
	var p plugin
	deadline := time.Now().Add(bootTimeout)
	for time.Now().Before(deadline) {
		p = d.plugins(t)[id]
		if p.State == "running" && p.Pid > 0 {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("plugin %s not running after %v: %+v", id, bootTimeout, p)
	return p
}

// restartedPlugin waits until plugin id runs in a process other than old
// and returns its row.
func (d *daemon) restartedPlugin(t *testing.T, id string, old int) plugin {
	t.Helper()
	var p plugin
	if !waitFor(bootTimeout, func() bool {
		p = d.plugins(t)[id]
		return p.State == "running" && p.Pid > 0 && p.Pid != old
	}) {
		t.Fatalf("plugin %s not running again after %v (old pid %d): %+v", id, bootTimeout, old, p)
	}
	return p
}

// childPIDs lists the children of pid from /proc.
func childPIDs(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var pids []int
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

// alive reports whether pid is a process that has not exited (a zombie has).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// waitGone waits up to timeout for pid to exit.
func waitGone(pid int, timeout time.Duration) bool {
	return waitFor(timeout, func() bool { return !alive(pid) })
}

// result is what a finished command printed and how it ended.
type result struct {
	Stdout, Stderr string
	Err            error
}

// run runs a command to its end, killing it after cmdTimeout.
func run(name string, args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (killed after %v)", err, cmdTimeout)
	}
	return result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
}

// mustRun runs a command and returns its stdout, failing t if it fails.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := run(name, args...)
	if r.Err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s",
			filepath.Base(name), strings.Join(args, " "), r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
