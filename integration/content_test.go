//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"corral.dev/pluginkit/contenttest"
	"corral.dev/pluginkit/testkit"
)

// contentDir is where content-svc keeps its files under a daemon's root.
const contentDir = "io.containerd.content.v1.content"

// ns runs ctr in namespace ns against d and returns its stdout, failing t
// if it fails.
func (c ctrTool) ns(t *testing.T, d *daemon, ns string, args ...string) string {
	t.Helper()
	r := c.try(t, d, ns, args...)
	if r.Err != nil {
		t.Fatalf("%s -n %s %s: %v\nstdout:\n%s\nstderr:\n%s",
			c.name, ns, strings.Join(args, " "), r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// try runs ctr in namespace ns against d and returns how it ended.
func (c ctrTool) try(t *testing.T, d *daemon, ns string, args ...string) result {
	t.Helper()
	return run(c.path, append([]string{"--address", d.Socket, "--namespace", ns}, args...)...)
}

// command returns ctr in namespace ns against d, not started.
func (c ctrTool) command(d *daemon, ns string, args ...string) *exec.Cmd {
	return exec.Command(c.path, append([]string{"--address", d.Socket, "--namespace", ns}, args...)...)
}

// randomBlob returns n random bytes and their digest.
func randomBlob(t *testing.T, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, digest.FromBytes(b)
}

// writeFile writes data to a new file in a temporary directory.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ctrContent returns the rows of `ctr content ls`: labels column by digest.
func ctrContent(t *testing.T, c ctrTool, d *daemon, ns string) map[digest.Digest]string {
	t.Helper()
	out := c.ns(t, d, ns, "content", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "DIGEST") {
		t.Fatalf("%s content ls: no header in %q", c.name, out)
	}
	rows := make(map[digest.Digest]string)
	for _, line := range lines[1:] {
		f := strings.Split(line, "\t")
		// ctr prints labels in map order.
		labels := strings.Split(strings.TrimSpace(f[len(f)-1]), ",")
		slices.Sort(labels)
		rows[digest.Digest(f[0])] = strings.Join(labels, ",")
	}
	return rows
}

// ctrActive returns the refs `ctr content active` lists.
func ctrActive(t *testing.T, c ctrTool, d *daemon, ns string) []string {
	t.Helper()
	out := c.ns(t, d, ns, "content", "active")
	var refs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 {
			refs = append(refs, f[0])
		}
	}
	return refs
}

// blobFiles lists the files under d's blobs directory.
func blobFiles(t *testing.T, d *daemon) []string {
	t.Helper()
	var files []string
	root := filepath.Join(d.Root, contentDir, "blobs")
	err := filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			files = append(files, strings.TrimPrefix(p, root+"/"))
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return files
}

// nsContext is a context in namespace ns that ends with t.
func nsContext(t *testing.T, ns string) context.Context {
	t.Helper()
	return namespaces.WithNamespace(clientContext(t), ns)
}

// withLease makes a lease in ctx's namespace, removed when t ends, and
// returns ctx carrying it, so that the collector leaves the blobs written
// under it alone.
func withLease(t *testing.T, c *client.Client, ctx context.Context) (context.Context, leases.Lease) {
	t.Helper()
	lm := c.LeasesService()
	l, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(time.Hour))
	if err != nil {
		t.Fatalf("create lease: %v", err)
	}
	t.Cleanup(func() {
		ctx := namespaces.WithNamespace(context.Background(), mustNamespace(t, ctx))
		lm.Delete(ctx, l)
	})
	return leases.WithLease(ctx, l.ID), l
}

func mustNamespace(t *testing.T, ctx context.Context) string {
	t.Helper()
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// readBlob reads all of blob dgst through the Go client.
func readBlob(t *testing.T, ctx context.Context, cs content.Store, dgst digest.Digest) []byte {
	t.Helper()
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		t.Fatalf("Info(%s): %v", dgst, err)
	}
	b, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: dgst, Size: info.Size})
	if err != nil {
		t.Fatalf("ReadBlob(%s): %v", dgst, err)
	}
	return b
}

