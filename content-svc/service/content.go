package service

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/content-svc/store"
	"corral.dev/pluginkit/filters"
	"corral.dev/pluginkit/lane"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// Sizes of the messages the service sends.
const (
	// ReadChunkSize is the most data one Read reply carries.
	ReadChunkSize = 1 << 20
	// smallChunk is the most data a reply carries when less than
	// smallReadMax is left to send: the reply then fits gRPC's 32 KiB
	// buffer tier.
	smallChunk   = 32<<10 - 64
	smallReadMax = 256 << 10
	// listBatch is the most infos one List reply carries.
	listBatch = 128
)

// chunkSize returns how many of the n bytes left to read the next Read
// reply carries. grpc-go encodes and receives each message in a pooled
// buffer of the next size tier (..., 32 KiB, 1 MiB), cleared in full, in
// every process the reply crosses: a reply just over 32 KiB costs a 1 MiB
// clear each time. ctr reads 32 KiB per call, so small reads go out in
// pieces that fit the 32 KiB tier.
func chunkSize(n int64) int64 {
	if n >= smallReadMax {
		return min(n, ReadChunkSize)
	}
	return min(n, smallChunk)
}

// readBufs holds the buffers of Read streams.
var readBufs = sync.Pool{New: func() any { return new([ReadChunkSize]byte) }}

// Content serves containerd.services.content.v1.Content on a raw store:
// refs are opaque keys, labels are neither kept nor returned, and the
// namespace header is ignored. The metadata plugin adds those on top. Only
// Write may be namespaced (see [WithIngests]): in the daemon the public
// Write streams come here, and the metadata plugin keeps their records.
//
// Where containerd's own service leaves room, this one behaves as follows:
//   - Update changes nothing and answers with the blob's info.
//   - A Write stream holds its ref until it ends; a second stream on the
//     ref gets Unavailable at once, and so does Abort of a held ref.
//   - AlreadyExists on a COMMIT comes only after the size and digest were
//     checked: the bytes sent were the existing blob's.
//   - Read replies carry at most ReadChunkSize bytes, with offsets counted
//     from the requested offset; reads under 256 KiB go out in pieces
//     under 32 KiB (see chunkSize).
//   - List and ListStatuses take containerd's filters on digest and size,
//     and on ref, expected, offset and total.
type Content struct {
	api.UnimplementedContentServer

	store   *store.Store
	log     zerolog.Logger
	metrics *metrics
	ingests ingestv1.IngestsClient // nil: raw writes
}

// Opt configures a Content made by [NewContent].
type Opt func(*Content)

// WithIngests makes Write streams namespaced ones whose ingests and blobs
// are recorded through cl, the metadata plugin's Ingests service.
func WithIngests(cl ingestv1.IngestsClient) Opt {
	return func(c *Content) { c.ingests = cl }
}

