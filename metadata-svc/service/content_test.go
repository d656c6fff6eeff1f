package service_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	csvc "corral.dev/content-svc/service"
	cstore "corral.dev/content-svc/store"
	"corral.dev/metadata-svc/metadata"
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/contenttest"
	plabels "corral.dev/pluginkit/labels"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// contentEnv is the Content, Ingests and Leases services on a new
// database, in front of content-svc's Content service on a store in a temp
// dir, each on its own unix socket. The env's Content client reaches
// content-svc for Write and the metadata plugin for the rest, as the
// supervisor routes them.
type contentEnv struct {
	db      *metadata.DB
	gc      *metadata.GC
	pub     *recordingPublisher
	raw     contentapi.ContentClient // content-svc itself
	rawLog  *readLog                 // the Read calls content-svc served
	content contentapi.ContentClient
	ingests ingestv1.IngestsClient // the metadata plugin's, as content-svc calls it
	leases  leasesapi.LeasesClient
}

func newContentEnv(t *testing.T, policy string) *contentEnv {
	t.Helper()
	env := &contentEnv{pub: &recordingPublisher{}, rawLog: &readLog{}}
	dir := t.TempDir()
	metaSock, rawSock := filepath.Join(dir, "meta.sock"), filepath.Join(dir, "raw.sock")
	metaCC := dialSock(t, metaSock)

	st, err := cstore.Open(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	blobs := csvc.NewContent(st, zerolog.Nop(), csvc.WithIngests(ingestv1.NewIngestsClient(metaCC)))
	rawSrv := grpc.NewServer()
	contentapi.RegisterContentServer(rawSrv, &loggingBlobs{ContentServer: blobs, log: env.rawLog})
	listen(t, rawSrv, rawSock)
	env.raw = contentapi.NewContentClient(dialSock(t, rawSock))

	env.db, err = metadata.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { env.db.Close() })
	env.gc = metadata.NewGC(env.db, service.NewBlobBackend(env.raw))
	gs := grpc.NewServer()
	content := service.NewContent(service.ContentConfig{
		Store:  env.db.Content(),
		Blobs:  env.raw,
		GC:     env.gc,
		Events: env.pub,
		Policy: policy,
		Log:    zerolog.Nop(),
	})
	contentapi.RegisterContentServer(gs, routedContent{ContentServer: content, writes: blobs})
	service.NewIngests(content).Register(gs)
	service.NewLeases(env.db.Leases(), env.gc, zerolog.Nop()).Register(gs)
	listen(t, gs, metaSock)
	env.content = contentapi.NewContentClient(metaCC)
	env.ingests = ingestv1.NewIngestsClient(metaCC)
	env.leases = leasesapi.NewLeasesClient(metaCC)
	return env
}

// routedContent is the Content service as the supervisor puts it together:
// Write streams go to content-svc, the rest to the metadata plugin.
type routedContent struct {
	contentapi.ContentServer
	writes contentapi.ContentServer
}

func (r routedContent) Write(ss contentapi.Content_WriteServer) error {
	return r.writes.Write(ss)
}

// listen serves gs on the unix socket sock until the test ends.
func listen(t *testing.T, gs *grpc.Server, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
}

// dialSock returns a connection to the unix socket sock, closed when the test
// ends. Nothing need listen there yet.
func dialSock(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(pluginkit.MaxMsgSize)),
	)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// underLease returns ctx with calls carrying the lease id.
func underLease(ctx context.Context, id string) context.Context {
	return grpcmd.AppendToOutgoingContext(ctx, pluginkit.LeaseKey, id)
}

// write is one Write stream as containerd's client drives it.
type write struct {
	ref      string
	data     []byte
	expected digest.Digest // sent on the first message and the COMMIT
	labels   map[string]string
}