// TestContentCtr drives `ctr content` with both ctr versions: ingest, ls,
// get, label, active and rm round-trip the bytes and labels; an ingest
// killed half way stays active and completes when resumed with its ref;
// a second writer on a ref waits for the first and then succeeds.
func TestContentCtr(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))
			t.Run("roundtrip", func(t *testing.T) { testCtrContentRoundTrip(t, c, d, ns) })
			t.Run("killed-ingest", func(t *testing.T) { testCtrIngestKilled(t, c, d, ns) })
			for _, first := range []string{"finishes", "killed"} {
				t.Run("two-writers-first-"+first, func(t *testing.T) {
					testCtrTwoWriters(t, c, d, ns, first == "killed")
				})
			}
		})
	}
}

func testCtrContentRoundTrip(t *testing.T, c ctrTool, d *daemon, ns string) {
	data, dgst := randomBlob(t, 3<<20+123)
	file := writeFile(t, "blob", data)
	ingest := c.command(d, ns, "content", "ingest",
		"--expected-size", fmt.Sprint(len(data)), "--expected-digest", dgst.String(), "roundtrip-"+ns)
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ingest.Stdin = f
	if out, err := ingest.CombinedOutput(); err != nil {
		t.Fatalf("%s content ingest: %v\n%s", c.name, err, out)
	}

	if labels, ok := ctrContent(t, c, d, ns)[dgst]; !ok || labels != "-" {
		t.Errorf("content ls after ingest: %s listed %v with labels %q, want listed with -", dgst, ok, labels)
	}
	if got := c.ns(t, d, ns, "content", "get", dgst.String()); got != string(data) {
		t.Errorf("content get %s: %d bytes, digest %s; want the %d ingested bytes",
			dgst, len(got), digest.FromString(got), len(data))
	}
	if refs := ctrActive(t, c, d, ns); len(refs) != 0 {
		t.Errorf("content active after a committed ingest = %q, want none", refs)
	}

	c.ns(t, d, ns, "content", "label", dgst.String(), "a=b", "c=d")
	if got := ctrContent(t, c, d, ns)[dgst]; got != "a=b,c=d" {
		t.Errorf("content ls after label a=b c=d: labels %q, want %q", got, "a=b,c=d")
	}
	c.ns(t, d, ns, "content", "label", dgst.String(), "a=")
	if got := strings.TrimSpace(c.ns(t, d, ns, "content", "label", dgst.String())); got != "c=d" {
		t.Errorf("content label %s (show) after a= = %q, want %q", dgst, got, "c=d")
	}

	// Another namespace does not see the blob.
	if _, ok := ctrContent(t, c, d, ns+"-other")[dgst]; ok {
		t.Errorf("content ls in another namespace lists %s", dgst)
	}
	if r := c.try(t, d, ns+"-other", "content", "get", dgst.String()); r.Err == nil || !strings.Contains(r.Stderr, "not found") {
		t.Errorf("content get in another namespace: err %v, stderr %q; want not found", r.Err, r.Stderr)
	}

	out := c.ns(t, d, ns, "content", "rm", dgst.String())
	if strings.TrimSpace(out) != dgst.String() {
		t.Errorf("content rm printed %q, want %s", out, dgst)
	}
	if _, ok := ctrContent(t, c, d, ns)[dgst]; ok {
		t.Errorf("content ls after rm still lists %s", dgst)
	}
	// A missing blob is no error for ctr.
	c.ns(t, d, ns, "content", "rm", dgst.String())
}

// ingestProcess is a `ctr content ingest` fed through a pipe.
type ingestProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer
	done  chan error
}

// startIngest starts `ctr content ingest` of a blob of size and dgst under
// ref, reading from a pipe; the process is killed by pid when t ends.
func startIngest(t *testing.T, c ctrTool, d *daemon, ns, ref string, size int, dgst digest.Digest) *ingestProcess {
	t.Helper()
	return startCtrIngest(t, c, d, ns, ref, size, dgst, nil)
}

// startFileIngest starts `ctr content ingest` reading file, which ctr can
// seek to resume.
func startFileIngest(t *testing.T, c ctrTool, d *daemon, ns, ref, file string, size int, dgst digest.Digest) *ingestProcess {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return startCtrIngest(t, c, d, ns, ref, size, dgst, f)
}

