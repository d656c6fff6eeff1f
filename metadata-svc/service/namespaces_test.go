package service_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/google/go-cmp/cmp"
	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
)

// published is one event a recordingPublisher received.
type published struct {
	NS    string
	Topic string
	Event proto.Message
}

// recordingPublisher records events and fails with err when it is set.
type recordingPublisher struct {
	mu     sync.Mutex
	events []published
	err    error
}

func (p *recordingPublisher) Publish(_ context.Context, ns, topic string, ev proto.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, published{NS: ns, Topic: topic, Event: ev})
	return p.err
}

func (p *recordingPublisher) take() []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	evs := p.events
	p.events = nil
	return evs
}

// serve starts the Namespaces service on the database at path, on a unix
// socket in a temporary directory, and returns a client for it.
func serve(t *testing.T, path string, pub pluginkit.Publisher) api.NamespacesClient {
	t.Helper()
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	gs := grpc.NewServer()
	service.NewNamespaces(db.Namespaces(), pub, zerolog.Nop()).Register(gs)
	return dial(t, gs, func() { db.Close() })
}

// dial serves gs on a unix socket and returns a client; cleanup runs after
// the server stopped.
func dial(t *testing.T, gs *grpc.Server, cleanup func()) api.NamespacesClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ns.sock")
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
		cleanup()
	})
	return api.NewNamespacesClient(cc)
}

// seedImage creates namespace ns holding one image record, as the images
// service will, in a database not yet opened by the service.
func seedImage(t *testing.T, path, ns string) {
	t.Helper()
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	db.Close()

	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer bdb.Close()
	err = bdb.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket([]byte("namespaces")).CreateBucket([]byte(ns))
		if err == nil {
			b, err = b.CreateBucket([]byte("images"))
		}
		if err == nil {
			err = b.Put([]byte("docker.io/library/busybox:latest"), nil)
		}
		return err
	})
	if err != nil {
		t.Fatalf("seed image: %v", err)
	}
}

func labelsMask(paths ...string) *fieldmaskpb.FieldMask {
	return &fieldmaskpb.FieldMask{Paths: paths}
}

