package service

import (
	"context"
	"errors"
	"io"
	"strings"

	eventsapi "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/filters"
	"corral.dev/pluginkit/lane"
)

// Event topics of the Content service.
const (
	TopicContentCreate = "/content/create"
	TopicContentDelete = metadata.TopicContentDelete
)

// listBatch is how many records one List response carries at most.
const listBatch = 100

// ContentConfig is what the Content service is built on.
type ContentConfig struct {
	// Store keeps the namespaced records.
	Store *metadata.ContentStore
	// Blobs is the raw, un-namespaced content store of the content plugin.
	Blobs contentapi.ContentClient
	// GC is told about deletes and guards writers against collections.
	GC *metadata.GC
	// Events takes /content/create and /content/delete.
	Events pluginkit.Publisher
	// Policy is SharingShared or SharingIsolated.
	Policy string
	// Log takes one debug line per request.
	Log zerolog.Logger
}

// Content serves containerd.services.content.v1.Content: the records and
// labels of each namespace from the metadata database, the bytes from the
// content plugin, whose ingest refs are "<namespace>/<ref>". Write is not
// served here: the content plugin takes the Write streams and records them
// through [Ingests].
type Content struct {
	contentapi.UnimplementedContentServer
	ContentConfig
	cache *chunkCache
}

// NewContent returns the Content service.
func NewContent(cfg ContentConfig) *Content {
	return &Content{ContentConfig: cfg, cache: newChunkCache()}
}

// Register registers the service on gs.
func (s *Content) Register(gs grpc.ServiceRegistrar) {
	contentapi.RegisterContentServer(gs, s)
}

