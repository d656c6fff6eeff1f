//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"corral.dev/pluginkit/testkit"
)

// ctrLeases returns the labels column of `ctr leases ls` by id ("-" for
// none).
func ctrLeases(t *testing.T, c ctrTool, d *daemon, ns string) map[string]string {
	t.Helper()
	out := c.ns(t, d, ns, "leases", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("%s leases ls: no header in %q", c.name, out)
	}
	rows := make(map[string]string)
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 2 {
			t.Fatalf("%s leases ls: short row %q", c.name, line)
		}
		rows[f[0]] = f[len(f)-1]
	}
	return rows
}

// serverLeaseID is the shape of the ids the server makes.
var serverLeaseID = regexp.MustCompile(`^[0-9]+-[A-Za-z0-9_-]{4}$`)

// TestLeasesCtr drives `ctr leases create / ls / rm` with both ctr
// versions: ids given and made by the server, labels, the expiry label,
// and the errors for an existing and a missing id.
func TestLeasesCtr(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))
			before := time.Now()
			if got := strings.TrimSpace(c.ns(t, d, ns, "leases", "create", "--id", "given", "k=v")); got != "given" {
				t.Errorf("leases create --id given printed %q, want given", got)
			}
			c.ns(t, d, ns, "leases", "create", "--id", "forever", "--expires", "0")
			made := strings.TrimSpace(c.ns(t, d, ns, "leases", "create"))
			if !serverLeaseID.MatchString(made) {
				t.Errorf("leases create without --id printed %q, want an id made by the server like 416665928-qPHK", made)
			}

			rows := ctrLeases(t, c, d, ns)
			ids := make([]string, 0, len(rows))
			for id := range rows {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			want := []string{"forever", "given", made}
			slices.Sort(want)
			if !slices.Equal(ids, want) {
				t.Fatalf("leases ls ids = %q, want %q", ids, want)
			}
			if got := rows["forever"]; got != "-" {
				t.Errorf("leases ls: forever labels %q, want none (--expires 0)", got)
			}
			labels := strings.Split(rows["given"], ",")
			slices.Sort(labels)
			if len(labels) != 2 || labels[1] != "k=v" || !strings.HasPrefix(labels[0], "containerd.io/gc.expire=") {
				t.Fatalf("leases ls: given labels %q, want containerd.io/gc.expire and k=v", rows["given"])
			}
			expire, err := time.Parse(time.RFC3339, strings.TrimPrefix(labels[0], "containerd.io/gc.expire="))
			if err != nil {
				t.Fatalf("leases ls: given: %v", err)
			}
			if d := expire.Sub(before); d < 23*time.Hour || d > 25*time.Hour {
				t.Errorf("leases ls: given expires %v after its creation, want the default 24h", d)
			}

			r := c.try(t, d, ns, "leases", "create", "--id", "given")
			if r.Err == nil || !strings.Contains(r.Stderr, "already exists") {
				t.Errorf("leases create of an existing id: err %v, stderr %q; want already exists", r.Err, r.Stderr)
			}
			out := c.ns(t, d, ns, "leases", "rm", "given", made)
			if got := strings.Fields(out); !slices.Equal(got, []string{"given", made}) {
				t.Errorf("leases rm printed %q, want given and %s", got, made)
			}
			c.ns(t, d, ns, "leases", "rm", "--sync", "forever")
			if rows := ctrLeases(t, c, d, ns); len(rows) != 0 {
				t.Errorf("leases ls after rm = %v, want none", rows)
			}
			r = c.try(t, d, ns, "leases", "rm", "given")
			if r.Err == nil || !strings.Contains(r.Stderr, "not found") {
				t.Errorf("leases rm of a missing id: err %v, stderr %q; want not found", r.Err, r.Stderr)
			}
		})
	}
}