func TestNamespacesService(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	seedImage(t, path, "busy")
	pub := &recordingPublisher{}
	c := serve(t, path, pub)
	ctx := context.Background()

	type step struct {
		name       string
		call       func() (proto.Message, error)
		wantCode   codes.Code
		wantMsg    string
		want       proto.Message
		wantEvents []published
	}
	steps := []step{
		{
			name: "create",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &api.CreateNamespaceRequest{
					Namespace: &api.Namespace{Name: "a", Labels: map[string]string{"k": "v"}},
				})
			},
			want: &api.CreateNamespaceResponse{
				Namespace: &api.Namespace{Name: "a", Labels: map[string]string{"k": "v"}},
			},
			wantEvents: []published{{"a", "/namespaces/create",
				&eventsapi.NamespaceCreate{Name: "a", Labels: map[string]string{"k": "v"}}}},
		},
		{
			name: "create existing",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "a"}})
			},
			wantCode: codes.AlreadyExists,
			wantMsg:  `namespace "a": already exists`,
		},
		{
			name: "create bad name",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "a/b"}})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "create without namespace",
			call: func() (proto.Message, error) {
				return c.Create(ctx, &api.CreateNamespaceRequest{})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "get unknown",
			call: func() (proto.Message, error) {
				return c.Get(ctx, &api.GetNamespaceRequest{Name: "nope"})
			},
			want: &api.GetNamespaceResponse{Namespace: &api.Namespace{Name: "nope"}},
		},
		{
			name: "update label",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &api.UpdateNamespaceRequest{
					Namespace:  &api.Namespace{Name: "a", Labels: map[string]string{"x": "y"}},
					UpdateMask: labelsMask("labels.x"),
				})
			},
			want: &api.UpdateNamespaceResponse{
				Namespace: &api.Namespace{Name: "a", Labels: map[string]string{"k": "v", "x": "y"}},
			},
			wantEvents: []published{{"a", "/namespaces/update",
				&eventsapi.NamespaceUpdate{Name: "a", Labels: map[string]string{"k": "v", "x": "y"}}}},
		},
		{
			name: "update bad path",
			call: func() (proto.Message, error) {
				return c.Update(ctx, &api.UpdateNamespaceRequest{
					Namespace:  &api.Namespace{Name: "a"},
					UpdateMask: labelsMask("name"),
				})
			},
			wantCode: codes.InvalidArgument,
		},
		{
			name: "list",
			call: func() (proto.Message, error) {
				return c.List(ctx, &api.ListNamespacesRequest{})
			},
			want: &api.ListNamespacesResponse{Namespaces: []*api.Namespace{
				{Name: "a", Labels: map[string]string{"k": "v", "x": "y"}},
				{Name: "busy"},
			}},
		},
		{
			name: "delete non-empty",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "busy"})
			},
			wantCode: codes.FailedPrecondition,
			wantMsg:  `namespace "busy" must be empty, but it still has images: failed precondition`,
		},
		{
			name: "delete",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "a"})
			},
			want: &emptypb.Empty{},
			wantEvents: []published{{"a", "/namespaces/delete",
				&eventsapi.NamespaceDelete{Name: "a"}}},
		},
		{
			name: "delete unknown",
			call: func() (proto.Message, error) {
				return c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "a"})
			},
			wantCode: codes.NotFound,
			wantMsg:  `namespace "a": not found`,
		},
	}

	// The steps share one server and run in order.
	for _, st := range steps {
		got, err := st.call()
		if code := status.Code(err); code != st.wantCode {
			t.Fatalf("%s: code = %v (%v), want %v", st.name, code, err, st.wantCode)
		}
		if st.wantMsg != "" && status.Convert(err).Message() != st.wantMsg {
			t.Errorf("%s: message = %q, want %q", st.name, status.Convert(err).Message(), st.wantMsg)
		}
		if st.want != nil {
			if diff := cmp.Diff(st.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("%s: response mismatch (-want +got):\n%s", st.name, diff)
			}
		}
		if diff := cmp.Diff(st.wantEvents, pub.take(), protocmp.Transform()); diff != "" {
			t.Errorf("%s: events mismatch (-want +got):\n%s", st.name, diff)
		}
	}
}

func TestNamespacesServiceReplay(t *testing.T) {
	pub := &recordingPublisher{}
	c := serve(t, filepath.Join(t.TempDir(), "meta.db"), pub)
	ctx := grpcmd.AppendToOutgoingContext(context.Background(), pluginkit.CallIDKey, "call-1")
	req := &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "a"}}

	first, err := c.Create(ctx, req)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	replay, err := c.Create(ctx, req)
	if err != nil {
		t.Fatalf("replayed Create: %v", err)
	}
	if diff := cmp.Diff(first, replay, protocmp.Transform()); diff != "" {
		t.Errorf("replay response mismatch (-first +replay):\n%s", diff)
	}

	// A new call id is a new call.
	other := grpcmd.AppendToOutgoingContext(context.Background(), pluginkit.CallIDKey, "call-2")
	if _, err := c.Create(other, req); status.Code(err) != codes.AlreadyExists {
		t.Errorf("Create with a new call id: %v, want AlreadyExists", err)
	}
	// Events are delivered at least once: the replay publishes again.
	if n := len(pub.take()); n != 2 {
		t.Errorf("events = %d, want 2", n)
	}
}

func TestNamespacesServicePublishErrorIsNotReturned(t *testing.T) {
	pub := &recordingPublisher{err: errors.New("exchange down")}
	c := serve(t, filepath.Join(t.TempDir(), "meta.db"), pub)

	req := &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "a"}}
	if _, err := c.Create(context.Background(), req); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if n := len(pub.take()); n != 1 {
		t.Errorf("publish attempts = %d, want 1", n)
	}
}
