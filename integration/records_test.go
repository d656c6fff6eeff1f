//go:build linux

package integration

import (
	"maps"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/anypb"

	"corral.dev/pluginkit/testkit"
)

// TestImageRecords drives the image store through the Go client: Create,
// Get, List, every Update field path, an empty mask that replaces the
// record, and the errors for an existing or a missing name.
func TestImageRecords(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	is := newClient(t, d).ImageService()
	ctx := nsContext(t, uniqueNS("images"))

	img := testImage("records:latest", digest.FromString("one"))
	img.Target.Annotations = map[string]string{"an": "1"}
	created, err := is.Create(ctx, img)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if created.CreatedAt.IsZero() || !created.CreatedAt.Equal(created.UpdatedAt) {
		t.Errorf("Create: created %v, updated %v; want both set and equal", created.CreatedAt, created.UpdatedAt)
	}
	if _, err := is.Create(ctx, img); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Create = %v (%s), want AlreadyExists", err, errClass(err))
	}
	ignoreTimes := cmpopts.IgnoreFields(images.Image{}, "CreatedAt", "UpdatedAt")
	want := img
	get := func(when string) {
		t.Helper()
		got, err := is.Get(ctx, img.Name)
		if err != nil {
			t.Fatalf("%s: Get: %v", when, err)
		}
		if diff := cmp.Diff(want, got, ignoreTimes, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: Get (-want +got):\n%s", when, diff)
		}
		if !got.CreatedAt.Equal(created.CreatedAt) {
			t.Errorf("%s: CreatedAt %v, want %v from Create", when, got.CreatedAt, created.CreatedAt)
		}
	}
	get("after Create")

	update := func(what string, in images.Image, paths ...string) {
		t.Helper()
		time.Sleep(time.Millisecond)
		got, err := is.Update(ctx, in, paths...)
		if err != nil {
			t.Fatalf("Update %s: %v", what, err)
		}
		if diff := cmp.Diff(want, got, ignoreTimes, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("Update %s answered (-want +got):\n%s", what, diff)
		}
		if !got.UpdatedAt.After(created.UpdatedAt) {
			t.Errorf("Update %s: UpdatedAt %v not after %v", what, got.UpdatedAt, created.UpdatedAt)
		}
		get("after Update " + what)
	}

	in := img
	in.Labels = map[string]string{"k": "w", "other": "x"}
	in.Target.Digest = digest.FromString("ignored")
	want.Labels = map[string]string{"k": "w"}
	update("labels.k", in, "labels.k")

	want.Labels = map[string]string{"k": "w", "other": "x"}
	update("labels", in, "labels")

	in.Labels = nil
	want.Labels = map[string]string{"k": "w"}
	update("labels.other removed", in, "labels.other")

	in.Target = img.Target
	in.Target.Annotations = map[string]string{"an": "2", "bn": "3"}
	want.Target.Annotations = map[string]string{"an": "2"}
	update("annotations.an", in, "annotations.an")
	want.Target.Annotations = map[string]string{"an": "2", "bn": "3"}
	update("annotations", in, "annotations")

	in.Target = testImage("", digest.FromString("two")).Target
	want.Target = in.Target
	update("target", in, "target")

	// An empty mask replaces the whole record, as a second pull does.
	in = testImage(img.Name, digest.FromString("three"))
	in.Labels = map[string]string{"only": "this"}
	want = in
	update("with an empty mask", in)

	list, err := is.List(ctx)
	if err != nil || len(list) != 1 || list[0].Name != img.Name {
		t.Errorf("List = %v, %v; want only %s", list, err, img.Name)
	}
	if err := is.Delete(ctx, img.Name); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := is.Get(ctx, img.Name); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete = %v (%s), want NotFound", err, errClass(err))
	}
	if err := is.Delete(ctx, img.Name); !errdefs.IsNotFound(err) {
		t.Errorf("second Delete = %v (%s), want NotFound", err, errClass(err))
	}
}