// TestLeaseClientIDs creates leases with ids of the shape containerd's
// clients make up (nanoseconds, a dash and four base64 URL characters,
// which may be '-' or '_'): containerd stores any id, and ctr would fail
// an import now and then if one were refused.
func TestLeaseClientIDs(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	lm := newClient(t, d).LeasesService()
	ctx := nsContext(t, uniqueNS("ids"))
	for _, id := range []string{"174807730-6El_", "334530922-wgZ-", "12345-_x-y", "99--abc"} {
		l, err := lm.Create(ctx, leases.WithID(id))
		if err != nil {
			t.Errorf("Leases.Create(%q) = %v, want it stored as containerd does", id, err)
			continue
		}
		if err := lm.Delete(ctx, l); err != nil {
			t.Errorf("Leases.Delete(%q) = %v", id, err)
		}
	}
}

// gcNow makes the collector run: it removes a lease of its own with sync.
func gcNow(t *testing.T, c ctrTool, d *daemon, ns string) {
	t.Helper()
	id := fmt.Sprintf("gc-%d", time.Now().UnixNano())
	c.ns(t, d, ns, "leases", "create", "--id", id)
	c.ns(t, d, ns, "leases", "rm", "--sync", id)
}

// TestLeaseHoldsBlob writes a blob under a lease and one under none, and
// makes the collector run: the leased blob survives while the other is
// collected. The leased blob goes once the lease is removed with sync, or
// once it expires.
func TestLeaseHoldsBlob(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	cl := newClient(t, d)
	cs := cl.ContentStore()
	for _, c := range ctrTools(t) {
		for _, end := range []string{"rm", "expire"} {
			t.Run(c.name+"/"+end, func(t *testing.T) {
				ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))
				ctx := nsContext(t, ns)
				id := "hold-" + end
				expires := "0"
				if end == "expire" {
					expires = "2s"
				}
				// ctr writes the expiry in whole seconds: the lease ends
				// between one and two seconds after it is made.
				before := time.Now()
				c.ns(t, d, ns, "leases", "create", "--id", id, "--expires", expires)
				created := time.Now()

				held := writeBlob(t, leases.WithLease(ctx, id), cs, 64<<10)
				loose := writeBlob(t, ctx, cs, 64<<10)
				gcNow(t, c, d, ns)
				blobs := ctrContent(t, c, d, ns)
				if _, ok := blobs[held]; !ok {
					if end == "expire" && time.Since(before) >= time.Second {
						// A slow machine: the lease may have expired already.
						t.Skipf("the collection ran %v after the lease's creation, maybe past its expiry", time.Since(before))
					}
					t.Fatalf("after a collection the blob held by lease %s is gone", id)
				}
				if _, ok := blobs[loose]; ok {
					t.Errorf("after a collection the blob no lease holds is still listed")
				}
				if !slices.Contains(blobFiles(t, d), "sha256/"+held.Encoded()) {
					t.Errorf("blob file of %s missing while the lease holds it", held)
				}

				switch end {
				case "rm":
					c.ns(t, d, ns, "leases", "rm", "--sync", id)
				case "expire":
					time.Sleep(time.Until(created.Add(2 * time.Second)))
				}
				if !waitFor(10*time.Second, func() bool {
					_, ok := ctrContent(t, c, d, ns)[held]
					return !ok
				}) {
					t.Fatalf("blob %s still listed 10 s after its lease ended (%s)", held, end)
				}
				if _, err := cs.Info(ctx, held); !errdefs.IsNotFound(err) {
					t.Errorf("Info(%s) after its lease ended = %v, want NotFound", held, err)
				}
				if !waitFor(5*time.Second, func() bool {
					return !slices.Contains(blobFiles(t, d), "sha256/"+held.Encoded())
				}) {
					t.Errorf("blob file of %s still on disk after its lease ended", held)
				}
				if rows := ctrLeases(t, c, d, ns); len(rows) != 0 {
					t.Errorf("leases ls after the lease ended = %v, want none", rows)
				}
			})
		}
	}
}

// writeBlob writes n random bytes through the Go client and returns their
// digest.
func writeBlob(t *testing.T, ctx context.Context, cs content.Store, n int) digest.Digest {
	t.Helper()
	data, dgst := randomBlob(t, n)
	if err := content.WriteBlob(ctx, cs, "blob-"+dgst.Encoded()[:12], bytes.NewReader(data),
		ocispec.Descriptor{Digest: dgst, Size: int64(n)}); err != nil {
		t.Fatalf("write blob: %v", err)
	}
	return dgst
}