// run writes w through c; it returns the first reply's error (as gRPC
// sent it), or the COMMIT reply.
func (w write) run(
	ctx context.Context,
	c contentapi.ContentClient,
) (*contentapi.WriteContentResponse, error) {
	stream, err := c.Write(ctx)
	if err != nil {
		return nil, err
	}
	defer stream.CloseSend()
	total := int64(len(w.data))
	steps := []*contentapi.WriteContentRequest{
		{Action: contentapi.WriteAction_STAT, Ref: w.ref, Total: total, Expected: w.expected.String()},
		{Action: contentapi.WriteAction_WRITE, Data: w.data},
		{
			Action: contentapi.WriteAction_COMMIT, Total: total, Offset: total,
			Expected: w.expected.String(), Labels: w.labels,
		},
	}
	var resp *contentapi.WriteContentResponse
	for _, req := range steps {
		if err := stream.Send(req); err != nil {
			break
		}
		if resp, err = stream.Recv(); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// ingestPart writes data under ref and leaves the ingest unfinished.
func ingestPart(t *testing.T, ctx context.Context, c contentapi.ContentClient, ref string, data []byte) {
	t.Helper()
	ingestPartExpecting(t, ctx, c, ref, data, "")
}

// ingestPartExpecting is ingestPart with the writer naming the digest it
// expects.
func ingestPartExpecting(t *testing.T, ctx context.Context, c contentapi.ContentClient, ref string, data []byte, expected string) {
	t.Helper()
	stream, err := c.Write(ctx)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	reqs := []*contentapi.WriteContentRequest{
		{Action: contentapi.WriteAction_STAT, Ref: ref, Total: 100, Expected: expected},
		{Action: contentapi.WriteAction_WRITE, Data: data},
	}
	for _, req := range reqs {
		if err := stream.Send(req); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("Recv: %v", err)
		}
	}
	stream.CloseSend()
	// The reply to the close tells that the server let go of the ref.
	stream.Recv()
}

func checkClass(t *testing.T, what string, err, want error) {
	t.Helper()
	err = errgrpc.ToNative(err)
	switch {
	case want == nil && err != nil:
		t.Fatalf("%s: %v, want no error", what, err)
	case want != nil && !errorIs(err, want):
		t.Fatalf("%s: %v, want class %v", what, err, want)
	}
}

func errorIs(err, want error) bool {
	return errors.Is(err, want)
}

var cmpSorted = cmpopts.SortSlices(func(a, b string) bool { return a < b })

func TestContentConformance(t *testing.T) {
	for _, policy := range []string{service.SharingShared, service.SharingIsolated} {
		t.Run(policy, func(t *testing.T) {
			env := newContentEnv(t, policy)
			contenttest.Run(t,
				func(*testing.T) contentapi.ContentClient { return env.content },
				func() context.Context { return inNamespace("default") },
			)
		})
	}
}

func TestContentWriteExpectedInNamespace(t *testing.T) {
	env := newContentEnv(t, service.SharingIsolated)
	ctx := inNamespace("a")
	data := []byte("hello")
	d := digest.FromBytes(data)
	if _, err := (write{ref: "r1", data: data, expected: d}).run(ctx, env.content); err != nil {
		t.Fatalf("first write: %v", err)
	}

	_, err := (write{ref: "r2", data: data, expected: d}).run(ctx, env.content)
	checkClass(t, "second write", err, errdefs.ErrAlreadyExists)
	if want := "content " + d.String() + ": already exists"; status.Convert(err).Message() != want {
		t.Errorf("second write error = %q, want %q", err, want)
	}
}

func TestContentWriteSharing(t *testing.T) {
	data := []byte("shared bytes")
	d := digest.FromBytes(data)
	tests := []struct {
		name     string
		policy   string
		expected digest.Digest // of the write in namespace b
		data     []byte
		wantErr  error  // of the write in namespace b
		wantRecv string // digest namespace b holds afterwards, if any
	}{
		{"shared adopts", service.SharingShared, d, nil, errdefs.ErrAlreadyExists, d.String()},
		{"shared without expected writes", service.SharingShared, "", data, nil, d.String()},
		{"isolated writes", service.SharingIsolated, d, data, nil, d.String()},
		{"isolated without expected", service.SharingIsolated, "", data, nil, d.String()},
		{"isolated wrong bytes", service.SharingIsolated, d, []byte("other bytes!"), errdefs.ErrFailedPrecondition, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newContentEnv(t, tt.policy)
			if _, err := (write{ref: "r", data: data, expected: d}).run(inNamespace("a"), env.content); err != nil {
				t.Fatalf("write in a: %v", err)
			}
			ctxB := inNamespace("b")
			_, err := mustRecvErr(env.content.Read(ctxB, &contentapi.ReadContentRequest{Digest: d.String()}))
			checkClass(t, "read in b before the write", err, errdefs.ErrNotFound)
			if _, err := env.leases.Create(ctxB, &leasesapi.CreateRequest{ID: "l"}); err != nil {
				t.Fatalf("Create lease: %v", err)
			}

			w := write{ref: "r", data: tt.data, expected: tt.expected}
			resp, err := w.run(underLease(ctxB, "l"), env.content)
			checkClass(t, "write in b", err, tt.wantErr)
			if err == nil && (resp.GetDigest() != d.String() || resp.GetOffset() != int64(len(data))) {
				t.Errorf("COMMIT reply = %v, want digest %s offset %d", resp, d, len(data))
			}
			checkHeld(t, env, ctxB, tt.wantRecv)
		})
	}
}

