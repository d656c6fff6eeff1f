//go:build linux

package launch_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"corral.dev/pluginkit/testkit"
)

// runtime is the runtime name that makes containerd pick our shim.
const runtime = "io.containerd.corral.v2"

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
	seq       atomic.Int64
)

// shimDir builds the shim binary once per test binary and returns the
// directory holding it.
func shimDir(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "csbin")
		if buildErr != nil {
			return
		}
		build := exec.Command("go", "build", "-o",
			filepath.Join(binDir, "containerd-shim-corral-v2"),
			"corral.dev/shim/cmd/containerd-shim-corral-v2")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as shipped
		out, err := build.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build shim: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// env is a daemon with the busybox image imported into a fresh namespace.
type env struct {
	t  *testing.T
	d  *testkit.Containerd
	ns string
}

// newEnv starts containerd with the shim on its PATH and imports busybox.
func newEnv(t *testing.T) *env {
	t.Helper()
	testkit.RequiresRoot(t)
	return newEnvPath(t, shimDir(t)+":"+os.Getenv("PATH"))
}

// newEnvPath is newEnv with exactly path as the daemon's PATH.
func newEnvPath(t *testing.T, path string) *env {
	t.Helper()
	testkit.RequiresRoot(t)
	image := testkit.BusyboxImage(t)
	d := testkit.StartContainerdPath(t, path)
	e := &env{t: t, d: d, ns: fmt.Sprintf("cs%d-%d", os.Getpid(), seq.Add(1))}
	e.ctr("images", "import", "--base-name", "busybox", image)
	t.Cleanup(e.sweep)
	return e
}

