package contenttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
)

// memChunk is the most data one Read reply of a MemStore carries.
const memChunk = 1 << 20

// MemStore is a raw Content service held in memory, for tests of the
// layers above content-svc, which may not import it (plugins never import
// each other). It keeps content-svc's contract, which the conformance
// suite holds it to: no labels and no namespaces; a Write stream holds its
// ref until it ends and a second one gets Unavailable, as does Abort of a
// held ref; what a stream wrote stays for the next writer of the ref;
// offset 0 starts over and a gap is OutOfRange; a COMMIT checks size and
// digest (FailedPrecondition) before AlreadyExists; Read offsets count from
// the requested offset.
type MemStore struct {
	contentapi.UnimplementedContentServer

	mu      sync.Mutex
	blobs   map[digest.Digest]*memBlob
	ingests map[string]*memIngest
}

type memBlob struct {
	data             []byte
	created, updated time.Time
}

type memIngest struct {
	ref              string
	data             []byte
	total            int64
	expected         digest.Digest
	started, updated time.Time
	held             bool
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{
		blobs:   make(map[digest.Digest]*memBlob),
		ingests: make(map[string]*memIngest),
	}
}

// validDigest is content-svc's rule: a well-formed sha256, sha384 or
// sha512 digest.
func validDigest(s string) (digest.Digest, error) {
	d := digest.Digest(s)
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("parse digest %q: %w: %w", s, err, errdefs.ErrInvalidArgument)
	}
	switch d.Algorithm() {
	case digest.SHA256, digest.SHA384, digest.SHA512:
		return d, nil
	}
	return "", fmt.Errorf("parse digest %q: unsupported algorithm: %w", s, errdefs.ErrInvalidArgument)
}

// blob returns the blob s names, or the error the service answers with.
func (m *MemStore) blob(s string) (digest.Digest, *memBlob, error) {
	d, err := validDigest(s)
	if err != nil {
		return "", nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return "", nil, fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
	}
	return d, b, nil
}

func (b *memBlob) info(d digest.Digest) *contentapi.Info {
	return &contentapi.Info{
		Digest:    d.String(),
		Size:      int64(len(b.data)),
		CreatedAt: timestamppb.New(b.created),
		UpdatedAt: timestamppb.New(b.updated),
	}
}

// Info implements contentapi.ContentServer.
func (m *MemStore) Info(_ context.Context, req *contentapi.InfoRequest) (*contentapi.InfoResponse, error) {
	d, b, err := m.blob(req.GetDigest())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &contentapi.InfoResponse{Info: b.info(d)}, nil
}

// Update implements contentapi.ContentServer: there are no labels to
// change, so it answers with the blob's info.
func (m *MemStore) Update(_ context.Context, req *contentapi.UpdateRequest) (*contentapi.UpdateResponse, error) {
	d, b, err := m.blob(req.GetInfo().GetDigest())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &contentapi.UpdateResponse{Info: b.info(d)}, nil
}

// List implements contentapi.ContentServer, with filters on digest and
// size.
func (m *MemStore) List(req *contentapi.ListContentRequest, stream contentapi.Content_ListServer) error {
	filter, err := filters.ParseAll(req.GetFilters()...)
	if err != nil {
		return errgrpc.ToGRPC(fmt.Errorf("parse filters: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	var infos []*contentapi.Info
	m.mu.Lock()
	for d, b := range m.blobs {
		size := strconv.Itoa(len(b.data))
		if filter.Match(fieldsOf(map[string]string{"digest": d.String(), "size": size})) {
			infos = append(infos, b.info(d))
		}
	}
	m.mu.Unlock()
	if len(infos) == 0 {
		return nil
	}
	return stream.Send(&contentapi.ListContentResponse{Info: infos})
}

// fieldsOf exposes fields to a filter.
func fieldsOf(fields map[string]string) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) != 1 {
			return "", false
		}
		v, ok := fields[path[0]]
		return v, ok
	})
}

