package service_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
)

const (
	indexType = "application/vnd.oci.image.index.v1+json"
	mfstType  = "application/vnd.oci.image.manifest.v1+json"
)

var (
	dgstA = "sha256:" + strings.Repeat("a", 64)
	dgstB = "sha256:" + strings.Repeat("b", 64)
)

// fakeCollector records the collections asked of it and fails with err
// when it is set.
type fakeCollector struct {
	mu    sync.Mutex
	calls []bool // the sync flag of each call
	err   error
}

func (c *fakeCollector) Collect(_ context.Context, sync bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, sync)
	return c.err
}

func (c *fakeCollector) take() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls := c.calls
	c.calls = nil
	return calls
}

// serveMetadata starts the Images and Containers services on a new
// database, on a unix socket, and returns a connection to them.
func serveMetadata(t *testing.T, pub pluginkit.Publisher, gc service.Collector) *grpc.ClientConn {
	t.Helper()
	db, err := metadata.Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	gs := grpc.NewServer()
	service.NewImages(db.Images(), pub, gc, zerolog.Nop()).Register(gs)
	service.NewContainers(db.Containers(), pub, gc, zerolog.Nop()).Register(gs)

	sock := filepath.Join(t.TempDir(), "meta.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go gs.Serve(l)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		cc.Close()
		gs.Stop()
		db.Close()
	})
	return cc
}

// inNamespace returns a context whose calls carry namespace ns.
func inNamespace(ns string) context.Context {
	return grpcmd.AppendToOutgoingContext(context.Background(), pluginkit.NamespaceKey, ns)
}

func image(name string, dgst string, kv ...string) *imagesapi.Image {
	img := &imagesapi.Image{
		Name:   name,
		Target: &types.Descriptor{MediaType: indexType, Digest: dgst, Size: 100},
	}
	if len(kv) > 0 {
		img.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			img.Labels[kv[i]] = kv[i+1]
		}
	}
	return img
}

// ignoreTimes leaves the server's timestamps out of a comparison.
var ignoreTimes = cmp.Options{
	protocmp.Transform(),
	protocmp.IgnoreFields(&imagesapi.Image{}, "created_at", "updated_at"),
}

// callStep is one call of a sequence run against one server.
type callStep struct {
	name       string
	call       func() (proto.Message, error)
	wantCode   codes.Code
	wantMsg    string
	want       proto.Message
	wantEvents []published
	wantGC     []bool
}

// runSteps runs steps in order, checking each answer, the events it
// published and the collections it asked for.
func runSteps(t *testing.T, steps []callStep, pub *recordingPublisher, gc *fakeCollector) {
	t.Helper()
	for _, st := range steps {
		got, err := st.call()
		if code := status.Code(err); code != st.wantCode {
			t.Fatalf("%s: code = %v (%v), want %v", st.name, code, err, st.wantCode)
		}
		if st.wantMsg != "" && status.Convert(err).Message() != st.wantMsg {
			t.Errorf("%s: message = %q, want %q", st.name, status.Convert(err).Message(), st.wantMsg)
		}
		if st.want != nil {
			if diff := cmp.Diff(st.want, got, ignoreTimes, ignoreContainerTimes); diff != "" {
				t.Errorf("%s: response mismatch (-want +got):\n%s", st.name, diff)
			}
		}
		if diff := cmp.Diff(st.wantEvents, pub.take(), protocmp.Transform()); diff != "" {
			t.Errorf("%s: events mismatch (-want +got):\n%s", st.name, diff)
		}
		if diff := cmp.Diff(st.wantGC, gc.take()); diff != "" {
			t.Errorf("%s: collections mismatch (-want +got):\n%s", st.name, diff)
		}
	}
}

