//go:build linux

package integration

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/typeurl/v2"
	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit/testkit"
)

// eventLine renders an event of the metadata services as the tests
// compare it.
func eventLine(t *testing.T, topic string, v any) string {
	t.Helper()
	labels := func(m map[string]string) string {
		keys := slices.Sorted(maps.Keys(m))
		var kv []string
		for _, k := range keys {
			kv = append(kv, k+"="+m[k])
		}
		return "{" + strings.Join(kv, ",") + "}"
	}
	switch v := v.(type) {
	case *eventtypes.ImageCreate:
		return fmt.Sprintf("%s %s %s", topic, v.Name, labels(v.Labels))
	case *eventtypes.ImageUpdate:
		return fmt.Sprintf("%s %s %s", topic, v.Name, labels(v.Labels))
	case *eventtypes.ImageDelete:
		return fmt.Sprintf("%s %s", topic, v.Name)
	case *eventtypes.ContainerCreate:
		return fmt.Sprintf("%s %s %s %s", topic, v.ID, v.Image, v.GetRuntime().GetName())
	case *eventtypes.ContainerUpdate:
		return fmt.Sprintf("%s %s %s %s", topic, v.ID, v.Image, labels(v.Labels))
	case *eventtypes.ContainerDelete:
		return fmt.Sprintf("%s %s", topic, v.ID)
	case *eventtypes.ContentDelete:
		return fmt.Sprintf("%s %s", topic, v.Digest)
	}
	t.Fatalf("%s event: unexpected payload %T", topic, v)
	return ""
}

// TestMetadataEvents checks the events the image, container and content
// services publish, in the order of the calls, with their payloads.
func TestMetadataEvents(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	ns := uniqueNS("events")
	ctx := nsContext(t, ns)
	sub := subscribe(t, clientContext(t), c)

	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	wctx, _ := withLease(t, c, ctx)
	dgst := writeBlob(t, wctx, c.ContentStore(), 1<<10)
	img := testImage("events:latest", dgst)
	img.Labels = map[string]string{"a": "1"}
	_, err := c.ImageService().Create(ctx, img)
	step("create image", err)
	img.Labels = map[string]string{"a": "2"}
	_, err = c.ImageService().Update(ctx, img, "labels")
	step("update image", err)
	step("delete image", c.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()))

	ctr := testContainer("events")
	_, err = c.ContainerService().Create(ctx, ctr)
	step("create container", err)
	ctr.Labels = map[string]string{"k": "w"}
	_, err = c.ContainerService().Update(ctx, ctr, "labels")
	step("update container", err)
	step("delete container", c.ContainerService().Delete(ctx, ctr.ID))
	step("delete content", c.ContentStore().Delete(ctx, dgst))

	want := []string{
		"/images/create events:latest {a=1}",
		"/images/update events:latest {a=2}",
		"/images/delete events:latest",
		"/containers/create events busybox:latest io.containerd.runc.v2",
		"/containers/update events busybox:latest {k=w}",
		"/containers/delete events",
		"/content/delete " + dgst.String(),
	}
	var got []string
	timeout := time.After(5 * time.Second)
	for len(got) < len(want) {
		select {
		case e := <-sub.envelopes:
			if e.Namespace != ns || !(strings.HasPrefix(e.Topic, "/images/") ||
				strings.HasPrefix(e.Topic, "/containers/") || e.Topic == "/content/delete") {
				continue
			}
			v, err := typeurl.UnmarshalAny(e.Event)
			if err != nil {
				t.Fatalf("decode %s event: %v", e.Topic, err)
			}
			got = append(got, eventLine(t, e.Topic, v))
		case err := <-sub.errs:
			t.Fatalf("subscription ended: %v", err)
		case <-timeout:
			t.Fatalf("got %d events in 5s, want %d (-want +got):\n%s", len(got), len(want), cmp.Diff(want, got))
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}
