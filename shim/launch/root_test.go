//go:build linux

package launch_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
		out, err := exec.Command("go", "build", "-o",
			filepath.Join(binDir, "containerd-shim-corral-v2"),
			"corral.dev/shim/cmd/containerd-shim-corral-v2").CombinedOutput()
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
	dir := shimDir(t)
	image := testkit.BusyboxImage(t)
	d := testkit.StartContainerd(t, dir)
	e := &env{t: t, d: d, ns: fmt.Sprintf("cs%d-%d", os.Getpid(), seq.Add(1))}
	e.ctr("images", "import", "--base-name", "busybox", image)
	t.Cleanup(e.sweep)
	return e
}

// sweep kills and removes every task and container left in the namespace.
func (e *env) sweep() {
	out, _ := e.d.Ctr(e.ns, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = e.d.Ctr(e.ns, "tasks", "kill", "-a", "-s", "SIGKILL", id)
		for range 50 {
			if _, err := e.d.Ctr(e.ns, "tasks", "rm", "-f", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	out, _ = e.d.Ctr(e.ns, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = e.d.Ctr(e.ns, "containers", "rm", id)
	}
}

// ctr runs ctr in the test namespace and fails the test on error.
func (e *env) ctr(args ...string) string {
	e.t.Helper()
	return e.d.MustCtr(e.ns, args...)
}

// run is `ctr run --rm` of cmd with our runtime; it returns stdout,
// stderr and ctr's exit code.
func (e *env) run(stdin string, extra []string, id string, cmd ...string) (string, string, int) {
	e.t.Helper()
	args := append([]string{"run", "--rm", "--runtime", runtime}, extra...)
	args = append(args, "busybox:latest", id)
	c := e.d.CtrCommand(e.ns, append(args, cmd...)...)
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