func TestImagesService(t *testing.T) {
	pub, gc := &recordingPublisher{}, &fakeCollector{}
	c := imagesapi.NewImagesClient(serveMetadata(t, pub, gc))
	ctx := inNamespace("default")
	const name = "import-2026-12-03:latest"

	steps := []callStep{
		{
			name: "no namespace",
			call: func() (proto.Message, error) {
				return c.Get(context.Background(), &imagesapi.GetImageRequest{Name: name})
			},
			wantCode: codes.FailedPrecondition,
			wantMsg:  "namespace is required: failed precondition",
		},
		{
			name: "bad namespace",
			call: func() (proto.Message, error) {
				return c.Create(inNamespace("a/b"), &imagesapi.CreateImageRequest{Image: image(name, dgstA)})
			},
			wantCode: codes.InvalidArgument,
		},
		// ctr's import: Update of a new name, NotFound, then Create.
		{
			name: "import update of a new name",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &imagesapi.UpdateImageRequest{
					Image:      image(name, dgstA),
					UpdateMask: labelsMask("target"),
				})
			},
			wantCode: codes.NotFound,
			wantMsg:  `image "` + name + `": not found`,
		},
		{
			name: "import create",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{Image: image(name, dgstA, "k", "v")})
			},
			want: &imagesapi.CreateImageResponse{Image: image(name, dgstA, "k", "v")},
			wantEvents: []published{{"default", "/images/create",
				&eventsapi.ImageCreate{Name: name, Labels: map[string]string{"k": "v"}}}},
		},
		// ctr's second pull: Create, AlreadyExists, then Update with no mask.
		{
			name: "create existing",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{Image: image(name, dgstB)})
			},
			wantCode: codes.AlreadyExists,
			wantMsg:  `image "` + name + `": already exists`,
		},
		{
			name: "update with empty mask replaces",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &imagesapi.UpdateImageRequest{Image: image(name, dgstB)})
			},
			want: &imagesapi.UpdateImageResponse{Image: image(name, dgstB)},
			wantEvents: []published{{"default", "/images/update",
				&eventsapi.ImageUpdate{Name: name}}},
		},
		{
			name: "update one label",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &imagesapi.UpdateImageRequest{
					Image:      image(name, "", "x", "y"),
					UpdateMask: labelsMask("labels.x"),
				})
			},
			want: &imagesapi.UpdateImageResponse{Image: image(name, dgstB, "x", "y")},
			wantEvents: []published{{"default", "/images/update",
				&eventsapi.ImageUpdate{Name: name, Labels: map[string]string{"x": "y"}}}},
		},
		{
			name: "update unknown path",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &imagesapi.UpdateImageRequest{
					Image:      image(name, dgstB),
					UpdateMask: labelsMask("name"),
				})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create bad name",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("a b", dgstA)})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create bad digest",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("b", "sha256:../x")})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create without image",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create second",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("b", dgstA)})
			},
			want:       &imagesapi.CreateImageResponse{Image: image("b", dgstA)},
			wantEvents: []published{{"default", "/images/create", &eventsapi.ImageCreate{Name: "b"}}},
		},
		{
			name: "list filtered",
			call: func() (proto.Message, error) {
				return c.List(ctx, &imagesapi.ListImagesRequest{Filters: []string{"labels.x==y", "name==b"}})
			},
			want: &imagesapi.ListImagesResponse{Images: []*imagesapi.Image{
				image("b", dgstA), image(name, dgstB, "x", "y"),
			}},
		},
		{
			name: "list bad filter",
			call: func() (proto.Message, error) {
				return c.List(ctx, &imagesapi.ListImagesRequest{Filters: []string{"name=="}})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "list other namespace",
			call: func() (proto.Message, error) {
				return c.List(inNamespace("other"), &imagesapi.ListImagesRequest{})
			},
			want: &imagesapi.ListImagesResponse{},
		},
		{
			name: "get",
			call: func() (proto.Message, error) {
				return c.Get(ctx, &imagesapi.GetImageRequest{Name: "b"})
			},
			want: &imagesapi.GetImageResponse{Image: image("b", dgstA)},
		},
		{
			name: "delete",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &imagesapi.DeleteImageRequest{Name: "b"})
			},
			wantEvents: []published{{"default", "/images/delete", &eventsapi.ImageDelete{Name: "b"}}},
			wantGC:     []bool{false},
		},
		{
			name: "delete missing",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &imagesapi.DeleteImageRequest{Name: "b", Sync: true})
			},
			wantCode: codes.NotFound,
			wantMsg:  `image "b": not found`,
		},
		{
			name: "delete other target",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &imagesapi.DeleteImageRequest{
					Name:   name,
					Target: &types.Descriptor{Digest: dgstA},
				})
			},
			wantCode: codes.NotFound,
		},
		{
			name: "delete sync",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &imagesapi.DeleteImageRequest{Name: name, Sync: true})
			},
			wantEvents: []published{{"default", "/images/delete", &eventsapi.ImageDelete{Name: name}}},
			wantGC:     []bool{true},
		},
		{
			name: "get deleted",
			call: func() (proto.Message, error) {
				return c.Get(ctx, &imagesapi.GetImageRequest{Name: name})
			},
			wantCode: codes.NotFound,
		},
	}
	runSteps(t, steps, pub, gc)
}