// mustRecvErr returns the error of the first message of a server stream.
func mustRecvErr(rc contentapi.Content_ReadClient, err error) (*contentapi.ReadContentResponse, error) {
	if err != nil {
		return nil, err
	}
	return rc.Recv()
}

// checkHeld checks that namespace ctx holds blob want (none when empty),
// attached to lease l.
func checkHeld(t *testing.T, env *contentEnv, ctx context.Context, want string) {
	t.Helper()
	var got []string
	stream, err := env.content.List(ctx, &contentapi.ListContentRequest{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			break
		}
		for _, info := range resp.GetInfo() {
			got = append(got, info.GetDigest())
		}
	}
	var wantList, wantRes []string
	if want != "" {
		wantList = []string{want}
		wantRes = []string{"content " + want}
	}
	if diff := cmp.Diff(wantList, got); diff != "" {
		t.Errorf("blobs held (-want +got):\n%s", diff)
	}
	res, err := env.leases.ListResources(ctx, &leasesapi.ListResourcesRequest{ID: "l"})
	if err != nil {
		t.Fatalf("ListResources: %v", err)
	}
	var gotRes []string
	for _, r := range res.GetResources() {
		if r.GetType() != "ingests" {
			gotRes = append(gotRes, r.GetType()+" "+r.GetID())
		}
	}
	if diff := cmp.Diff(wantRes, gotRes); diff != "" {
		t.Errorf("lease resources (-want +got):\n%s", diff)
	}
}

func TestContentWriteCommit(t *testing.T) {
	data := []byte("labelled")
	d := digest.FromBytes(data)
	tests := []struct {
		name    string
		lease   string
		labels  map[string]string
		wantErr error
	}{
		{name: "labels and lease", lease: "l", labels: map[string]string{"k": "v"}},
		{name: "no lease", labels: map[string]string{"k": "v"}},
		{name: "missing lease", lease: "nope", wantErr: errdefs.ErrNotFound},
		{
			name:    "label too big",
			labels:  map[string]string{"k": strings.Repeat("v", plabels.MaxSize)},
			wantErr: errdefs.ErrInvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newContentEnv(t, service.SharingShared)
			ctx := inNamespace("ns")
			if _, err := env.leases.Create(ctx, &leasesapi.CreateRequest{ID: "l"}); err != nil {
				t.Fatalf("Create lease: %v", err)
			}
			wctx := ctx
			if tt.lease != "" {
				wctx = underLease(ctx, tt.lease)
			}

			_, err := (write{ref: "r", data: data, labels: tt.labels}).run(wctx, env.content)
			checkClass(t, "write", err, tt.wantErr)
			info, ierr := env.content.Info(ctx, &contentapi.InfoRequest{Digest: d.String()})
			if tt.wantErr != nil {
				checkClass(t, "Info after a failed write", ierr, errdefs.ErrNotFound)
				return
			}
			checkClass(t, "Info", ierr, nil)
			want := &contentapi.Info{Digest: d.String(), Size: int64(len(data)), Labels: tt.labels}
			opts := cmp.Options{
				protocmp.Transform(),
				protocmp.IgnoreFields(&contentapi.Info{}, "created_at", "updated_at"),
			}
			if diff := cmp.Diff(want, info.GetInfo(), opts); diff != "" {
				t.Errorf("Info (-want +got):\n%s", diff)
			}
			res, _ := env.leases.ListResources(ctx, &leasesapi.ListResourcesRequest{ID: "l"})
			if wantN := map[bool]int{true: 1}[tt.lease != ""]; len(res.GetResources()) != wantN {
				t.Errorf("lease resources = %v, want %d (the blob, the ingest gone)", res.GetResources(), wantN)
			}
			checkEvent(t, env.pub, "ns", service.TopicContentCreate,
				&eventsapi.ContentCreate{Digest: d.String(), Size: int64(len(data))})
		})
	}
}