// startCtrIngest starts `ctr content ingest` reading stdin, or a pipe when
// stdin is nil.
func startCtrIngest(t *testing.T, c ctrTool, d *daemon, ns, ref string, size int, dgst digest.Digest, stdin *os.File) *ingestProcess {
	t.Helper()
	p := &ingestProcess{out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = c.command(d, ns, "content", "ingest",
		"--expected-size", fmt.Sprint(size), "--expected-digest", dgst.String(), ref)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if stdin != nil {
		p.cmd.Stdin = stdin
	} else {
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		p.done <- <-p.done
	})
	return p
}

// wait waits for the process to exit and returns how it ended.
func (p *ingestProcess) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(cmdTimeout):
		t.Fatalf("ctr content ingest still running after %v:\n%s", cmdTimeout, p.out)
		return nil
	}
}

// kill kills the process by pid and waits for it.
func (p *ingestProcess) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill ctr %d: %v", p.cmd.Process.Pid, err)
	}
	p.wait(t)
}

// waitOffset waits until ingest ref in ns stands at offset, as the Go
// client's ListStatuses shows it.
func waitOffset(t *testing.T, cs content.Store, ns, ref string, offset int64) {
	t.Helper()
	ctx := nsContext(t, ns)
	var last []content.Status
	if !waitFor(cmdTimeout, func() bool {
		st, err := cs.ListStatuses(ctx)
		if err != nil {
			t.Fatalf("ListStatuses: %v", err)
		}
		last = st
		for _, s := range st {
			if s.Ref == ref && s.Offset == offset {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("ingest %s never stood at offset %d; statuses %+v", ref, offset, last)
	}
}

// chunk is the size of the writes ctr makes (it fills a 1 MiB buffer
// before each).
const chunk = 1 << 20

func testCtrIngestKilled(t *testing.T, c ctrTool, d *daemon, ns string) {
	cs := newClient(t, d).ContentStore()
	data, dgst := randomBlob(t, 5*chunk)
	ref := "killed-" + ns
	p := startIngest(t, c, d, ns, ref, len(data), dgst)
	// Two and a half chunks: ctr sends two and waits for the rest.
	if _, err := p.stdin.Write(data[:2*chunk+chunk/2]); err != nil {
		t.Fatalf("feed ctr: %v", err)
	}
	waitOffset(t, cs, ns, ref, 2*chunk)
	p.kill(t)

	if refs := ctrActive(t, c, d, ns); !slices.Contains(refs, ref) {
		t.Fatalf("content active after the kill = %q, want %s", refs, ref)
	}
	waitOffset(t, cs, ns, ref, 2*chunk)
	if _, ok := ctrContent(t, c, d, ns)[dgst]; ok {
		t.Fatalf("content ls lists %s after a killed half ingest", dgst)
	}

	// Resume from a file whose first two chunks are zeros: only a writer
	// that resumes at offset 2 MiB, keeping the bytes sent before the
	// kill, can commit the expected digest.
	resume := bytes.Clone(data)
	clear(resume[:2*chunk])
	r := startFileIngest(t, c, d, ns, ref, writeFile(t, "resume", resume), len(data), dgst)
	if err := r.wait(t); err != nil {
		t.Fatalf("resumed %s content ingest: %v\n%s", c.name, err, r.out)
	}
	if got := c.ns(t, d, ns, "content", "get", dgst.String()); got != string(data) {
		t.Errorf("content get after the resumed ingest: %d bytes, %s; want %s", len(got), digest.FromString(got), dgst)
	}
	if refs := ctrActive(t, c, d, ns); slices.Contains(refs, ref) {
		t.Errorf("content active after the resumed ingest still lists %s", ref)
	}
}

// testCtrTwoWriters starts one ingest, stops it half way and starts a
// second on the same ref, which must wait while the first holds the ref.
// The first then finishes or is killed; the second must succeed either way.
func testCtrTwoWriters(t *testing.T, c ctrTool, d *daemon, ns string, killFirst bool) {
	cs := newClient(t, d).ContentStore()
	data, dgst := randomBlob(t, 4*chunk)
	ref := fmt.Sprintf("two-%v-%s", killFirst, ns)
	first := startIngest(t, c, d, ns, ref, len(data), dgst)
	if _, err := first.stdin.Write(data[:chunk+chunk/2]); err != nil {
		t.Fatalf("feed first ctr: %v", err)
	}
	waitOffset(t, cs, ns, ref, chunk)

	second := startFileIngest(t, c, d, ns, ref, writeFile(t, "blob", data), len(data), dgst)
	time.Sleep(time.Second)
	select {
	case err := <-second.done:
		second.done <- err
		t.Fatalf("second ingest on a held ref ended (%v) while the first held it:\n%s", err, second.out)
	default:
	}
	waitOffset(t, cs, ns, ref, chunk)

	if killFirst {
		first.kill(t)
	} else {
		if _, err := first.stdin.Write(data[chunk+chunk/2:]); err != nil {
			t.Fatalf("feed first ctr: %v", err)
		}
		first.stdin.Close()
		if err := first.wait(t); err != nil {
			t.Fatalf("first ingest: %v\n%s", err, first.out)
		}
	}
	if err := second.wait(t); err != nil {
		t.Fatalf("second ingest after the first ended: %v\n%s", err, second.out)
	}
	if got := c.ns(t, d, ns, "content", "get", dgst.String()); got != string(data) {
		t.Errorf("content get: %d bytes, %s; want %s", len(got), digest.FromString(got), dgst)
	}
	if refs := ctrActive(t, c, d, ns); slices.Contains(refs, ref) {
		t.Errorf("content active after both ingests still lists %s", ref)
	}
}

// TestContentConformance runs the Content conformance suite against the
// daemon's public socket, in a namespace under a lease, with each sharing
// policy.
func TestContentConformance(t *testing.T) {
	testkit.RequiresRoot(t)
	for _, policy := range []string{"shared", "isolated"} {
		t.Run(policy, func(t *testing.T) {
			d := startDaemon(t, sharingSettings(policy))
			c := newClient(t, d)
			ctx, _ := withLease(t, c, nsContext(t, uniqueNS("conformance")))
			cc := contentapi.NewContentClient(c.Conn().(grpc.ClientConnInterface))
			contenttest.Run(t, func(*testing.T) contentapi.ContentClient { return cc }, func() context.Context { return ctx })
		})
	}
}

// TestContentLargeReads reads a blob in calls too large for the metadata
// plugin's read-ahead, which it hands over to the content plugin after
// checking the namespace: the bytes are right, and a namespace without the
// blob gets NotFound, not the bytes.
func TestContentLargeReads(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	ctx, _ := withLease(t, c, nsContext(t, uniqueNS("largeread")))
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i*31 + i>>12)
	}
	dgst := digest.FromBytes(data)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: int64(len(data))}
	if err := content.WriteBlob(ctx, c.ContentStore(), "largeread", bytes.NewReader(data), desc); err != nil {
		t.Fatalf("WriteBlob: %v", err)
	}
	for _, tt := range []struct{ offset, size int64 }{
		{0, 0}, {1<<20 + 7, 3 << 19}, {int64(len(data)) - 300<<10, 1 << 30},
	} {
		got, err := rawRead(ctx, c, &contentapi.ReadContentRequest{Digest: dgst.String(), Offset: tt.offset, Size: tt.size})
		end := int64(len(data))
		if tt.size > 0 && tt.offset+tt.size < end {
			end = tt.offset + tt.size
		}
		if err != nil || !bytes.Equal(got, data[tt.offset:end]) {
			t.Errorf("Read(%d, %d) = %d bytes, %v; want the %d bytes there", tt.offset, tt.size, len(got), err, end-tt.offset)
		}
	}
	other := nsContext(t, uniqueNS("largeread-other"))
	if got, err := rawRead(other, c, &contentapi.ReadContentRequest{Digest: dgst.String()}); !errdefs.IsNotFound(err) {
		t.Errorf("Read in another namespace = %d bytes, %v; want NotFound", len(got), err)
	}
}