// TestContainerRecords drives the container store through the Go client:
// Create, Get, List (over ListStream), every Update field path, and the
// errors for an existing or a missing id.
func TestContainerRecords(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	cs := newClient(t, d).ContainerService()
	ctx := nsContext(t, uniqueNS("containers"))

	ctr := testContainer("records")
	ctr.Snapshotter = "overlayfs"
	ctr.SnapshotKey = "records-key"
	ctr.Extensions = map[string]typeurlAny{"ext": &anypb.Any{TypeUrl: "example.com/ext", Value: []byte("1")}}
	if _, err := cs.Create(ctx, ctr); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := cs.Create(ctx, ctr); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Create = %v (%s), want AlreadyExists", err, errClass(err))
	}
	want := ctr
	opts := []cmp.Option{
		cmpopts.IgnoreFields(containers.Container{}, "CreatedAt", "UpdatedAt"),
		cmpopts.EquateEmpty(),
		// The client turns an absent Any into a typed nil.
		cmp.Comparer(func(a, b typeurlAny) bool { return anyText(a) == anyText(b) }),
	}
	get := func(when string) {
		t.Helper()
		got, err := cs.Get(ctx, ctr.ID)
		if err != nil {
			t.Fatalf("%s: Get: %v", when, err)
		}
		if diff := cmp.Diff(want, got, opts...); diff != "" {
			t.Errorf("%s: Get (-want +got):\n%s", when, diff)
		}
	}
	get("after Create")

	update := func(what string, in containers.Container, paths ...string) {
		t.Helper()
		got, err := cs.Update(ctx, in, paths...)
		if err != nil {
			t.Fatalf("Update %s: %v", what, err)
		}
		if diff := cmp.Diff(want, got, opts...); diff != "" {
			t.Errorf("Update %s answered (-want +got):\n%s", what, diff)
		}
		get("after Update " + what)
	}
	in := ctr
	in.Labels = map[string]string{"k": "w", "new": "n"}
	in.Image = "other:latest"
	want.Labels = map[string]string{"k": "w"}
	update("labels.k", in, "labels.k")
	want.Labels = maps.Clone(in.Labels)
	update("labels", in, "labels")
	want.Image = in.Image
	update("image", in, "image")
	in.Spec = &anypb.Any{TypeUrl: testSpec().TypeUrl, Value: []byte(`{"ociVersion":"1.2.1"}`)}
	want.Spec = in.Spec
	update("spec", in, "spec")
	in.SnapshotKey = "other-key"
	want.SnapshotKey = in.SnapshotKey
	update("snapshotkey", in, "snapshotkey")
	in.Extensions = map[string]typeurlAny{"ext2": &anypb.Any{TypeUrl: "example.com/ext", Value: []byte("2")}}
	want.Extensions = map[string]typeurlAny{"ext": ctr.Extensions["ext"], "ext2": in.Extensions["ext2"]}
	update("extensions.ext2", in, "extensions.ext2")
	want.Extensions = in.Extensions
	update("extensions", in, "extensions")

	list, err := cs.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != ctr.ID {
		t.Errorf("List = %v, %v; want only %s", list, err, ctr.ID)
	}
	if err := cs.Delete(ctx, ctr.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := cs.Get(ctx, ctr.ID); !errdefs.IsNotFound(err) {
		t.Errorf("Get after Delete = %v (%s), want NotFound", err, errClass(err))
	}
	if err := cs.Delete(ctx, ctr.ID); !errdefs.IsNotFound(err) {
		t.Errorf("second Delete = %v (%s), want NotFound", err, errClass(err))
	}
	if _, err := cs.Update(ctx, ctr, "labels"); !errdefs.IsNotFound(err) {
		t.Errorf("Update of a missing container = %v (%s), want NotFound", err, errClass(err))
	}
}

