//go:build linux

package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit/testkit"
)

// failTimeout bounds how long a daemon with a bad configuration may take to
// give up; it should be at once.
const failTimeout = 10 * time.Second

// replaceLine replaces the line of text that starts with prefix.
func replaceLine(t *testing.T, text, prefix, line string) string {
	t.Helper()
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			lines[i] = line
			return strings.Join(lines, "\n")
		}
	}
	t.Fatalf("no line starting with %q in\n%s", prefix, text)
	return ""
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names
}

// exitFailure runs the daemon with args and checks that it exits non-zero
// within failTimeout; it returns the output.
func exitFailure(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(containerdBin, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
			t.Errorf("containerd %s: exit %v, want a non-zero exit status\n%s", strings.Join(args, " "), err, out)
		}
	case <-time.After(failTimeout):
		t.Errorf("containerd %s still running after %v, want it to fail at once", strings.Join(args, " "), failTimeout)
		stopProcess(cmd.Process.Pid, done)
	}
	return out.String()
}

// lastLine is the last non-empty line of out, where the daemon says why it
// stopped.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// stopProcess stops a daemon started outside startDaemon, with its plugins.
func stopProcess(pid int, done <-chan error) {
	children := childPIDs(pid)
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		syscall.Kill(pid, syscall.SIGKILL)
		<-done
	}
	for _, c := range children {
		if !waitGone(c, 5*time.Second) {
			syscall.Kill(c, syscall.SIGKILL)
		}
	}
}

// TestBadConfig starts the daemon on bad configurations: each must exit
// non-zero at once, name the problem, and create nothing.
func TestBadConfig(t *testing.T) {
	testkit.RequiresRoot(t)
	procDir := fmt.Sprintf("/proc/corral-test-%d", os.Getpid())
	tests := []struct {
		name string
		// edit returns the configuration text from a good one for l.
		edit func(t *testing.T, l *layout, good string) string
		// want are what the message must hold; "$DIR" stands for l.Dir.
		want []string
		// args replace "-c <config>" when set.
		args []string
	}{
		{
			name: "wrong type",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "oom_score =", `oom_score = "high"`)
			},
			want: []string{"oom_score", "line 4"},
		},
		{
			name: "unknown key",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "  uid =", `  adress = "/tmp/x.sock"`)
			},
			want: []string{`unknown key "grpc.adress"`, "line 8"},
		},
		{
			name: "broken toml",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "[debug]", "[debug")
			},
			want: []string{"line 11"},
		},
		{
			name: "root under proc",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "root =", fmt.Sprintf("root = %q", procDir+"/root"))
			},
			want: []string{procDir},
		},
		{
			name: "root under a file",
			edit: func(t *testing.T, l *layout, good string) string {
				file := filepath.Join(l.Dir, "file")
				if err := os.WriteFile(file, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return replaceLine(t, good, "root =", fmt.Sprintf("root = %q", file+"/root"))
			},
			want: []string{"$DIR/file", "not a directory"},
		},
		{
			name: "state under proc",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "state =", fmt.Sprintf("state = %q", procDir))
			},
			want: []string{procDir},
		},
		{
			name: "socket in a missing directory",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "  address = "+fmt.Sprintf("%q", l.Socket),
					fmt.Sprintf("  address = %q", l.Dir+"/missing/c.sock"))
			},
			want: []string{"$DIR/missing"},
		},
		{
			name: "debug socket in a missing directory",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "  address = "+fmt.Sprintf("%q", l.DebugSocket),
					fmt.Sprintf("  address = %q", l.Dir+"/missing/d.sock"))
			},
			want: []string{"$DIR/missing"},
		},
		{
			name: "metrics address without a port",
			edit: func(t *testing.T, l *layout, good string) string {
				return replaceLine(t, good, "  address = "+fmt.Sprintf("%q", l.MetricsAddr),
					`  address = "localhost"`)
			},
			want: []string{"metrics", "localhost"},
		},
		{
			name: "bad plugin option",
			edit: func(t *testing.T, l *layout, good string) string {
				return good + "\n[plugins.bolt]\n  content_sharing_policy = \"nope\"\n"
			},
			want: []string{"plugins.bolt", "content_sharing_policy", `"nope"`},
		},
		{
			name: "missing config file",
			args: []string{"-c", "$DIR/missing.toml"},
			want: []string{"$DIR/missing.toml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLayout(t)
			args := []string{"-c", l.Config}
			if tt.edit != nil {
				text := tt.edit(t, l, l.configText(settings{}))
				if err := os.WriteFile(l.Config, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			} else {
				args = nil
				for _, a := range tt.args {
					args = append(args, strings.ReplaceAll(a, "$DIR", l.Dir))
				}
			}
			before := dirEntries(t, l.Dir)

			out := exitFailure(t, args...)
			t.Logf("message: %s", lastLine(out))
			for _, want := range tt.want {
				want = strings.ReplaceAll(want, "$DIR", l.Dir)
				if !strings.Contains(out, want) {
					t.Errorf("message does not name %q:\n%s", want, out)
				}
			}
			if diff := cmp.Diff(before, dirEntries(t, l.Dir)); diff != "" {
				t.Errorf("files in %s (-before +after):\n%s", l.Dir, diff)
			}
			if _, err := os.Stat(procDir); err == nil {
				t.Errorf("%s was created", procDir)
			}
		})
	}
}