// sweep kills and removes every task and container left in the namespace.
func (e *env) sweep() {
	out, _ := e.try("tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = e.try("tasks", "kill", "-a", "-s", "SIGKILL", id)
		for range 50 {
			if _, err := e.try("tasks", "rm", "-f", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	out, _ = e.try("containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = e.try("containers", "rm", id)
	}
	removeCgroups(e.ns)
}

// removeCgroups removes the empty cgroup directories named parent that
// the test's containers left (ctr puts a container in /<namespace>/<id>).
func removeCgroups(parent string) {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	if st, err := os.Stat("/sys/fs/cgroup/" + parent); err == nil && st.IsDir() {
		dirs = append(dirs, "/sys/fs/cgroup/"+parent)
	}
	for _, dir := range dirs {
		subs, _ := filepath.Glob(dir + "/*/")
		for _, sub := range subs {
			_ = syscall.Rmdir(sub)
		}
		_ = syscall.Rmdir(dir)
	}
}

// ctr runs ctr in the test namespace and fails the test on error.
func (e *env) ctr(args ...string) string {
	e.t.Helper()
	out, err := e.try(args...)
	if err != nil {
		e.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// try runs ctr in the test namespace and returns its combined output.
func (e *env) try(args ...string) (string, error) {
	out, err := e.cmd(args...).CombinedOutput()
	return string(out), err
}

// cmd is an unstarted ctr command in the test namespace. Commands that
// make FIFOs make them in the daemon's directory, which the test removes.
func (e *env) cmd(args ...string) *exec.Cmd {
	fifos := []string{"--fifo-dir", filepath.Join(e.d.Dir, "fifo")}
	switch {
	case len(args) > 0 && args[0] == "run":
		args = append(append([]string{"run"}, fifos...), args[1:]...)
	case len(args) > 1 && args[0] == "tasks" && args[1] == "exec":
		args = append(append([]string{"tasks", "exec"}, fifos...), args[2:]...)
	}
	return e.d.CtrCommand(e.ns, args...)
}

// run is `ctr run --rm` of cmd with our runtime; it returns stdout,
// stderr and ctr's exit code.
func (e *env) run(stdin string, extra []string, id string, cmd ...string) (string, string, int) {
	e.t.Helper()
	args := append([]string{"run", "--rm", "--runtime", runtime}, extra...)
	args = append(args, "busybox:latest", id)
	c := e.cmd(append(args, cmd...)...)
	var stdout, stderr strings.Builder
	c.Stdout, c.Stderr = &stdout, &stderr
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("ctr run: %v", err)
	}
	return stdout.String(), stderr.String(), code
}

func TestRunRemoveStdio(t *testing.T) {
	e := newEnv(t)
	stdout, stderr, code := e.run("", nil, "stdio", "sh", "-c", "echo out; echo err >&2; exit 3")
	if stdout != "out\n" || !strings.Contains(stderr, "err\n") || code != 3 {
		t.Fatalf("run = (%q, %q, %d), want (\"out\\n\", \"err\\n\", 3)", stdout, stderr, code)
	}
}

// bundle is the bundle directory containerd 1.6 makes for id.
func (e *env) bundle(id string) string {
	return filepath.Join(e.d.Dir, "state", "io.containerd.runtime.v2.task", e.ns, id)
}

// taskStatus is id's STATUS column in `ctr tasks ls`, "" without a task,
// or "?" when the daemon cannot list the tasks.
func (e *env) taskStatus(id string) (pid, status string) {
	out, err := e.try("tasks", "ls")
	if err != nil {
		return "", "?"
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id {
			return f[1], f[2]
		}
	}
	return "", ""
}

// waitStatus polls until id's task has status want ("" for no task).
func (e *env) waitStatus(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, got := e.taskStatus(id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s status = %q, want %q", id, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lateReader yields data once ready reports true, then EOF: ctr sends
// CloseIO only for an EOF that comes after the task exists.
type lateReader struct {
	ready func() bool
	data  string
	done  bool
}

func (r *lateReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	for deadline := time.Now().Add(20 * time.Second); !r.ready() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	r.done = true
	return copy(p, r.data), nil
}

func TestRunStdinCloseIO(t *testing.T) {
	e := newEnv(t)
	c := e.cmd("run", "--rm", "--runtime", runtime, "busybox:latest", "stdin", "cat")
	c.Stdin = &lateReader{
		ready: func() bool { _, st := e.taskStatus("stdin"); return st == "RUNNING" },
		data:  "x\n",
	}
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = c.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.Process.Kill()
		<-done
		t.Fatalf("cat did not see EOF after CloseIO; output %q", out)
	}
	if err != nil || string(out) != "x\n" {
		t.Fatalf("run cat = (%q, %v), want (\"x\\n\", nil)", out, err)
	}
}

// ttyScript prints its terminal and, once ctr has sized it (ResizePty
// comes after Start), the size; then it exits 5. The pause before the
// exit is for ctr 1.6, which can drop output that reaches it as its task
// exits (the shim delivers it: the same happens with containerd's shim).
const ttyScript = `tty
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
	s=$(stty size 2>/dev/null)
	[ "$s" = "33 77" ] && echo "$s" && sleep 0.5 && exit 5
	sleep 0.25
done
exit 1`

func TestRunTerminal(t *testing.T) {
	e := newEnv(t)
	c := e.cmd("run", "-t", "--rm", "--runtime", runtime, "busybox:latest", "tty",
		"sh", "-c", ttyScript)
	out, err := ptyRun(t, c, "33 77")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("ctr run -t = %v, want exit 5; output %q", err, out)
	}
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "33 77") {
		t.Fatalf("ctr run -t output %q, want a /dev/pts tty of size 33 77", out)
	}
}

// ptyRun runs c on a new 33x77 terminal and returns what it printed,
// giving the terminal up to 5s after c exits to deliver want.
func ptyRun(t *testing.T, c *exec.Cmd, want string) (string, error) {
	t.Helper()
	pty, slave, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer pty.Close()
	s, err := os.OpenFile(slave, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := pty.Resize(console.WinSize{Height: 33, Width: 77}); err != nil {
		t.Fatal(err)
	}
	c.Stdin, c.Stdout, c.Stderr = s, s, s
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}

	var (
		mu  sync.Mutex
		buf strings.Builder
	)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		b := make([]byte, 4096)
		for {
			n, err := pty.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	err = c.Run()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		out := buf.String()
		mu.Unlock()
		if strings.Contains(out, want) || time.Now().After(deadline) {
			return out, err
		}
		select {
		case <-copied:
			return out, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestDetachedTaskCommands(t *testing.T) {
	e := newEnv(t)
	stop := e.events()
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "det", "sleep", "1000")
	e.waitStatus("det", "RUNNING")

	pid, _ := e.taskStatus("det")
	if out := e.ctr("tasks", "ps", "det"); !strings.Contains(out, pid) {
		t.Errorf("tasks ps = %q, want pid %s", out, pid)
	}
	out, err := e.try("tasks", "exec", "--exec-id", "e1", "det", "sh", "-c", "echo hi; exit 4")
	if out != "hi\n" || err == nil {
		t.Errorf("tasks exec = (%q, %v), want (\"hi\\n\", exit status 4)", out, err)
	}
	for range 3 { // an exec leaves nothing behind
		e.ctr("tasks", "exec", "--exec-id", "e2", "det", "true")
	}
	out, err = ptyRun(t, e.cmd("tasks", "exec", "-t", "--exec-id", "e3", "det", "tty"), "/dev/pts/")
	if err != nil || !strings.Contains(out, "/dev/pts/") {
		t.Errorf("tasks exec -t = (%q, %v), want a /dev/pts tty", out, err)
	}

	e.ctr("tasks", "pause", "det")
	e.waitStatus("det", "PAUSED")
	e.ctr("tasks", "resume", "det")
	e.waitStatus("det", "RUNNING")

	if out := e.ctr("tasks", "metrics", "det"); !strings.Contains(out, "memory") {
		t.Errorf("tasks metrics = %q, want memory figures", out)
	}
	out, err = e.try("tasks", "checkpoint", "det")
	if _, lookErr := exec.LookPath("criu"); lookErr != nil && !strings.Contains(out, "criu") {
		t.Errorf("tasks checkpoint without criu = (%q, %v), want an error naming criu", out, err)
	} else if lookErr == nil && err != nil {
		t.Logf("tasks checkpoint with criu: %v\n%s", err, out)
	}

	e.ctr("tasks", "kill", "--all", "-s", "SIGKILL", "det")
	e.waitStatus("det", "STOPPED")
	e.ctr("tasks", "rm", "det")
	e.ctr("containers", "rm", "det")
	if _, err := os.Stat(e.bundle("det")); !os.IsNotExist(err) {
		t.Errorf("bundle still there after rm: %v", err)
	}

	time.Sleep(200 * time.Millisecond)
	events := stop()
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exec-added",
		"/tasks/exec-started", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"} {
		if !strings.Contains(events, topic) {
			t.Errorf("no %s event in:\n%s", topic, events)
		}
	}
}

func TestExecLeaksNoDescriptors(t *testing.T) {
	e := newEnv(t)
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "fds", "sleep", "1000")
	e.waitStatus("fds", "RUNNING")
	shim := e.shimPid("fds")

	e.ctr("tasks", "exec", "--exec-id", "warm", "fds", "true")
	before := countFDs(t, shim)
	for i := range 10 {
		e.ctr("tasks", "exec", "--exec-id", fmt.Sprintf("x%d", i), "fds", "true")
	}
	if after := countFDs(t, shim); after > before {
		t.Errorf("shim fds grew from %d to %d over 10 execs", before, after)
	}
	if z := zombies(t, shim); len(z) > 0 {
		t.Errorf("shim has zombie children %v", z)
	}
}

// shimPid is the pid of id's shim, from the bundle.
func (e *env) shimPid(id string) int {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.bundle(id), "shim.pid"))
	if err != nil {
		e.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		e.t.Fatal(err)
	}
	return pid
}

// countFDs is the number of open descriptors of pid.
func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// zombies lists the zombie children of pid.
func zombies(t *testing.T, pid int) []int {
	t.Helper()
	var z []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		child, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			z = append(z, child)
		}
	}
	return z
}