// Delete implements contentapi.ContentServer.
func (m *MemStore) Delete(_ context.Context, req *contentapi.DeleteContentRequest) (*emptypb.Empty, error) {
	d, _, err := m.blob(req.GetDigest())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	m.mu.Lock()
	delete(m.blobs, d)
	m.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// Read implements contentapi.ContentServer: size 0, or one past the end,
// reads to the end; an offset past the end is OutOfRange.
func (m *MemStore) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	d, b, err := m.blob(req.GetDigest())
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	// The bytes of a committed blob never change.
	data := b.data
	off, end := req.GetOffset(), int64(len(data))
	if off < 0 || off > end {
		return errgrpc.ToGRPC(fmt.Errorf("read content %s at %d: size is %d: %w", d, off, end, errdefs.ErrOutOfRange))
	}
	if size := req.GetSize(); size > 0 && size < end-off {
		end = off + size
	}
	for start := off; off < end; {
		n := min(end-off, memChunk)
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: off - start, Data: data[off : off+n]}); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func (in *memIngest) status() *contentapi.Status {
	return &contentapi.Status{
		Ref:       in.ref,
		Offset:    int64(len(in.data)),
		Total:     in.total,
		Expected:  in.expected.String(),
		StartedAt: timestamppb.New(in.started),
		UpdatedAt: timestamppb.New(in.updated),
	}
}

// Status implements contentapi.ContentServer.
func (m *MemStore) Status(_ context.Context, req *contentapi.StatusRequest) (*contentapi.StatusResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.ingests[req.GetRef()]
	if !ok {
		return nil, errgrpc.ToGRPC(fmt.Errorf("ingest %s: %w", req.GetRef(), errdefs.ErrNotFound))
	}
	return &contentapi.StatusResponse{Status: in.status()}, nil
}

