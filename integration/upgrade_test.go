//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"corral.dev/pluginkit/testkit"
)

// TestPluginUpgrade swaps the bolt plugin to its own binary with `containerd
// plugins upgrade` in the middle of a loop of namespace calls: no call fails,
// and the new process runs from the new binary.
func TestPluginUpgrade(t *testing.T) {
	testkit.RequiresRoot(t)
	bin := filepath.Join(t.TempDir(), "metadata-svc")
	build := exec.Command("go", "build", "-o", bin, "./metadata-svc/cmd/metadata-svc")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build metadata-svc: %v\n%s", err, out)
	}

	d := startDaemon(t, settings{})
	old := d.runningPlugin(t, boltID)
	loopWhile(t, d, func() {
		mustRun(t, containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "upgrade", boltID, bin)
	})

	now := d.runningPlugin(t, boltID)
	if now.Pid == old.Pid || !alive(now.Pid) {
		t.Fatalf("bolt pid %d after the upgrade (was %d), want a new live process", now.Pid, old.Pid)
	}
	exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(now.Pid), "exe"))
	if err != nil {
		t.Fatal(err)
	}
	if exe != bin {
		t.Errorf("bolt runs from %s after the upgrade, want %s", exe, bin)
	}
	if !waitGone(old.Pid, 5*time.Second) {
		t.Errorf("old bolt process %d still running after the upgrade", old.Pid)
	}

	// A path that is not an executable is refused, and the plugin keeps running.
	res := run(containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "upgrade", boltID, t.TempDir())
	if res.Err == nil {
		t.Errorf("upgrade to a directory succeeded: %s", res.Stdout)
	}
	if after := d.runningPlugin(t, boltID); after.Pid != now.Pid {
		t.Errorf("a refused upgrade restarted bolt (pid %d, was %d)", after.Pid, now.Pid)
	}
}