// sharingSettings configures the content sharing policy.
func sharingSettings(policy string) settings {
	return settings{Extra: fmt.Sprintf(`
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = %q
`, policy)}
}

// TestContentSharingPolicy writes a blob in one namespace and opens a
// writer for it in another: with "shared" the second namespace adopts the
// blob without sending a byte (AlreadyExists on open), with "isolated" it
// must send the bytes, and then its commit succeeds. ctr ingests of the
// known blob with no input succeed or fail to match, and imports of one
// image in two namespaces work under both policies.
func TestContentSharingPolicy(t *testing.T) {
	testkit.RequiresRoot(t)
	ociTar := testkit.BusyboxImage(t)
	for _, policy := range []string{"shared", "isolated"} {
		t.Run(policy, func(t *testing.T) {
			d := startDaemon(t, sharingSettings(policy))
			c := newClient(t, d)
			cs := c.ContentStore()
			ctx1, _ := withLease(t, c, nsContext(t, uniqueNS("one")))
			ctx2, _ := withLease(t, c, nsContext(t, uniqueNS("two")))
			data, dgst := randomBlob(t, 1<<20+7)
			desc := ocispec.Descriptor{Digest: dgst, Size: int64(len(data))}
			if err := content.WriteBlob(ctx1, cs, "first", bytes.NewReader(data), desc); err != nil {
				t.Fatalf("write in the first namespace: %v", err)
			}
			if _, err := cs.Info(ctx2, dgst); !errdefs.IsNotFound(err) {
				t.Fatalf("Info in the second namespace before any write = %v, want NotFound", err)
			}

			w, err := content.OpenWriter(ctx2, cs, content.WithRef("second"), content.WithDescriptor(desc))
			switch policy {
			case "shared":
				if !errdefs.IsAlreadyExists(err) {
					if w != nil {
						w.Close()
					}
					t.Fatalf("OpenWriter in the second namespace = %v, want AlreadyExists (adopted)", err)
				}
			case "isolated":
				if err != nil {
					t.Fatalf("OpenWriter in the second namespace: %v, want a writer", err)
				}
				st, err := w.Status()
				if err != nil {
					t.Fatalf("Status: %v", err)
				}
				if st.Offset != 0 {
					t.Errorf("Status().Offset = %d, want 0", st.Offset)
				}
				// Committing without the bytes must fail, and commit nothing.
				if err := w.Commit(ctx2, desc.Size, dgst); !errdefs.IsFailedPrecondition(err) {
					t.Errorf("Commit without bytes = %v, want FailedPrecondition", err)
				}
				w.Close()
				if _, err := cs.Info(ctx2, dgst); !errdefs.IsNotFound(err) {
					t.Errorf("Info after a failed commit = %v, want NotFound", err)
				}
				if err := content.WriteBlob(ctx2, cs, "second", bytes.NewReader(data), desc); err != nil {
					t.Fatalf("write with the bytes in the second namespace: %v", err)
				}
			}
			info, err := cs.Info(ctx2, dgst)
			if err != nil || info.Size != desc.Size {
				t.Fatalf("Info in the second namespace = %+v, %v; want size %d", info, err, desc.Size)
			}
			if got := readBlob(t, ctx2, cs, dgst); !bytes.Equal(got, data) {
				t.Errorf("read in the second namespace: %d bytes, %s; want %s", len(got), digest.FromBytes(got), dgst)
			}
			if files := blobFiles(t, d); len(files) != 1 {
				t.Errorf("blob files %q, want one", files)
			}

			// ctr ingests with no bytes at all: with "shared" the blob is
			// adopted and ctr succeeds; with "isolated" ctr runs out of
			// input and nothing is committed.
			for _, tool := range ctrTools(t) {
				ns := uniqueNS(strings.ReplaceAll(tool.name, ".", ""))
				ctx, _ := withLease(t, c, nsContext(t, ns))
				ingest := tool.command(d, ns, "content", "ingest",
					"--expected-size", fmt.Sprint(len(data)), "--expected-digest", dgst.String(), "adopt")
				out, err := ingest.CombinedOutput() // stdin is /dev/null
				_, infoErr := cs.Info(ctx, dgst)
				switch policy {
				case "shared":
					if err != nil || infoErr != nil {
						t.Errorf("%s content ingest of a known blob with no input: %v, then Info: %v; want both to succeed\n%s",
							tool.name, err, infoErr, out)
					}
				case "isolated":
					if err == nil || !errdefs.IsNotFound(infoErr) {
						t.Errorf("%s content ingest of a known blob with no input: %v, then Info: %v; want a failure and NotFound\n%s",
							tool.name, err, infoErr, out)
					}
				}
			}

			// The same image imported in two namespaces, by each ctr: both
			// list it whole, and its blobs are on disk once.
			index, blobs := tarIndex(t, ociTar)
			for _, tool := range ctrTools(t) {
				var nss []string
				for i := range 2 {
					ns := uniqueNS(fmt.Sprintf("%s-%d", strings.ReplaceAll(tool.name, ".", ""), i))
					nss = append(nss, ns)
					tool.images(t, d, ns, "import", "--no-unpack", "--base-name", "busybox", ociTar)
				}
				for _, ns := range nss {
					if got := ctrImages(t, tool, d, ns)["busybox:latest"].Digest; got != index.Manifests[0].Digest {
						t.Errorf("%s images ls in %s: busybox:latest digest %q, want %s", tool.name, ns, got, index.Manifests[0].Digest)
					}
					waitContent(t, tool, d, ns, blobs, "in "+ns)
				}
			}
			files := blobFiles(t, d)
			for _, b := range blobs {
				if !slices.Contains(files, "sha256/"+b.Encoded()) {
					t.Errorf("blob file %s missing", b)
				}
			}
			if len(files) != len(blobs)+1 {
				t.Errorf("blob files %q, want the image's %d and the test blob", files, len(blobs))
			}
		})
	}
}

