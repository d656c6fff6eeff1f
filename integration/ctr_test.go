//go:build linux

package integration

import (
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

// ctrTool is one ctr binary the daemon must serve.
type ctrTool struct {
	name    string
	path    string
	version string // what `ctr --version` must print
}

// ctrTools returns Debian's ctr 1.6.20 and ctr 2.4.2, from $CORRAL_CTR2 or
// else $(go env GOPATH)/bin/ctr, failing t when either is missing or is
// another version: CI installs both.
func ctrTools(t *testing.T) []ctrTool {
	t.Helper()
	ctr2 := os.Getenv("CORRAL_CTR2")
	if ctr2 == "" {
		gopath := strings.TrimSpace(mustRun(t, "go", "env", "GOPATH"))
		ctr2 = filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "bin", "ctr")
	}
	tools := []ctrTool{
		{name: "ctr-1.6", path: "/usr/bin/ctr", version: "1.6.20"},
		{name: "ctr-2.4", path: ctr2, version: "2.4.2"},
	}
	for _, c := range tools {
		r := run(c.path, "--version")
		if r.Err != nil {
			t.Fatalf("%s --version: %v (install ctr %s there)\n%s", c.path, r.Err, c.version, r.Stderr)
		}
		if !strings.Contains(r.Stdout, " "+c.version) {
			t.Fatalf("%s --version = %q, want ctr %s", c.path, strings.TrimSpace(r.Stdout), c.version)
		}
	}
	return tools
}

// run runs ctr against d and returns its stdout, failing t if it fails.
func (c ctrTool) run(t *testing.T, d *daemon, args ...string) string {
	t.Helper()
	return mustRun(t, c.path, append([]string{"--address", d.Socket}, args...)...)
}

// serverVersion is the version the binary under test reports.
func serverVersion(t *testing.T) string {
	t.Helper()
	// "containerd corral.dev 0.1.0-dev <revision>"
	f := strings.Fields(mustRun(t, containerdBin, "--version"))
	if len(f) < 3 {
		t.Fatalf("containerd --version: unexpected output %q", f)
	}
	return f[2]
}

// uniqueNS returns a namespace name no other test uses.
func uniqueNS(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano())
}

// TestCtr drives the daemon with both ctr versions: version, plugins ls,
// namespaces create/ls/label/rm, events and pprof.
func TestCtr(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	version := serverVersion(t)
	uuid, err := os.ReadFile(filepath.Join(d.Root, "io.containerd.grpc.v1.introspection", "uuid"))
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Run("version", func(t *testing.T) {
				out := c.run(t, d, "version")
				_, server, ok := strings.Cut(out, "Server:")
				if !ok {
					t.Fatalf("ctr version: no Server section in\n%s", out)
				}
				for _, want := range []string{"Version:  " + version, "UUID: " + strings.TrimSpace(string(uuid))} {
					if !strings.Contains(server, want) {
						t.Errorf("ctr version: server section lacks %q:\n%s", want, server)
					}
				}
			})
			t.Run("plugins", func(t *testing.T) {
				testCtrPlugins(t, c, d)
			})
			t.Run("namespaces", func(t *testing.T) {
				testCtrNamespaces(t, c, d)
			})
			t.Run("pprof", func(t *testing.T) {
				out := c.run(t, d, "pprof", "--debug-socket", d.DebugSocket, "goroutines")
				if !strings.Contains(out, "goroutine ") || !strings.Contains(out, "runtime/pprof.") {
					t.Errorf("ctr pprof goroutines: no goroutine dump in %.300q", out)
				}
			})
		})
	}
}

// testCtrPlugins checks that ctr plugins ls shows bolt ok.
func testCtrPlugins(t *testing.T, c ctrTool, d *daemon) {
	t.Helper()
	rows := ctrPlugins(t, c, d)
	want := []string{"io.containerd.metadata.v1", boltID, "-", "ok"}
	if diff := cmp.Diff(want, rows[boltID]); diff != "" {
		t.Errorf("ctr plugins ls: bolt row (-want +got):\n%s", diff)
	}
}

// ctrPlugins returns the rows of `ctr plugins ls` by plugin id.
func ctrPlugins(t *testing.T, c ctrTool, d *daemon) map[string][]string {
	t.Helper()
	rows := make(map[string][]string)
	for _, line := range strings.Split(c.run(t, d, "plugins", "ls"), "\n")[1:] {
		if f := strings.Fields(line); len(f) == 4 {
			rows[f[1]] = f
		}
	}
	return rows
}