// events runs `ctr events` until the returned function is called, which
// returns what it printed.
func (e *env) events() func() string {
	e.t.Helper()
	c := e.d.CtrCommand("", "events")
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = c.Wait()
		close(done)
	}()
	stop := func() string {
		_ = c.Process.Kill()
		<-done
		return out.String()
	}
	e.t.Cleanup(func() { stop() })
	time.Sleep(200 * time.Millisecond) // let the subscription start
	return stop
}

func TestMemoryLimitOOM(t *testing.T) {
	e := newEnv(t)
	stop := e.events()
	_, _, code := e.run("", []string{"--memory-limit", strconv.Itoa(32 << 20)}, "oom", "tail", "/dev/zero")
	if code != 137 {
		t.Errorf("exit code = %d, want 137", code)
	}
	time.Sleep(200 * time.Millisecond)
	if out := stop(); !strings.Contains(out, "/tasks/oom") {
		t.Errorf("no /tasks/oom event in:\n%s", out)
	}
}

func TestDaemonRestart(t *testing.T) {
	e := newEnv(t)
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "keep", "sleep", "1000")
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "gone", "sleep", "1000")
	e.waitStatus("keep", "RUNNING")
	e.waitStatus("gone", "RUNNING")
	gonePid, _ := e.taskStatus("gone")

	// While the daemon is down one container keeps running and the
	// other exits; its exit is delivered once the daemon is back.
	e.d.Stop()
	pid, err := strconv.Atoi(gonePid)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	e.d.Start()

	e.waitStatus("keep", "RUNNING")
	e.waitStatus("gone", "STOPPED")
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(e.logSince("restart"), "topic=/tasks/exit") {
		if time.Now().After(deadline) {
			t.Fatal("queued /tasks/exit not forwarded after the restart")
		}
		time.Sleep(200 * time.Millisecond)
	}

	e.ctr("tasks", "kill", "-s", "SIGKILL", "keep")
	e.waitStatus("keep", "STOPPED")
	for _, id := range []string{"keep", "gone"} {
		e.ctr("tasks", "rm", id)
		e.ctr("containers", "rm", id)
	}
}