// TestContentWriterLock holds a ref with one Go client writer: a plain
// Writer on the same ref answers Unavailable, and content.OpenWriter, which
// tries again on Unavailable, waits until the first writer's stream ends
// and then resumes at its offset.
func TestContentWriterLock(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	cs := c.ContentStore()
	ctx, _ := withLease(t, c, nsContext(t, uniqueNS("lock")))
	data, dgst := randomBlob(t, 2*chunk)
	desc := ocispec.Descriptor{Digest: dgst, Size: int64(len(data))}
	const ref = "locked"

	first, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
	if err != nil {
		t.Fatalf("first writer: %v", err)
	}
	if _, err := first.Write(data[:chunk]); err != nil {
		t.Fatalf("first write: %v", err)
	}
	if w, err := cs.Writer(ctx, content.WithRef(ref), content.WithDescriptor(desc)); !errdefs.IsUnavailable(err) {
		if w != nil {
			w.Close()
		}
		t.Fatalf("second Writer on a held ref = %v (%s), want Unavailable", err, errClass(err))
	}

	type opened struct {
		w   content.Writer
		err error
	}
	second := make(chan opened, 1)
	go func() {
		w, err := content.OpenWriter(ctx, cs, content.WithRef(ref), content.WithDescriptor(desc))
		second <- opened{w, err}
	}()
	select {
	case o := <-second:
		if o.w != nil {
			o.w.Close()
		}
		t.Fatalf("OpenWriter on a held ref returned (%v) while the first writer held it", o.err)
	case <-time.After(time.Second):
	}
	if err := first.Close(); err != nil {
		t.Fatalf("close the first writer: %v", err)
	}
	var o opened
	select {
	case o = <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("OpenWriter still waiting 10 s after the first writer closed")
	}
	if o.err != nil {
		t.Fatalf("OpenWriter after the first writer closed: %v", o.err)
	}
	defer o.w.Close()
	st, err := o.w.Status()
	if err != nil || st.Offset != chunk {
		t.Fatalf("second writer's Status = %+v, %v; want offset %d", st, err, chunk)
	}
	if _, err := o.w.Write(data[chunk:]); err != nil {
		t.Fatalf("second write: %v", err)
	}
	if err := o.w.Commit(ctx, desc.Size, dgst); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if got := readBlob(t, ctx, cs, dgst); !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %s; want %s", len(got), digest.FromBytes(got), dgst)
	}
}
