package testkit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Debian's containerd 1.6 and its ctr; PATH may hold newer builds.
const (
	ContainerdBinary = "/usr/bin/containerd"
	CtrBinary        = "/usr/bin/ctr"
)

// Containerd is a containerd daemon (Debian's 1.6 at /usr/bin/containerd)
// running on a temporary root, state and sockets for one test.
type Containerd struct {
	// Dir holds everything the daemon writes; it is short enough for
	// unix socket paths.
	Dir string
	// Address is the gRPC socket; TTRPCAddress the ttrpc one.
	Address, TTRPCAddress string
	// Env is the environment of the daemon and of Ctr.
	Env []string

	t      testing.TB
	config string
	cmd    *exec.Cmd
	done   chan struct{}
}

// StartContainerd starts containerd with the cri plugin disabled and
// pathDirs first on its PATH (where it finds shim binaries). The daemon
// is stopped by pid and its directory removed when t ends. It skips t
// when containerd or ctr is not installed.
func StartContainerd(t testing.TB, pathDirs ...string) *Containerd {
	t.Helper()
	dirs := append(pathDirs, os.Getenv("PATH"))
	return StartContainerdPath(t, strings.Join(dirs, string(os.PathListSeparator)))
}

// StartContainerdPath is StartContainerd with exactly path as PATH, for
// tests that need a binary to be missing.
func StartContainerdPath(t testing.TB, path string) *Containerd {
	t.Helper()
	for _, bin := range []string{ContainerdBinary, CtrBinary} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	dir, err := os.MkdirTemp("", "cs")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir:          dir,
		Address:      filepath.Join(dir, "c.sock"),
		TTRPCAddress: filepath.Join(dir, "c.sock.ttrpc"),
		config:       filepath.Join(dir, "config.toml"),
		t:            t,
	}
	c.Env = append(os.Environ(), "PATH="+path)
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
  level = "debug"
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Address, c.TTRPCAddress,
		filepath.Join(dir, "d.sock"))
	if err := os.WriteFile(c.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			if data, err := os.ReadFile(c.LogPath()); err == nil {
				t.Logf("containerd log:\n%s", tail(data, 200))
			}
		}
		unmountUnder(dir)
		_ = os.RemoveAll(dir)
	})
	c.Start()
	return c
}

// LogPath is the file that receives the daemon's output (shim logs too).
func (c *Containerd) LogPath() string {
	return filepath.Join(c.Dir, "containerd.log")
}

// Start (re)starts the daemon and waits until it answers.
func (c *Containerd) Start() {
	c.t.Helper()
	logf, err := os.OpenFile(c.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	c.cmd = exec.Command(ContainerdBinary, "--config", c.config)
	c.cmd.Env = c.Env
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// Its own process group, so a ^C of the test does not reach it first.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatalf("start containerd: %v", err)
	}
	c.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(c.cmd, c.done)

	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Ctr("", "version"); err == nil {
			return
		}
		select {
		case <-c.done:
			c.t.Fatalf("containerd exited at start:\n%s", c.readLog())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("containerd not ready:\n%s", c.readLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the daemon by pid (SIGTERM, then SIGKILL after 10s); shims
// and containers keep running.
func (c *Containerd) Stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

// Pid is the running daemon's pid, or 0 when it is stopped.
func (c *Containerd) Pid() int {
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

// Ctr runs ctr against the daemon in namespace ns (none when empty) and
// returns its combined output.
func (c *Containerd) Ctr(ns string, args ...string) (string, error) {
	cmd := c.CtrCommand(ns, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// CtrCommand returns an unstarted ctr command against the daemon.
func (c *Containerd) CtrCommand(ns string, args ...string) *exec.Cmd {
	base := []string{"--address", c.Address}
	if ns != "" {
		base = append(base, "--namespace", ns)
	}
	cmd := exec.Command(CtrBinary, append(base, args...)...)
	cmd.Env = c.Env
	return cmd
}

// MustCtr is Ctr that fails t on error.
func (c *Containerd) MustCtr(ns string, args ...string) string {
	c.t.Helper()
	out, err := c.Ctr(ns, args...)
	if err != nil {
		c.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// readLog returns the end of the daemon's log.
func (c *Containerd) readLog() string {
	data, _ := os.ReadFile(c.LogPath())
	return tail(data, 50)
}

// tail is the last n lines of data.
func tail(data []byte, n int) string {
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// unmountUnder detaches every mount below dir, deepest first, so that a
// test that failed half-way does not leave mounts behind.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}