// Info implements contentapi.ContentServer.
func (s *Content) Info(
	ctx context.Context,
	req *contentapi.InfoRequest,
) (*contentapi.InfoResponse, error) {
	ns, err := requireNamespace(ctx)
	var info *contentapi.Info
	if err == nil {
		info, err = s.Store.Info(ctx, ns, req.GetDigest())
	}
	s.logRequest("content info", ns, "digest", req.GetDigest(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &contentapi.InfoResponse{Info: info}, nil
}

// Update implements contentapi.ContentServer.
func (s *Content) Update(
	ctx context.Context,
	req *contentapi.UpdateRequest,
) (*contentapi.UpdateResponse, error) {
	if req.GetInfo() == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument,
			"update content: no info in request")
	}
	ns, err := requireNamespace(ctx)
	var info *contentapi.Info
	if err == nil {
		paths := req.GetUpdateMask().GetPaths()
		info, err = s.Store.Update(withCall(ctx), ns, req.GetInfo(), paths)
	}
	s.logRequest("update content", ns, "digest", req.GetInfo().GetDigest(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &contentapi.UpdateResponse{Info: info}, nil
}

// List implements contentapi.ContentServer.
func (s *Content) List(req *contentapi.ListContentRequest, ss contentapi.Content_ListServer) error {
	ctx := ss.Context()
	ns, err := requireNamespace(ctx)
	var infos []*contentapi.Info
	if err == nil {
		err = s.Store.Walk(ctx, ns, func(info *contentapi.Info) error {
			infos = append(infos, info)
			return nil
		}, req.GetFilters()...)
	}
	s.logRequest("list content", ns, "", "", err)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}

	for len(infos) > 0 {
		n := min(len(infos), listBatch)
		if err := ss.Send(&contentapi.ListContentResponse{Info: infos[:n]}); err != nil {
			return err
		}
		infos = infos[n:]
	}
	return nil
}

// Delete implements contentapi.ContentServer. The record goes now; the
// bytes go with the next collection if no namespace holds them.
func (s *Content) Delete(
	ctx context.Context,
	req *contentapi.DeleteContentRequest,
) (*emptypb.Empty, error) {
	ns, err := requireNamespace(ctx)
	if err == nil {
		err = s.Store.Delete(withCall(ctx), ns, req.GetDigest())
	}
	s.logRequest("delete content", ns, "digest", req.GetDigest(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	s.publish(ctx, ns, TopicContentDelete, &eventsapi.ContentDelete{Digest: req.GetDigest()})
	s.GC.Schedule()
	return &emptypb.Empty{}, nil
}

// Read implements contentapi.ContentServer.
func (s *Content) Read(req *contentapi.ReadContentRequest, ss contentapi.Content_ReadServer) error {
	ctx := ss.Context()
	ns, err := requireNamespace(ctx)
	var info *contentapi.Info
	if err == nil {
		info, err = s.Store.Info(ctx, ns, req.GetDigest())
	}
	if err == nil {
		err = s.read(ctx, req, info.GetSize(), ss)
	}
	if lane.IsRedirect(err) {
		s.logRequest("read content from the content plugin", ns, "digest", req.GetDigest(), nil)
		return err
	}
	s.logRequest("read content", ns, "digest", req.GetDigest(), err)
	return errgrpc.ToGRPC(err)
}

func (s *Content) proxyRead(
	ctx context.Context,
	req *contentapi.ReadContentRequest,
	ss contentapi.Content_ReadServer,
) error {
	rc, err := s.Blobs.Read(ctx, req)
	if err != nil {
		return errgrpc.ToNative(err)
	}
	for {
		resp, err := rc.Recv()
		if err != nil {
			return upstreamEnd(err)
		}
		if err := ss.Send(resp); err != nil {
			return err
		}
	}
}

// Status implements contentapi.ContentServer.
func (s *Content) Status(
	ctx context.Context,
	req *contentapi.StatusRequest,
) (*contentapi.StatusResponse, error) {
	ns, err := requireNamespace(ctx)
	var resp *contentapi.StatusResponse
	if err == nil {
		resp, err = s.Blobs.Status(ctx, &contentapi.StatusRequest{Ref: pluginkit.IngestRef(ns, req.GetRef())})
		err = errgrpc.ToNative(err)
	}
	s.logRequest("content status", ns, "key", req.GetRef(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if st := resp.GetStatus(); st != nil {
		st.Ref = strings.TrimPrefix(st.GetRef(), ns+"/")
		expected, err := s.Store.IngestsExpected(ctx, ns)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		st.Expected = expected[st.Ref]
	}
	return resp, nil
}

// ListStatuses implements contentapi.ContentServer. Clients see the
// ingests of their namespace only, under their own refs.
func (s *Content) ListStatuses(
	ctx context.Context,
	req *contentapi.ListStatusesRequest,
) (*contentapi.ListStatusesResponse, error) {
	ns, err := requireNamespace(ctx)
	var list []*contentapi.Status
	if err == nil {
		list, err = s.statuses(ctx, ns, req.GetFilters())
	}
	s.logRequest("list content statuses", ns, "", "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &contentapi.ListStatusesResponse{Statuses: list}, nil
}

func (s *Content) statuses(
	ctx context.Context,
	ns string,
	fs []string,
) ([]*contentapi.Status, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	resp, err := s.Blobs.ListStatuses(ctx, &contentapi.ListStatusesRequest{})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	expected, err := s.Store.IngestsExpected(ctx, ns)
	if err != nil {
		return nil, err
	}
	var list []*contentapi.Status
	for _, st := range resp.GetStatuses() {
		ref, ok := strings.CutPrefix(st.GetRef(), ns+"/")
		if !ok {
			continue
		}
		st.Ref, st.Expected = ref, expected[ref]
		if filter.Match(statusAdaptor(st)) {
			list = append(list, st)
		}
	}
	return list, nil
}

// statusAdaptor exposes an ingest status to filters: ref.
func statusAdaptor(st *contentapi.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 1 && fp[0] == "ref" {
			return st.GetRef(), true
		}
		return "", false
	})
}

// Abort implements contentapi.ContentServer.
func (s *Content) Abort(ctx context.Context, req *contentapi.AbortRequest) (*emptypb.Empty, error) {
	ns, err := requireNamespace(ctx)
	if err == nil {
		_, err = s.Blobs.Abort(ctx, &contentapi.AbortRequest{Ref: pluginkit.IngestRef(ns, req.GetRef())})
		err = errgrpc.ToNative(err)
	}
	if err == nil {
		err = s.Store.ForgetIngest(ctx, ns, req.GetRef())
	}
	s.logRequest("abort ingest", ns, "key", req.GetRef(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *Content) publish(ctx context.Context, ns, topic string, event proto.Message) {
	publishEvent(ctx, s.Events, s.Log, ns, topic, event)
}

// logRequest logs one request at debug level; field ("digest" or "key")
// names what value is.
func (s *Content) logRequest(msg, ns, field, value string, err error) {
	ev := s.Log.Debug().Str("namespace", ns)
	if value != "" {
		ev = ev.Str(field, value)
	}
	ev.Err(err).Msg(msg)
}

// upstreamEnd turns the end of a stream from the content plugin into the
// end of the proxied stream: nil at EOF, the error with its class
// otherwise.
func upstreamEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return errgrpc.ToNative(err)
}