// ListStatuses implements contentapi.ContentServer, with filters on ref,
// expected, offset and total.
func (m *MemStore) ListStatuses(
	_ context.Context,
	req *contentapi.ListStatusesRequest,
) (*contentapi.ListStatusesResponse, error) {
	filter, err := filters.ParseAll(req.GetFilters()...)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("parse filters: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	resp := &contentapi.ListStatusesResponse{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, in := range m.ingests {
		st := in.status()
		if filter.Match(fieldsOf(map[string]string{
			"ref": st.Ref, "expected": st.Expected,
			"offset": strconv.FormatInt(st.Offset, 10), "total": strconv.FormatInt(st.Total, 10),
		})) {
			resp.Statuses = append(resp.Statuses, st)
		}
	}
	slices.SortFunc(resp.Statuses, func(a, b *contentapi.Status) int { return cmpString(a.Ref, b.Ref) })
	return resp, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Abort implements contentapi.ContentServer.
func (m *MemStore) Abort(_ context.Context, req *contentapi.AbortRequest) (*emptypb.Empty, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.ingests[req.GetRef()]
	switch {
	case !ok:
		return nil, errgrpc.ToGRPC(fmt.Errorf("abort ingest %s: %w", req.GetRef(), errdefs.ErrNotFound))
	case in.held:
		return nil, errgrpc.ToGRPC(fmt.Errorf("abort ingest %s: held by a writer: %w", req.GetRef(), errdefs.ErrUnavailable))
	}
	delete(m.ingests, req.GetRef())
	return &emptypb.Empty{}, nil
}

// Write implements contentapi.ContentServer.
func (m *MemStore) Write(stream contentapi.Content_WriteServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	in, err := m.openIngest(req)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer m.release(in)
	committed := false
	for {
		resp, err := m.handle(in, req, &committed)
		if err != nil {
			return errgrpc.ToGRPC(err)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		if req, err = stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// openIngest takes the ref the first message of a stream names, creating
// its ingest or resuming it.
func (m *MemStore) openIngest(req *contentapi.WriteContentRequest) (*memIngest, error) {
	ref := req.GetRef()
	if ref == "" {
		return nil, fmt.Errorf("open writer: first message must have a ref: %w", errdefs.ErrInvalidArgument)
	}
	var expected digest.Digest
	if req.GetExpected() != "" {
		d, err := validDigest(req.GetExpected())
		if err != nil {
			return nil, err
		}
		expected = d
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	in, ok := m.ingests[ref]
	if expected != "" && m.blobs[expected] != nil {
		if ok && !in.held {
			delete(m.ingests, ref)
		}
		return nil, fmt.Errorf("open writer %s: content %s: %w", ref, expected, errdefs.ErrAlreadyExists)
	}
	if ok && in.held {
		return nil, fmt.Errorf("open writer %s: held by another writer: %w", ref, errdefs.ErrUnavailable)
	}
	if !ok {
		now := time.Now()
		in = &memIngest{ref: ref, started: now, updated: now}
		m.ingests[ref] = in
	}
	if req.GetTotal() > 0 {
		in.total = req.GetTotal()
	}
	if expected != "" {
		in.expected = expected
	}
	in.held = true
	return in, nil
}

// release ends a stream's hold on its ingest.
func (m *MemStore) release(in *memIngest) {
	m.mu.Lock()
	in.held = false
	m.mu.Unlock()
}

// handle applies one message of a stream and returns the reply to it.
func (m *MemStore) handle(in *memIngest, req *contentapi.WriteContentRequest, committed *bool) (*contentapi.WriteContentResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if req.GetTotal() > 0 {
		in.total = req.GetTotal()
	}
	if req.GetExpected() != "" {
		d, err := validDigest(req.GetExpected())
		if err != nil {
			return nil, err
		}
		in.expected = d
	}
	resp := &contentapi.WriteContentResponse{Action: req.GetAction()}
	switch req.GetAction() {
	case contentapi.WriteAction_STAT:
		resp.Offset, resp.Total = int64(len(in.data)), in.total
		resp.Digest = digest.FromBytes(in.data).String()
		resp.StartedAt, resp.UpdatedAt = timestamppb.New(in.started), timestamppb.New(in.updated)
		return resp, nil
	case contentapi.WriteAction_WRITE, contentapi.WriteAction_COMMIT:
	default:
		return nil, fmt.Errorf("write ingest %s: unknown action %v: %w", in.ref, req.GetAction(), errdefs.ErrInvalidArgument)
	}
	if *committed {
		return nil, fmt.Errorf("write ingest %s: already committed: %w", in.ref, errdefs.ErrFailedPrecondition)
	}
	switch off, cur := req.GetOffset(), int64(len(in.data)); {
	case off == 0:
		in.data = in.data[:0]
	case off != cur:
		return nil, fmt.Errorf("write ingest %s at %d: must be at offset %d: %w", in.ref, off, cur, errdefs.ErrOutOfRange)
	}
	if len(req.GetData()) > 0 {
		in.data = append(in.data, req.GetData()...)
		in.updated = time.Now()
	}
	resp.Offset, resp.Total = int64(len(in.data)), in.total
	if req.GetAction() != contentapi.WriteAction_COMMIT {
		resp.Digest = digest.FromBytes(in.data).String()
		return resp, nil
	}
	d, err := m.commitLocked(in)
	if err != nil {
		return nil, err
	}
	*committed = true
	resp.Digest = d.String()
	return resp, nil
}

// commitLocked checks the ingest against its size and digest and makes it
// a blob; an existing blob is AlreadyExists, after the checks.
func (m *MemStore) commitLocked(in *memIngest) (digest.Digest, error) {
	size := int64(len(in.data))
	if in.total > 0 && in.total != size {
		return "", fmt.Errorf("commit ingest %s: size %d, expected %d: %w", in.ref, size, in.total, errdefs.ErrFailedPrecondition)
	}
	d := digest.FromBytes(in.data)
	if in.expected != "" {
		d = in.expected.Algorithm().FromBytes(in.data)
		if d != in.expected {
			return "", fmt.Errorf("commit ingest %s: digest %s, expected %s: %w", in.ref, d, in.expected, errdefs.ErrFailedPrecondition)
		}
	}
	delete(m.ingests, in.ref)
	if m.blobs[d] != nil {
		return "", fmt.Errorf("commit ingest %s: content %s: %w", in.ref, d, errdefs.ErrAlreadyExists)
	}
	now := time.Now()
	m.blobs[d] = &memBlob{data: slices.Clone(in.data), created: now, updated: now}
	return d, nil
}