// TestSecondDaemon starts a second daemon on the root or the state of a
// running one: it must fail at once, say why, create nothing of its own and
// leave the first serving.
func TestSecondDaemon(t *testing.T) {
	testkit.RequiresRoot(t)
	first := startDaemon(t, settings{})
	tests := []struct {
		name        string
		root, state bool // shared with the first daemon
		want        string
	}{
		{name: "same root and state", root: true, state: true, want: first.Root + " is in use"},
		{name: "same root", root: true, want: first.Root + " is in use"},
		{name: "same state", state: true, want: first.State + " is in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLayout(t)
			if tt.root {
				l.Root = first.Root
			}
			if tt.state {
				l.State = first.State
			}
			l.writeConfig(t, settings{})

			out := exitFailure(t, "-c", l.Config)
			t.Logf("message: %s", lastLine(out))
			if !strings.Contains(out, tt.want) {
				t.Errorf("message does not say %q:\n%s", tt.want, out)
			}
			if diff := cmp.Diff([]string{"config.toml"}, dirEntries(t, l.Dir)); diff != "" {
				t.Errorf("files in %s (-want +got):\n%s", l.Dir, diff)
			}
			mustRun(t, "/usr/bin/ctr", "--address", first.Socket, "namespaces", "ls")
			if _, err := os.Stat(first.Socket); err != nil {
				t.Errorf("first daemon's socket: %v", err)
			}
		})
	}
	if !first.running() {
		t.Fatalf("first daemon exited")
	}
}

// TestStaleSocket kills a daemon with SIGKILL, which leaves its socket file
// behind: its plugin process ends with it, and the next daemon on the same
// configuration replaces the socket and serves.
func TestStaleSocket(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	bolt := d.runningPlugin(t, boltID)
	d.kill(t)
	if _, err := os.Lstat(d.Socket); err != nil {
		t.Fatalf("socket after kill -9: %v; want the stale file left behind", err)
	}
	if !waitGone(bolt.Pid, 10*time.Second) {
		t.Errorf("bolt process %d still running 10s after its daemon was killed", bolt.Pid)
		syscall.Kill(bolt.Pid, syscall.SIGKILL)
	}

	next := startOn(t, d.layout)
	mustRun(t, "/usr/bin/ctr", "--address", next.Socket, "namespaces", "ls")
	next.runningPlugin(t, boltID)
}