// NewContent returns the Content service on s.
func NewContent(s *store.Store, log zerolog.Logger, opts ...Opt) *Content {
	c := &Content{store: s, log: log, metrics: newMetrics()}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Register registers the service on gs.
func (c *Content) Register(gs grpc.ServiceRegistrar) {
	api.RegisterContentServer(gs, c)
}

// logRequest logs one handled request at Debug.
func (c *Content) logRequest(msg, dgst, ref string, err error) {
	ev := c.log.Debug()
	if dgst != "" {
		ev = ev.Str("digest", dgst)
	}
	if ref != "" {
		ev = ev.Str("key", ref)
	}
	ev.Err(err).Msg(msg)
}

// Info implements api.ContentServer.
func (c *Content) Info(_ context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	info, err := c.store.Info(digest.Digest(req.GetDigest()))
	c.logRequest("info", req.GetDigest(), "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.InfoResponse{Info: toInfo(info)}, nil
}

// Update implements api.ContentServer. The raw store keeps no labels, so
// Update only answers with the blob's info.
func (c *Content) Update(_ context.Context, req *api.UpdateRequest) (*api.UpdateResponse, error) {
	info, err := c.store.Info(digest.Digest(req.GetInfo().GetDigest()))
	c.logRequest("update", req.GetInfo().GetDigest(), "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.UpdateResponse{Info: toInfo(info)}, nil
}

func toInfo(i store.Info) *api.Info {
	return &api.Info{
		Digest:    i.Digest.String(),
		Size:      i.Size,
		CreatedAt: timestamppb.New(i.CreatedAt),
		UpdatedAt: timestamppb.New(i.UpdatedAt),
	}
}

// List implements api.ContentServer. Filters may select on digest and
// size; a blob has no labels here.
func (c *Content) List(req *api.ListContentRequest, stream api.Content_ListServer) error {
	err := c.list(req.GetFilters(), stream)
	c.logRequest("list", "", "", err)
	return errgrpc.ToGRPC(err)
}

func (c *Content) list(fs []string, stream api.Content_ListServer) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return fmt.Errorf("parse filters: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	batch := make([]*api.Info, 0, listBatch)
	send := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&api.ListContentResponse{Info: batch})
		batch = batch[:0]
		return err
	}
	err = c.store.Walk(func(i store.Info) error {
		if !filter.Match(infoAdaptor(i)) {
			return nil
		}
		if batch = append(batch, toInfo(i)); len(batch) == listBatch {
			return send()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return send()
}

// infoAdaptor exposes a blob's info to a filter.
func infoAdaptor(i store.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) != 1 {
			return "", false
		}
		switch fieldpath[0] {
		case "digest":
			return i.Digest.String(), true
		case "size":
			return strconv.FormatInt(i.Size, 10), true
		}
		return "", false
	})
}

// Delete implements api.ContentServer.
func (c *Content) Delete(_ context.Context, req *api.DeleteContentRequest) (*emptypb.Empty, error) {
	err := c.store.Delete(digest.Digest(req.GetDigest()))
	c.logRequest("delete", req.GetDigest(), "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Read implements api.ContentServer: size 0 reads to the end, as does a
// size past it; an offset past the end is out of range.
func (c *Content) Read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	err := c.read(req, stream)
	c.logRequest("read", req.GetDigest(), "", err)
	return errgrpc.ToGRPC(err)
}

func (c *Content) read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	f, info, err := c.store.Open(digest.Digest(req.GetDigest()))
	if err != nil {
		return err
	}
	defer f.Close()

	off, end := req.GetOffset(), info.Size
	if off < 0 || off > end {
		return fmt.Errorf("read content %s at %d: size is %d: %w",
			info.Digest, off, end, errdefs.ErrOutOfRange)
	}
	if size := req.GetSize(); size > 0 && size < end-off {
		end = off + size
	}
	// Reply offsets count from the requested offset, as containerd's do.
	start := off
	// On a lane the bytes go from the file to the socket without a copy
	// here (lane.SendFile); elsewhere they are read into a buffer.
	var head []byte
	for off < end {
		n := int(chunkSize(end - off))
		head = readHead(head[:0], off-start, n)
		sent, err := lane.SendFile(stream.Context(), head, f, off, n)
		if !sent {
			break
		}
		if err != nil {
			return err
		}
		c.metrics.read.Add(float64(n))
		off += int64(n)
	}
	buf := readBufs.Get().(*[ReadChunkSize]byte)
	defer readBufs.Put(buf)
	for off < end {
		n, err := f.ReadAt(buf[:chunkSize(end-off)], off)
		if n > 0 {
			resp := &api.ReadContentResponse{Offset: off - start, Data: buf[:n]}
			if serr := stream.Send(resp); serr != nil {
				return serr
			}
			c.metrics.read.Add(float64(n))
			off += int64(n)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readHead appends to b the encoding of a ReadContentResponse up to its
// data: the offset, then the tag and length of n bytes of data.
func readHead(b []byte, offset int64, n int) []byte {
	if offset != 0 {
		b = protowire.AppendTag(b, offsetField, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(offset))
	}
	b = protowire.AppendTag(b, dataField, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// The field numbers of ReadContentResponse.
const (
	offsetField protowire.Number = 1
	dataField   protowire.Number = 2
)

// Status implements api.ContentServer.
func (c *Content) Status(_ context.Context, req *api.StatusRequest) (*api.StatusResponse, error) {
	st, err := c.store.Status(req.GetRef())
	c.logRequest("status", "", req.GetRef(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.StatusResponse{Status: toStatus(st)}, nil
}

// ListStatuses implements api.ContentServer. Filters select on ref,
// expected, offset and total.
func (c *Content) ListStatuses(
	_ context.Context,
	req *api.ListStatusesRequest,
) (*api.ListStatusesResponse, error) {
	list, err := c.store.ListStatuses(req.GetFilters()...)
	c.logRequest("list statuses", "", "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &api.ListStatusesResponse{Statuses: make([]*api.Status, len(list))}
	for i, st := range list {
		resp.Statuses[i] = toStatus(st)
	}
	return resp, nil
}

func toStatus(st store.Status) *api.Status {
	return &api.Status{
		Ref:       st.Ref,
		Offset:    st.Offset,
		Total:     st.Total,
		Expected:  st.Expected.String(),
		StartedAt: timestamppb.New(st.StartedAt),
		UpdatedAt: timestamppb.New(st.UpdatedAt),
	}
}

// Abort implements api.ContentServer. An ingest that a Write stream holds
// is Unavailable.
func (c *Content) Abort(_ context.Context, req *api.AbortRequest) (*emptypb.Empty, error) {
	err := c.store.Abort(req.GetRef())
	c.logRequest("abort", "", req.GetRef(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}
