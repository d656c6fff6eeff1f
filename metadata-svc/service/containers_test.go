package service_test

import (
	"context"
	"errors"
	"io"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const specURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

var ignoreContainerTimes = protocmp.IgnoreFields(&containersapi.Container{}, "created_at", "updated_at")

var (
	runcOptions = &anypb.Any{TypeUrl: "containerd.runc.v1.Options"}
	runc        = &eventsapi.ContainerCreate_Runtime{Name: "io.containerd.runc.v2", Options: runcOptions}
)

// container returns the container ctr creates for id from busybox.
func container(id string, kv ...string) *containersapi.Container {
	c := &containersapi.Container{
		ID:          id,
		Image:       "docker.io/library/busybox:latest",
		Runtime:     &containersapi.Container_Runtime{Name: runc.GetName(), Options: runcOptions},
		Spec:        &anypb.Any{TypeUrl: specURL, Value: []byte("{}")},
		Snapshotter: "overlayfs",
		SnapshotKey: id,
	}
	if len(kv) > 0 {
		c.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			c.Labels[kv[i]] = kv[i+1]
		}
	}
	return c
}

func TestContainersService(t *testing.T) {
	pub, gc := &recordingPublisher{}, &fakeCollector{}
	c := containersapi.NewContainersClient(serveMetadata(t, pub, gc))
	ctx := inNamespace("default")
	sig := []string{"io.containerd.image.config.stop-signal", "SIGTERM"}

	// ctr 1.6 sends zero timestamps, which the server replaces.
	fromCtr := container("web", sig...)
	year1 := &timestamppb.Timestamp{Seconds: -62135596800}
	fromCtr.CreatedAt, fromCtr.UpdatedAt = year1, year1

	steps := []callStep{
		{
			name: "no namespace",
			call: func() (proto.Message, error) {
				return c.Get(context.Background(), &containersapi.GetContainerRequest{ID: "web"})
			},
			wantCode: codes.FailedPrecondition,
			wantMsg:  "namespace is required: failed precondition",
		},
		{
			name: "create",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &containersapi.CreateContainerRequest{Container: fromCtr})
			},
			want: &containersapi.CreateContainerResponse{Container: container("web", sig...)},
			wantEvents: []published{{"default", "/containers/create", &eventsapi.ContainerCreate{
				ID:      "web",
				Image:   "docker.io/library/busybox:latest",
				Runtime: runc,
			}}},
		},
		{
			name: "create existing",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &containersapi.CreateContainerRequest{Container: container("web")})
			},
			wantCode: codes.AlreadyExists,
			wantMsg:  `container "web": already exists`,
		},
		{
			name: "create bad id",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &containersapi.CreateContainerRequest{Container: container("-web")})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create without runtime",
			call: func() (proto.Message, error) {
				bad := container("db")
				bad.Runtime = nil
				return c.Create(ctx, &containersapi.CreateContainerRequest{Container: bad})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create second",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &containersapi.CreateContainerRequest{Container: container("db")})
			},
			want: &containersapi.CreateContainerResponse{Container: container("db")},
			wantEvents: []published{{"default", "/containers/create", &eventsapi.ContainerCreate{
				ID:      "db",
				Image:   "docker.io/library/busybox:latest",
				Runtime: runc,
			}}},
		},
		// ctr's label command.
		{
			name: "label",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &containersapi.UpdateContainerRequest{
					Container:  &containersapi.Container{ID: "web", Labels: map[string]string{"k": "v"}},
					UpdateMask: labelsMask("labels.k"),
				})
			},
			want: &containersapi.UpdateContainerResponse{Container: container("web", append(sig, "k", "v")...)},
			wantEvents: []published{{"default", "/containers/update", &eventsapi.ContainerUpdate{
				ID:          "web",
				Image:       "docker.io/library/busybox:latest",
				Labels:      map[string]string{sig[0]: sig[1], "k": "v"},
				SnapshotKey: "web",
			}}},
		},
		{
			name: "change runtime",
			call: func() (proto.Message, error) {
				other := container("web")
				other.Runtime.Name = "io.containerd.kata.v2"
				return c.Update(ctx, &containersapi.UpdateContainerRequest{Container: other})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "change snapshotter",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &containersapi.UpdateContainerRequest{
					Container:  container("web"),
					UpdateMask: labelsMask("snapshotter"),
				})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "update missing",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &containersapi.UpdateContainerRequest{Container: container("nope")})
			},
			wantCode: codes.NotFound,
		},
		{
			name: "list filtered",
			call: func() (proto.Message, error) {
				return c.List(ctx, &containersapi.ListContainersRequest{Filters: []string{"labels.k==v"}})
			},
			want: &containersapi.ListContainersResponse{Containers: []*containersapi.Container{
				container("web", append(sig, "k", "v")...),
			}},
		},
		{
			name: "get",
			call: func() (proto.Message, error) {
				return c.Get(ctx, &containersapi.GetContainerRequest{ID: "db"})
			},
			want: &containersapi.GetContainerResponse{Container: container("db")},
		},
		{
			name: "delete",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &containersapi.DeleteContainerRequest{ID: "db"})
			},
			wantEvents: []published{{"default", "/containers/delete", &eventsapi.ContainerDelete{ID: "db"}}},
			wantGC:     []bool{false},
		},
		{
			name: "delete missing",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &containersapi.DeleteContainerRequest{ID: "db"})
			},
			wantCode: codes.NotFound,
			wantMsg:  `container "db": not found`,
		},
		{
			name: "get deleted",
			call: func() (proto.Message, error) {
				return c.Get(ctx, &containersapi.GetContainerRequest{ID: "db"})
			},
			wantCode: codes.NotFound,
		},
	}
	runSteps(t, steps, pub, gc)
}

// TestContainersServiceListStream: ctr's ls gets one message per
// container, in id order, and the stream ends cleanly.
func TestContainersServiceListStream(t *testing.T) {
	c := containersapi.NewContainersClient(serveMetadata(t, &recordingPublisher{}, nil))
	ctx := inNamespace("default")
	for _, id := range []string{"c", "a", "b"} {
		if _, err := c.Create(ctx, &containersapi.CreateContainerRequest{Container: container(id)}); err != nil {
			t.Fatalf("Create %s: %v", id, err)
		}
	}

	tests := []struct {
		filters []string
		want    []string
	}{
		{want: []string{"a", "b", "c"}},
		{filters: []string{"id~=^[ab]$"}, want: []string{"a", "b"}},
		{filters: []string{"id==z"}},
	}
	for _, tt := range tests {
		got, err := streamIDs(ctx, c, tt.filters)
		if err != nil {
			t.Fatalf("ListStream(%q): %v", tt.filters, err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ListStream(%q) mismatch (-want +got):\n%s", tt.filters, diff)
		}
	}

	if _, err := streamIDs(context.Background(), c, nil); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("ListStream without namespace = %v, want FailedPrecondition", err)
	}
}

func streamIDs(
	ctx context.Context,
	c containersapi.ContainersClient,
	filters []string,
) ([]string, error) {
	stream, err := c.ListStream(ctx, &containersapi.ListContainersRequest{Filters: filters})
	if err != nil {
		return nil, err
	}
	var ids []string
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return ids, nil
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, msg.GetContainer().GetID())
	}
}