// testCtrNamespaces runs the namespace commands with ctr events watching,
// and checks what each prints and which events ctr events shows.
func testCtrNamespaces(t *testing.T, c ctrTool, d *daemon) {
	t.Helper()
	events := startCtrEvents(t, c, d)
	ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))

	c.run(t, d, "namespaces", "create", ns, "k=v", "a=b")
	if got := ctrNamespaces(t, c, d)[ns]; got != "a=b,k=v" {
		t.Errorf("after create: ctr namespaces ls shows %s with labels %q, want %q", ns, got, "a=b,k=v")
	}
	r := run(c.path, "--address", d.Socket, "namespaces", "create", ns)
	if r.Err == nil || !strings.Contains(r.Stderr, fmt.Sprintf("namespace %q: already exists", ns)) {
		t.Errorf("second create: err %v, stderr %q; want a failure saying it already exists", r.Err, r.Stderr)
	}

	c.run(t, d, "namespaces", "label", ns, "k=w")
	c.run(t, d, "namespaces", "label", ns, "a=")
	if got := ctrNamespaces(t, c, d)[ns]; got != "k=w" {
		t.Errorf("after label: ctr namespaces ls shows %s with labels %q, want %q", ns, got, "k=w")
	}

	missing := ns + "-missing"
	out := c.run(t, d, "namespaces", "rm", ns, missing)
	if diff := cmp.Diff([]string{ns, missing}, strings.Fields(out)); diff != "" {
		t.Errorf("ctr namespaces rm: printed (-want +got):\n%s", diff)
	}
	if _, ok := ctrNamespaces(t, c, d)[ns]; ok {
		t.Errorf("after rm: ctr namespaces ls still shows %s", ns)
	}

	want := []string{
		ns + " /namespaces/create " + fmt.Sprintf(`{"name":%q,"labels":{"a":"b","k":"v"}}`, ns),
		ns + " /namespaces/update " + fmt.Sprintf(`{"name":%q,"labels":{"a":"b","k":"w"}}`, ns),
		ns + " /namespaces/update " + fmt.Sprintf(`{"name":%q,"labels":{"k":"w"}}`, ns),
		ns + " /namespaces/delete " + fmt.Sprintf(`{"name":%q}`, ns),
	}
	got := events.lines(t, ns, len(want))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ctr events for %s (-want +got):\n%s", ns, diff)
	}
}

// ctrNamespaces returns the labels column of `ctr namespaces ls` by name.
func ctrNamespaces(t *testing.T, c ctrTool, d *daemon) map[string]string {
	t.Helper()
	out := c.run(t, d, "namespaces", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if f := strings.Fields(lines[0]); len(f) != 2 || f[0] != "NAME" || f[1] != "LABELS" {
		t.Fatalf("ctr namespaces ls: header %q", lines[0])
	}
	nss := make(map[string]string)
	for _, line := range lines[1:] {
		f := append(strings.Fields(line), "")
		nss[f[0]] = f[1]
	}
	return nss
}

// ctrEvents is a `ctr events` process running in the background.
type ctrEvents struct {
	out *syncBuffer
}

// startCtrEvents starts `ctr events`, waits until it receives events, and
// kills it by pid when t ends.
func startCtrEvents(t *testing.T, c ctrTool, d *daemon) *ctrEvents {
	t.Helper()
	e := &ctrEvents{out: &syncBuffer{}}
	cmd := exec.Command(c.path, "--address", d.Socket, "events")
	cmd.Stdout = e.out
	cmd.Stderr = e.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})

	// The subscription is made some time after the process starts: publish
	// probe events until one arrives.
	probe := uniqueNS("probe")
	if !waitFor(10*time.Second, func() bool {
		c.run(t, d, "namespaces", "create", probe)
		c.run(t, d, "namespaces", "rm", probe)
		return strings.Contains(e.out.String(), " "+probe+" ")
	}) {
		t.Fatalf("ctr events received nothing in 10s:\n%s", e.out)
	}
	return e
}

// lines waits for n event lines about namespace ns and returns them
// without their timestamps.
func (e *ctrEvents) lines(t *testing.T, ns string, n int) []string {
	t.Helper()
	var got []string
	waitFor(5*time.Second, func() bool {
		got = got[:0]
		for _, line := range strings.Split(e.out.String(), "\n") {
			// "2026-12-03 18:03:00.17442015 +0000 UTC ns /topic {json}"
			if _, rest, ok := strings.Cut(line, " UTC "); ok && strings.HasPrefix(rest, ns+" ") {
				got = append(got, rest)
			}
		}
		return len(got) >= n
	})
	return got
}