// logSince is the daemon log after its last "starting containerd" line.
func (e *env) logSince(string) string {
	data, _ := os.ReadFile(e.d.LogPath())
	s := string(data)
	if i := strings.LastIndex(s, "starting containerd"); i >= 0 {
		return s[i:]
	}
	return s
}

func TestShimKilled(t *testing.T) {
	e := newEnv(t)
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "victim", "sleep", "1000")
	e.waitStatus("victim", "RUNNING")
	taskPid, _ := e.taskStatus("victim")
	shim := e.shimPid("victim")
	bundle := e.bundle("victim")

	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd notices, runs our delete and reports the task gone.
	deadline := time.Now().Add(20 * time.Second)
	for _, err := os.Stat(bundle); err == nil; _, err = os.Stat(bundle) {
		if time.Now().After(deadline) {
			t.Fatal("containerd did not clean up after the dead shim")
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.waitStatus("victim", "")
	if out, err := e.try("tasks", "rm", "victim"); err != nil && !strings.Contains(out, "not found") {
		t.Errorf("tasks rm: %v\n%s", err, out)
	}
	e.ctr("containers", "rm", "victim")

	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Errorf("bundle left behind: %v", err)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), bundle) {
		t.Errorf("mount left under %s", bundle)
	}
	if !gone(taskPid, 5*time.Second) {
		t.Errorf("container process %s still runs", taskPid)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	badSpec := filepath.Join(t.TempDir(), "config.json")
	spec := `{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"relative"},"root":{"path":"rootfs"}}`
	if err := os.WriteFile(badSpec, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	noRunc := newEnvPath(t, shimDir(t))

	tests := []struct {
		name string
		e    *env
		args []string
		want string
	}{
		{"command", e, []string{"busybox:latest", "bad-command", "/no/such/cmd"}, "no such file or directory"},
		{"spec", e, []string{"--config", badSpec, "bad-spec"}, "Cwd must be an absolute path"},
		{"runc", noRunc, []string{"busybox:latest", "bad-runc", "true"}, "runc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := tt.args[len(tt.args)-2]
			if tt.name == "spec" {
				id = tt.args[len(tt.args)-1]
			}
			args := append([]string{"run", "--rm", "--runtime", runtime}, tt.args...)
			out, err := tt.e.try(args...)
			if err == nil || !strings.Contains(out, tt.want) {
				t.Errorf("ctr run = (%q, %v), want an error naming %q", out, err, tt.want)
			}
			_, _ = tt.e.try("containers", "rm", id)
			tt.e.waitStatus(id, "")
			bundle := tt.e.bundle(id)
			if _, err := os.Stat(bundle); !os.IsNotExist(err) {
				t.Errorf("bundle left behind: %v", err)
			}
			if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), bundle) {
				t.Errorf("mount left behind under %s", bundle)
			}
			// The shim exits right after answering Shutdown.
			deadline := time.Now().Add(5 * time.Second)
			for pids := shimsFor(tt.e.ns, id); len(pids) > 0; pids = shimsFor(tt.e.ns, id) {
				if time.Now().After(deadline) {
					t.Errorf("shims left behind: %v", pids)
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// gone waits up to d for pid to exit; a zombie has exited.
func gone(pid string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		data, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return true
		}
		if f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shimsFor lists the pids of our shims serving id in ns.
func shimsFor(ns, id string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if strings.HasSuffix(args[0], "containerd-shim-corral-v2") &&
			strings.Contains(string(data), "\x00"+ns+"\x00") &&
			strings.Contains(string(data), "\x00"+id+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestSocketIsPathBased(t *testing.T) {
	e := newEnv(t)
	e.ctr("run", "-d", "--runtime", runtime, "busybox:latest", "sock", "sleep", "1000")
	e.waitStatus("sock", "RUNNING")
	shim := e.shimPid("sock")

	data, err := os.ReadFile(filepath.Join(e.bundle("sock"), "address"))
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimPrefix(string(data), "unix://")
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 || st.Mode().Type() != os.ModeSocket {
		t.Errorf("socket %s: %v, %v; want a socket of mode 0600", path, st.Mode(), err)
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket dir: %v, %v; want mode 0700", st.Mode(), err)
	}
	if len(path) >= 108 {
		t.Errorf("socket path %q is %d bytes, too long for sun_path", path, len(path))
	}

	// Every unix socket the shim holds has a path or none, never '@'.
	inodes := make(map[string]bool)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", shim))
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", shim, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	table, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 8 && inodes[f[6]] && strings.HasPrefix(f[7], "@") {
			t.Errorf("shim holds abstract socket %s", f[7])
		}
	}
	// The shim's oom_score_adj is the daemon's plus one.
	daemon := readInt(t, fmt.Sprintf("/proc/%d/oom_score_adj", e.d.Pid()))
	if got, want := readInt(t, fmt.Sprintf("/proc/%d/oom_score_adj", shim)), min(daemon+1, 1000); got != want {
		t.Errorf("shim oom_score_adj = %d, want %d", got, want)
	}

	e.ctr("tasks", "kill", "-s", "SIGKILL", "sock")
	e.waitStatus("sock", "STOPPED")
	e.ctr("tasks", "rm", "sock")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket %s left after the shim exited: %v", path, err)
	}
}

// readInt reads a file holding one integer.
func readInt(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
