//go:build linux

package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/opencontainers/go-digest"

	"corral.dev/pluginkit/testkit"
)

// TestImagesRmSyncCollects imports busybox from an OCI layout and from a
// docker archive with each ctr version, removes the images with --sync,
// and checks that nothing is left: `ctr content ls` is empty and no blob
// file is left on disk.
func TestImagesRmSyncCollects(t *testing.T) {
	testkit.RequiresRoot(t)
	ociTar := testkit.BusyboxImage(t)
	dockerTar := testkit.DockerArchive(t, ociTar)
	d := startDaemon(t, settings{})
	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))
			c.images(t, d, ns, "import", "--no-unpack", "--base-name", "busybox", ociTar)
			c.images(t, d, ns, "import", "--no-unpack", dockerTar)
			c.images(t, d, ns, "tag", "busybox:latest", "busybox:second")
			if len(ctrContent(t, c, d, ns)) == 0 || len(blobFiles(t, d)) == 0 {
				t.Fatalf("no content after the imports")
			}

			// Removing one of two names of an image keeps its blobs.
			c.ns(t, d, ns, "images", "rm", "--sync", "busybox:latest")
			if got := len(ctrContent(t, c, d, ns)); got == 0 {
				t.Fatalf("content ls empty while busybox:second still names the image")
			}

			c.ns(t, d, ns, "images", "rm", "--sync", "busybox:second", "docker.io/library/busybox:latest")
			if got := ctrContent(t, c, d, ns); len(got) != 0 {
				t.Errorf("content ls after images rm --sync of the last image = %v, want none", digests(got))
			}
			if files := blobFiles(t, d); len(files) != 0 {
				t.Errorf("blob files left after images rm --sync of the last image: %q", files)
			}
		})
	}
}

// TestCollectorGraph builds a graph of blobs with the Go client and makes
// the collector run: what a root holds stays, following
// containerd.io/gc.ref.content labels from images, containers, leases and
// blobs labelled containerd.io/gc.root, except below a flat lease's
// resources; the rest is collected, from the listing and from disk.
func TestCollectorGraph(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	cs := c.ContentStore()
	lm := c.LeasesService()
	ns := uniqueNS("graph")
	ctx := nsContext(t, ns)
	tool := ctrTools(t)[0]

	// Every blob is written under a lease of its own, removed at the end
	// of setup, so that no collection runs before the graph is whole.
	setup, setupLease := withLease(t, c, ctx)
	blob := func(name string) digest.Digest {
		t.Helper()
		dgst := writeBlob(t, setup, cs, 4<<10)
		t.Logf("%s = %s", name, dgst)
		return dgst
	}
	label := func(dgst digest.Digest, key, value string) {
		t.Helper()
		if _, err := cs.Update(ctx, content.Info{Digest: dgst, Labels: map[string]string{key: value}}, "labels."+key); err != nil {
			t.Fatalf("label %s %s=%s: %v", dgst, key, value, err)
		}
	}
	ref := func(from, to digest.Digest, name string) {
		t.Helper()
		label(from, "containerd.io/gc.ref.content."+name, to.String())
	}

	root, rootChild, rootGrandchild := blob("root"), blob("root child"), blob("root grandchild")
	label(root, "containerd.io/gc.root", time.Now().UTC().Format(time.RFC3339))
	ref(root, rootChild, "x")
	ref(rootChild, rootGrandchild, "m.0")

	manifest, config, layer := blob("manifest"), blob("config"), blob("layer")
	ref(manifest, config, "config")
	ref(manifest, layer, "l.0")
	img := testImage("graph:latest", manifest)
	img.Target.Size = 4 << 10
	if _, err := c.ImageService().Create(ctx, img); err != nil {
		t.Fatalf("create image: %v", err)
	}

	held := blob("held by a container")
	ctr := testContainer("graph")
	ctr.Labels = map[string]string{"containerd.io/gc.ref.content.x": held.String()}
	if _, err := c.ContainerService().Create(ctx, ctr); err != nil {
		t.Fatalf("create container: %v", err)
	}

	leased, leasedChild := blob("leased"), blob("leased child")
	ref(leased, leasedChild, "x")
	lease, err := lm.Create(ctx, leases.WithID("deep"))
	if err != nil {
		t.Fatal(err)
	}
	flat, err := lm.Create(ctx, leases.WithID("flat"), leases.WithLabel("containerd.io/gc.flat", time.Now().UTC().Format(time.RFC3339)))
	if err != nil {
		t.Fatal(err)
	}
	flatBlob, flatChild := blob("flat"), blob("flat child")
	ref(flatBlob, flatChild, "x")
	for _, lr := range []struct {
		l    leases.Lease
		dgst digest.Digest
	}{{lease, leased}, {flat, flatBlob}} {
		if err := lm.AddResource(ctx, lr.l, leases.Resource{ID: lr.dgst.String(), Type: "content"}); err != nil {
			t.Fatalf("add %s to lease %s: %v", lr.dgst, lr.l.ID, err)
		}
	}
	loose, looseChild := blob("loose"), blob("loose child")
	ref(loose, looseChild, "x")
	dangling := blob("refers to a missing blob")
	ref(root, dangling, "dangling")
	label(dangling, "containerd.io/gc.ref.content.missing", digest.FromString("missing").String())

	if err := lm.Delete(ctx, setupLease, leases.SynchronousDelete); err != nil {
		t.Fatalf("delete the setup lease: %v", err)
	}
	check := func(when string, kept, gone []digest.Digest) {
		t.Helper()
		listed := ctrContent(t, tool, d, ns)
		files := blobFiles(t, d)
		for _, k := range kept {
			if _, ok := listed[k]; !ok {
				t.Errorf("%s: %s collected, want it kept", when, k)
			}
			if !slices.Contains(files, "sha256/"+k.Encoded()) {
				t.Errorf("%s: file of %s gone, want it kept", when, k)
			}
		}
		for _, g := range gone {
			if _, ok := listed[g]; ok {
				t.Errorf("%s: %s kept, want it collected", when, g)
			}
			if slices.Contains(files, "sha256/"+g.Encoded()) {
				t.Errorf("%s: file of %s left on disk", when, g)
			}
		}
	}
	check("after the first collection",
		[]digest.Digest{root, rootChild, rootGrandchild, dangling, manifest, config, layer, held, leased, leasedChild, flatBlob},
		[]digest.Digest{flatChild, loose, looseChild})

	// Take the roots away one by one.
	if err := c.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()); err != nil {
		t.Fatalf("delete image: %v", err)
	}
	check("after the image's delete", []digest.Digest{root, held, leased}, []digest.Digest{manifest, config, layer})
	if err := c.ContainerService().Delete(ctx, ctr.ID); err != nil {
		t.Fatalf("delete container: %v", err)
	}
	if err := lm.Delete(ctx, lease, leases.SynchronousDelete); err != nil {
		t.Fatalf("delete lease: %v", err)
	}
	check("after the container's and the lease's delete", []digest.Digest{root, flatBlob}, []digest.Digest{held, leased, leasedChild})
	if err := lm.Delete(ctx, flat, leases.SynchronousDelete); err != nil {
		t.Fatalf("delete flat lease: %v", err)
	}
	label(root, "containerd.io/gc.root", "")
	gcNow(t, tool, d, ns)
	check("after the root label's removal", nil, []digest.Digest{root, rootChild, rootGrandchild, dangling, flatBlob})
	if got := ctrContent(t, tool, d, ns); len(got) != 0 {
		t.Errorf("content ls at the end = %v, want none", digests(got))
	}
}