// TestImagesServiceTimes: the server sets created_at and updated_at, and
// an update moves only updated_at.
func TestImagesServiceTimes(t *testing.T) {
	c := imagesapi.NewImagesClient(serveMetadata(t, &recordingPublisher{}, nil))
	ctx := inNamespace("default")

	created, err := c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("a", dgstA)})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	ca := created.GetImage().GetCreatedAt()
	if ca == nil || ca.AsTime().Year() < 2000 || !proto.Equal(ca, created.GetImage().GetUpdatedAt()) {
		t.Fatalf("created_at, updated_at = %v, %v", ca, created.GetImage().GetUpdatedAt())
	}
	updated, err := c.Update(ctx, &imagesapi.UpdateImageRequest{Image: image("a", dgstB)})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if !proto.Equal(updated.GetImage().GetCreatedAt(), ca) {
		t.Errorf("created_at after update = %v, want %v", updated.GetImage().GetCreatedAt(), ca)
	}
	if updated.GetImage().GetUpdatedAt().AsTime().Before(ca.AsTime()) {
		t.Errorf("updated_at %v is before created_at %v", updated.GetImage().GetUpdatedAt(), ca)
	}
}

// TestImagesServiceEventTypes: image events travel as
// containerd.services.images.v1.Image*, the type URLs clients decode.
func TestImagesServiceEventTypes(t *testing.T) {
	for ev, want := range map[proto.Message]string{
		&eventsapi.ImageCreate{}: "containerd.services.images.v1.ImageCreate",
		&eventsapi.ImageUpdate{}: "containerd.services.images.v1.ImageUpdate",
		&eventsapi.ImageDelete{}: "containerd.services.images.v1.ImageDelete",
	} {
		a, err := pluginkit.MarshalAny(ev)
		if err != nil || a.GetTypeUrl() != want {
			t.Errorf("type URL = %q, %v; want %q", a.GetTypeUrl(), err, want)
		}
	}
}

func TestImagesServiceSyncDeleteFailure(t *testing.T) {
	gc := &fakeCollector{err: errors.New("content plugin down")}
	c := imagesapi.NewImagesClient(serveMetadata(t, &recordingPublisher{}, gc))
	ctx := inNamespace("default")
	if _, err := c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("a", dgstA)}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := c.Create(ctx, &imagesapi.CreateImageRequest{Image: image("b", dgstA)}); err != nil {
		t.Fatalf("Create: %v", err)
	}

	// A collection nobody waits for fails quietly; a sync one reports.
	if _, err := c.Delete(ctx, &imagesapi.DeleteImageRequest{Name: "a"}); err != nil {
		t.Errorf("Delete: %v", err)
	}
	_, err := c.Delete(ctx, &imagesapi.DeleteImageRequest{Name: "b", Sync: true})
	if status.Code(err) != codes.Unknown || !strings.Contains(err.Error(), "content plugin down") {
		t.Errorf("sync Delete = %v, want the collector's error", err)
	}
}

func TestImagesServiceReplay(t *testing.T) {
	pub := &recordingPublisher{}
	c := imagesapi.NewImagesClient(serveMetadata(t, pub, nil))
	ctx := grpcmd.AppendToOutgoingContext(inNamespace("default"), pluginkit.CallIDKey, "call-1")
	req := &imagesapi.CreateImageRequest{Image: image("a", dgstA)}

	first, err := c.Create(ctx, req)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	replay, err := c.Create(ctx, req)
	if err != nil {
		t.Fatalf("replayed Create: %v", err)
	}
	if diff := cmp.Diff(first, replay, protocmp.Transform()); diff != "" {
		t.Errorf("replay mismatch (-first +replay):\n%s", diff)
	}
	if n := len(pub.take()); n != 2 {
		t.Errorf("events = %d, want 2 (at least once)", n)
	}
}