// checkEvent checks that the last event published is want.
func checkEvent(t *testing.T, pub *recordingPublisher, ns, topic string, want proto.Message) {
	t.Helper()
	evs := pub.take()
	if len(evs) == 0 {
		t.Fatalf("no event published, want %s", topic)
	}
	got := evs[len(evs)-1]
	if diff := cmp.Diff(published{NS: ns, Topic: topic, Event: want}, got, protocmp.Transform()); diff != "" {
		t.Errorf("event (-want +got):\n%s", diff)
	}
}

func TestContentWriteWithoutRefOrNamespace(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	_, err := (write{data: []byte("x")}).run(inNamespace("ns"), env.content)
	checkClass(t, "write without ref", err, errdefs.ErrInvalidArgument)
	_, err = (write{ref: "r", data: []byte("x")}).run(context.Background(), env.content)
	checkClass(t, "write without namespace", err, errdefs.ErrFailedPrecondition)
	_, err = env.content.Info(context.Background(), &contentapi.InfoRequest{Digest: digest.FromString("x").String()})
	checkClass(t, "info without namespace", err, errdefs.ErrFailedPrecondition)
}

func TestContentStatuses(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctxA, ctxB := inNamespace("a"), inNamespace("b")
	ingestPart(t, ctxA, env.content, "r1", []byte("12345"))
	want := digest.FromString("the whole of r2").String()
	ingestPartExpecting(t, ctxA, env.content, "r2", []byte("12"), want)
	ingestPart(t, ctxB, env.content, "r3", []byte("123"))

	refs := func(filters ...string) []string {
		t.Helper()
		resp, err := env.content.ListStatuses(ctxA, &contentapi.ListStatusesRequest{Filters: filters})
		if err != nil {
			t.Fatalf("ListStatuses(%q): %v", filters, err)
		}
		var list []string
		for _, st := range resp.GetStatuses() {
			list = append(list, st.GetRef())
		}
		return list
	}
	if diff := cmp.Diff([]string{"r1", "r2"}, refs(""), cmpSorted); diff != "" {
		t.Errorf("ListStatuses in a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"r1"}, refs("ref==r1")); diff != "" {
		t.Errorf("ListStatuses(ref==r1) (-want +got):\n%s", diff)
	}
	// The digest a writer expects shows.
	list, err := env.content.ListStatuses(ctxA, &contentapi.ListStatusesRequest{Filters: []string{"ref==r2"}})
	if err != nil || len(list.GetStatuses()) != 1 || list.GetStatuses()[0].GetExpected() != want {
		t.Errorf("ListStatuses(ref==r2) = %v, %v; want r2 expecting %s", list.GetStatuses(), err, want)
	}
	if st, err := env.content.Status(ctxA, &contentapi.StatusRequest{Ref: "r2"}); err != nil || st.GetStatus().GetExpected() != want {
		t.Errorf("Status(r2) = %v, %v; want expected %s", st.GetStatus(), err, want)
	}

	st, err := env.content.Status(ctxA, &contentapi.StatusRequest{Ref: "r1"})
	checkClass(t, "Status", err, nil)
	if st.GetStatus().GetRef() != "r1" || st.GetStatus().GetOffset() != 5 {
		t.Errorf("Status = %v, want ref r1 at offset 5", st.GetStatus())
	}
	_, err = env.content.Status(ctxB, &contentapi.StatusRequest{Ref: "r1"})
	checkClass(t, "Status of another namespace's ref", err, errdefs.ErrNotFound)

	_, err = env.content.Abort(ctxA, &contentapi.AbortRequest{Ref: "r1"})
	checkClass(t, "Abort", err, nil)
	if diff := cmp.Diff([]string{"r2"}, refs()); diff != "" {
		t.Errorf("ListStatuses after Abort (-want +got):\n%s", diff)
	}
}

func TestContentDeleteCollects(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctx := context.Background()
	data := []byte("to be deleted")
	d := digest.FromBytes(data)
	// a holds the blob as a root; b adopts it under a lease.
	if _, err := env.leases.Create(inNamespace("b"), &leasesapi.CreateRequest{ID: "l"}); err != nil {
		t.Fatalf("Create lease: %v", err)
	}
	w := write{ref: "r", data: data, expected: d, labels: map[string]string{metadata.LabelRoot: "x"}}
	if _, err := w.run(inNamespace("a"), env.content); err != nil {
		t.Fatalf("write in a: %v", err)
	}
	_, err := w.run(underLease(inNamespace("b"), "l"), env.content)
	checkClass(t, "write in b", err, errdefs.ErrAlreadyExists)

	for i, ns := range []string{"a", "b"} {
		_, err := env.content.Delete(inNamespace(ns), &contentapi.DeleteContentRequest{Digest: d.String()})
		checkClass(t, "Delete in "+ns, err, nil)
		checkEvent(t, env.pub, ns, service.TopicContentDelete, &eventsapi.ContentDelete{Digest: d.String()})
		if err := env.gc.Run(ctx); err != nil {
			t.Fatalf("Run: %v", err)
		}
		_, err = env.raw.Info(ctx, &contentapi.InfoRequest{Digest: d.String()})
		if i == 0 {
			checkClass(t, "bytes while b holds them", err, nil)
		} else {
			checkClass(t, "bytes after the last holder", err, errdefs.ErrNotFound)
		}
	}
	_, err = env.content.Delete(inNamespace("a"), &contentapi.DeleteContentRequest{Digest: d.String()})
	checkClass(t, "Delete again", err, errdefs.ErrNotFound)
}

func TestContentUpdateAndList(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctx := inNamespace("ns")
	data := []byte("x")
	d := digest.FromBytes(data)
	if _, err := (write{ref: "r", data: data}).run(ctx, env.content); err != nil {
		t.Fatalf("write: %v", err)
	}

	upd := func(labels map[string]string, paths ...string) (*contentapi.UpdateResponse, error) {
		return env.content.Update(ctx, &contentapi.UpdateRequest{
			Info:       &contentapi.Info{Digest: d.String(), Labels: labels},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
		})
	}
	resp, err := upd(map[string]string{"a": "1", "b": "2"}, "labels.a")
	checkClass(t, "Update labels.a", err, nil)
	if diff := cmp.Diff(map[string]string{"a": "1"}, resp.GetInfo().GetLabels()); diff != "" {
		t.Errorf("labels after Update (-want +got):\n%s", diff)
	}
	_, err = upd(nil, "size")
	checkClass(t, "Update size", err, errdefs.ErrInvalidArgument)

	for filter, want := range map[string]int{"labels.a==1": 1, "labels.a==2": 0, "size==1": 1} {
		stream, err := env.content.List(ctx, &contentapi.ListContentRequest{Filters: []string{filter}})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		var n int
		for {
			resp, err := stream.Recv()
			if err != nil {
				break
			}
			n += len(resp.GetInfo())
		}
		if n != want {
			t.Errorf("List(%q) = %d blobs, want %d", filter, n, want)
		}
	}
}

// TestContentWritesRaceCollections writes blobs, some held and some not,
// while collections run: every record left must have its bytes.
func TestContentWritesRaceCollections(t *testing.T) {
	env := newContentEnv(t, service.SharingShared)
	ctx := inNamespace("ns")
	stop := make(chan struct{})
	collected := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				collected <- nil
				return
			default:
			}
			if err := env.gc.Run(context.Background()); err != nil {
				collected <- err
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 10 {
				data := []byte(fmt.Sprintf("blob %d %d", g, i))
				var labels map[string]string
				if i%2 == 0 {
					labels = map[string]string{metadata.LabelRoot: "x"}
				}
				w := write{ref: fmt.Sprintf("r%d-%d", g, i), data: data, labels: labels}
				if _, err := w.run(ctx, env.content); err != nil {
					t.Errorf("write %d/%d: %v", g, i, err)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-collected; err != nil {
		t.Fatalf("Run: %v", err)
	}

	stream, err := env.content.List(ctx, &contentapi.ListContentRequest{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var roots int
	for {
		resp, err := stream.Recv()
		if err != nil {
			break
		}
		for _, info := range resp.GetInfo() {
			if _, ok := info.GetLabels()[metadata.LabelRoot]; ok {
				roots++
			}
			_, err := env.raw.Info(context.Background(), &contentapi.InfoRequest{Digest: info.GetDigest()})
			checkClass(t, "bytes of "+info.GetDigest(), err, nil)
		}
	}
	if roots != 20 {
		t.Errorf("blobs labelled as roots = %d, want 20", roots)
	}
}
