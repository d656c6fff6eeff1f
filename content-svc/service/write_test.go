package service

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"corral.dev/pluginkit"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// ingestLog stands in for the metadata plugin's Ingests service: it keeps
// the calls made to it and answers Begin with beginErr.
type ingestLog struct {
	mu       sync.Mutex
	calls    []proto.Message
	beginErr error
}

func (l *ingestLog) Begin(_ context.Context, req *ingestv1.BeginRequest, _ ...grpc.CallOption) (*ingestv1.BeginResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, req)
	if l.beginErr != nil {
		return nil, errgrpc.ToGRPC(l.beginErr)
	}
	return &ingestv1.BeginResponse{}, nil
}

func (l *ingestLog) Record(_ context.Context, req *ingestv1.RecordRequest, _ ...grpc.CallOption) (*ingestv1.RecordResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, req)
	return &ingestv1.RecordResponse{}, nil
}

func (l *ingestLog) take() []proto.Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	calls := l.calls
	l.calls = nil
	return calls
}

// inNamespace returns ctx with calls in namespace ns under lease.
func inNamespace(ns, lease string) context.Context {
	kv := []string{pluginkit.NamespaceKey, ns}
	if lease != "" {
		kv = append(kv, pluginkit.LeaseKey, lease)
	}
	return metadata.AppendToOutgoingContext(context.Background(), kv...)
}

// writeAll writes data under ref in one WRITE and commits it, sending
// expected on the first message, and returns the COMMIT reply.
func writeAll(ctx context.Context, c contentapi.ContentClient, ref string, data []byte, expected digest.Digest, labels map[string]string) (*contentapi.WriteContentResponse, error) {
	ws, err := c.Write(ctx)
	if err != nil {
		return nil, err
	}
	defer ws.CloseSend()
	total := int64(len(data))
	reqs := []*contentapi.WriteContentRequest{
		{Action: contentapi.WriteAction_STAT, Ref: ref, Total: total, Expected: expected.String()},
		{Action: contentapi.WriteAction_WRITE, Data: data},
		{Action: contentapi.WriteAction_COMMIT, Offset: total, Total: total, Labels: labels},
	}
	var resp *contentapi.WriteContentResponse
	for _, req := range reqs {
		if err := ws.Send(req); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
		if resp, err = ws.Recv(); err != nil {
			return nil, errgrpc.ToNative(err)
		}
	}
	return resp, nil
}

func TestWriteRecordsInNamespace(t *testing.T) {
	data := []byte("bytes of a namespace")
	d := digest.FromBytes(data)
	labels := map[string]string{"k": "v"}

	for _, tt := range []struct {
		name     string
		expected digest.Digest
		want     []proto.Message
	}{
		{
			name:     "expected",
			expected: d,
			want: []proto.Message{
				&ingestv1.BeginRequest{Namespace: "ns1", Ref: "r", Expected: d.String(),
					Total: int64(len(data)), Lease: "l1", CheckExisting: true},
				&ingestv1.RecordRequest{Namespace: "ns1", Ref: "r", Digest: d.String(),
					Size: int64(len(data)), Labels: labels, Lease: "l1"},
			},
		},
		{
			// The record must name the blob before the store commits it.
			name: "unnamed",
			want: []proto.Message{
				&ingestv1.BeginRequest{Namespace: "ns1", Ref: "r",
					Total: int64(len(data)), Lease: "l1", CheckExisting: true},
				&ingestv1.BeginRequest{Namespace: "ns1", Ref: "r", Expected: d.String(),
					Total: int64(len(data)), Lease: "l1"},
				&ingestv1.RecordRequest{Namespace: "ns1", Ref: "r", Digest: d.String(),
					Size: int64(len(data)), Labels: labels, Lease: "l1"},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ingests := &ingestLog{}
			root := t.TempDir()
			c := serve(t, root, WithIngests(ingests)).client(t)

			resp, err := writeAll(inNamespace("ns1", "l1"), c, "r", data, tt.expected, labels)
			if err != nil {
				t.Fatalf("write: %v", err)
			}
			if resp.GetDigest() != d.String() || resp.GetOffset() != int64(len(data)) {
				t.Errorf("COMMIT reply %v, want digest %s at offset %d", resp, d, len(data))
			}
			if diff := cmp.Diff(tt.want, ingests.take(), protocmp.Transform()); diff != "" {
				t.Errorf("ingests calls (-want +got):\n%s", diff)
			}
			if _, err := c.Info(context.Background(), &contentapi.InfoRequest{Digest: d.String()}); err != nil {
				t.Errorf("Info of the committed blob: %v", err)
			}
		})
	}
}

func TestWriteExistingInNamespace(t *testing.T) {
	ingests := &ingestLog{beginErr: fmt.Errorf("held: %w", errdefs.ErrAlreadyExists)}
	root := t.TempDir()
	c := serve(t, root, WithIngests(ingests)).client(t)
	data := []byte("held already")

	_, err := writeAll(inNamespace("ns1", ""), c, "r", data, digest.FromBytes(data), nil)
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("write: %v, want AlreadyExists", err)
	}
	// The answer came before any ingest was made.
	if ms, _ := filepath.Glob(filepath.Join(root, "ingest", "*")); len(ms) != 0 {
		t.Errorf("ingests left: %v", ms)
	}
	if calls := ingests.take(); len(calls) != 1 {
		t.Errorf("ingests calls %v, want the Begin only", calls)
	}
}

func TestWriteNeedsNamespace(t *testing.T) {
	c := serve(t, t.TempDir(), WithIngests(&ingestLog{})).client(t)
	for _, tt := range []struct {
		ctx  context.Context
		want error
	}{
		{context.Background(), errdefs.ErrFailedPrecondition},
		{inNamespace("bad/ns", ""), errdefs.ErrInvalidArgument},
	} {
		if _, err := writeAll(tt.ctx, c, "r", []byte("x"), "", nil); !errors.Is(err, tt.want) {
			t.Errorf("write: %v, want %v", err, tt.want)
		}
	}
}

// TestWriteHeldRef opens a second stream on a ref a first one holds: it is
// turned away before it can change the namespace's record of the ingest.
func TestWriteHeldRef(t *testing.T) {
	ingests := &ingestLog{}
	c := serve(t, t.TempDir(), WithIngests(ingests)).client(t)
	ctx := inNamespace("ns1", "")

	first, err := c.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.CloseSend()
	if err := first.Send(&contentapi.WriteContentRequest{Ref: "r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	ingests.take()

	if _, err := writeAll(ctx, c, "r", []byte("x"), "", nil); !errdefs.IsUnavailable(err) {
		t.Fatalf("second stream: %v, want Unavailable", err)
	}
	if calls := ingests.take(); len(calls) != 0 {
		t.Errorf("second stream made calls %v", calls)
	}
	// Another namespace's ref of the same name is another ingest.
	if _, err := writeAll(inNamespace("ns2", ""), c, "r", []byte("x"), "", nil); err != nil {
		t.Errorf("write in ns2: %v", err)
	}
}