// TestLeaseResources attaches a blob to a lease and detaches it through the
// Go client: ListResources shows it, and once detached the collector takes
// it.
func TestLeaseResources(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	lm, cs := c.LeasesService(), c.ContentStore()
	ctx := nsContext(t, uniqueNS("resources"))
	setup, setupLease := withLease(t, c, ctx)
	dgst := writeBlob(t, setup, cs, 1<<10)

	l, err := lm.Create(ctx) // no id: the server makes one
	if err != nil {
		t.Fatalf("Create without an id: %v", err)
	}
	if !serverLeaseID.MatchString(l.ID) {
		t.Errorf("Create without an id made %q, want an id like 416665928-qPHK", l.ID)
	}
	res := leases.Resource{ID: dgst.String(), Type: "content"}
	if err := lm.AddResource(ctx, l, res); err != nil {
		t.Fatalf("AddResource: %v", err)
	}
	if err := lm.AddResource(ctx, leases.Lease{ID: "missing"}, res); !errdefs.IsNotFound(err) {
		t.Errorf("AddResource to a missing lease = %v (%s), want NotFound", err, errClass(err))
	}
	got, err := lm.ListResources(ctx, l)
	if err != nil || !cmp.Equal(got, []leases.Resource{res}) {
		t.Errorf("ListResources = %v, %v; want %v", got, err, res)
	}
	if err := lm.Delete(ctx, setupLease, leases.SynchronousDelete); err != nil {
		t.Fatalf("delete the setup lease: %v", err)
	}
	if _, err := cs.Info(ctx, dgst); err != nil {
		t.Fatalf("Info of a blob the lease holds, after a collection: %v", err)
	}
	if err := lm.DeleteResource(ctx, l, res); err != nil {
		t.Fatalf("DeleteResource: %v", err)
	}
	if got, err := lm.ListResources(ctx, l); err != nil || len(got) != 0 {
		t.Errorf("ListResources after DeleteResource = %v, %v; want none", got, err)
	}
	if err := lm.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := cs.Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("Info of the released blob after a collection = %v (%s), want NotFound", err, errClass(err))
	}
}

// TestNamespaceNotEmpty checks that a namespace holding an image, a
// container or a blob cannot be deleted (FailedPrecondition), and can once
// they are gone.
func TestNamespaceNotEmpty(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	nss := c.NamespaceService()
	for _, kind := range []string{"image", "container", "blob"} {
		t.Run(kind, func(t *testing.T) {
			ns := uniqueNS(kind)
			ctx := nsContext(t, ns)
			var remove func() error
			switch kind {
			case "image":
				img := testImage("held:latest", digest.FromString("x"))
				if _, err := c.ImageService().Create(ctx, img); err != nil {
					t.Fatal(err)
				}
				remove = func() error { return c.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()) }
			case "container":
				if _, err := c.ContainerService().Create(ctx, testContainer("held")); err != nil {
					t.Fatal(err)
				}
				remove = func() error { return c.ContainerService().Delete(ctx, "held") }
			case "blob":
				// The collection after the previous case's delete would take a
				// blob nothing holds, so a lease holds this one.
				l, err := c.LeasesService().Create(ctx, leases.WithRandomID())
				if err != nil {
					t.Fatal(err)
				}
				dgst := writeBlob(t, leases.WithLease(ctx, l.ID), c.ContentStore(), 1<<10)
				remove = func() error { return c.ContentStore().Delete(ctx, dgst) }
			}
			if err := nss.Delete(ctx, ns); !errdefs.IsFailedPrecondition(err) {
				t.Errorf("Delete of a namespace holding a %s = %v (%s), want FailedPrecondition", kind, err, errClass(err))
			}
			if err := remove(); err != nil {
				t.Fatalf("remove the %s: %v", kind, err)
			}
			if err := nss.Delete(ctx, ns); err != nil {
				t.Errorf("Delete of the emptied namespace: %v", err)
			}
		})
	}
}

// typeurlAny is the type of a container's spec and extensions.
type typeurlAny = typeurl.Any

// anyText is an Any's type and value, empty for a nil or typed nil one.
func anyText(a typeurlAny) string {
	if a == nil {
		return ""
	}
	if p, ok := a.(*anypb.Any); ok && p == nil {
		return ""
	}
	return a.GetTypeUrl() + " " + string(a.GetValue())
}
