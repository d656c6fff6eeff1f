package service

import (
	"context"
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/content-svc/store"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/identifiers"
	"corral.dev/pluginkit/labels"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// Write implements api.ContentServer. The first message names the ref and
// may give the size and digest to expect; the stream holds the ref until it
// ends, however it ends, and what was written stays for the next writer of
// the ref to resume.
//
// With the metadata plugin's Ingests service (in the daemon) the stream is
// a public one of the namespace in its header: the ref is the namespace's,
// a blob the namespace holds (or may adopt) is answered AlreadyExists at
// once, and a COMMIT records the blob in the namespace with its labels,
// under the call's lease. The stream ends after a COMMIT.
func (c *Content) Write(stream api.Content_WriteServer) error {
	req, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	ws, err := c.openSession(stream.Context(), req)
	c.logRequest("write open", req.GetExpected(), req.GetRef(), err)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer ws.w.Close()
	c.metrics.writers.Inc()
	defer c.metrics.writers.Dec()

	for {
		resp, err := ws.handle(req)
		if err != nil {
			c.logRequest("write", ws.expected.String(), ws.w.Ref(), err)
			return errgrpc.ToGRPC(err)
		}
		c.metrics.written.Add(float64(len(req.GetData())))
		committed := req.GetAction() == api.WriteAction_COMMIT
		if committed {
			c.metrics.commits.Inc()
			c.logRequest("commit", resp.GetDigest(), ws.w.Ref(), nil)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		if committed && ws.ns != "" {
			return nil
		}
		if req, err = stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// writeSession is one Write stream's writer and the size and digest it
// was last told to expect.
type writeSession struct {
	w        *store.Writer
	total    int64
	expected digest.Digest

	// Set for a namespace's stream: the ingests service, the namespace,
	// its ref, the call's lease, and the digest the namespace's ingest
	// record expects.
	ingests  ingestv1.IngestsClient
	ctx      context.Context
	ns       string
	ref      string
	lease    string
	recorded digest.Digest
}

// openSession opens the writer the first message of a stream asks for.
func (c *Content) openSession(ctx context.Context, req *api.WriteContentRequest) (*writeSession, error) {
	if req.GetRef() == "" {
		return nil, fmt.Errorf("open writer: first message must have a ref: %w",
			errdefs.ErrInvalidArgument)
	}
	ws := &writeSession{total: req.GetTotal(), expected: digest.Digest(req.GetExpected())}
	if c.ingests == nil {
		w, err := c.store.Writer(req.GetRef(), ws.total, ws.expected)
		if err != nil {
			return nil, err
		}
		ws.w = w
		return ws, nil
	}

	ns, ok := pluginkit.Namespace(ctx)
	if !ok {
		return nil, fmt.Errorf("write content: namespace is required: %w", errdefs.ErrFailedPrecondition)
	}
	if err := identifiers.Validate(ns); err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	ws.ingests, ws.ctx, ws.ns, ws.ref = c.ingests, ctx, ns, req.GetRef()
	ws.lease, _ = pluginkit.Lease(ctx)

	// The ref is held before the namespace's ingest record is made, so
	// that no other stream of the ref changes the record meanwhile.
	r, err := c.store.Reserve(pluginkit.IngestRef(ns, ws.ref))
	if err != nil {
		return nil, err
	}
	defer r.Release()
	if err := ws.begin(ws.expected, true); err != nil {
		return nil, err
	}
	// The namespace's records decide whether the blob exists for it, so
	// the store is not told what to expect until COMMIT.
	if ws.w, err = r.Open(ws.total, ""); err != nil {
		return nil, err
	}
	return ws, nil
}

// begin has the metadata plugin record the namespace's ingest expecting d.
// The record holds d's bytes against collection until the blob is recorded,
// so it must name a blob before the store commits it.
func (ws *writeSession) begin(d digest.Digest, checkExisting bool) error {
	_, err := ws.ingests.Begin(ws.ctx, &ingestv1.BeginRequest{
		Namespace:     ws.ns,
		Ref:           ws.ref,
		Expected:      d.String(),
		Total:         ws.total,
		Lease:         ws.lease,
		CheckExisting: checkExisting,
	})
	if err != nil {
		return errgrpc.ToNative(err)
	}
	ws.recorded = d
	return nil
}

// handle applies one message and returns the reply to it.
func (ws *writeSession) handle(req *api.WriteContentRequest) (*api.WriteContentResponse, error) {
	if req.GetTotal() > 0 {
		ws.total = req.GetTotal()
	}
	if req.GetExpected() != "" {
		ws.expected = digest.Digest(req.GetExpected())
	}

	resp := &api.WriteContentResponse{Action: req.GetAction()}
	switch req.GetAction() {
	case api.WriteAction_STAT:
		ws.stat(resp)
	case api.WriteAction_WRITE, api.WriteAction_COMMIT:
		if err := ws.write(req, resp); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("write ingest %s: unknown action %v: %w",
			ws.w.Ref(), req.GetAction(), errdefs.ErrInvalidArgument)
	}
	return resp, nil
}

// stat fills a STAT reply with the ingest's status.
func (ws *writeSession) stat(resp *api.WriteContentResponse) {
	st := ws.w.Status()
	resp.Offset = st.Offset
	resp.Total = ws.total
	if resp.Total <= 0 {
		resp.Total = st.Total
	}
	resp.Digest = ws.w.Digest().String()
	resp.StartedAt = timestamppb.New(st.StartedAt)
	resp.UpdatedAt = timestamppb.New(st.UpdatedAt)
}

// write applies a WRITE or COMMIT: position, append, and commit if asked.
func (ws *writeSession) write(req *api.WriteContentRequest, resp *api.WriteContentResponse) error {
	// An offset of 0 starts over; any other must be where the ingest is.
	cur := ws.w.Offset()
	switch off := req.GetOffset(); {
	case off == 0 && cur > 0:
		if err := ws.w.Truncate(0); err != nil {
			return err
		}
	case off != 0 && off != cur:
		return fmt.Errorf("write ingest %s at %d: must be at offset %d: %w",
			ws.w.Ref(), off, cur, errdefs.ErrOutOfRange)
	}

	if len(req.GetData()) > 0 {
		if _, err := ws.w.Append(req.GetData()); err != nil {
			return err
		}
	}
	resp.Offset = ws.w.Offset()
	resp.Total = ws.total

	if req.GetAction() != api.WriteAction_COMMIT {
		resp.Digest = ws.w.Digest().String()
		return nil
	}
	if ws.ns != "" {
		return ws.commitRecorded(req.GetLabels(), resp)
	}
	dgst, err := ws.w.Commit(ws.total, ws.expected)
	if err != nil {
		return err
	}
	resp.Digest = dgst.String()
	return nil
}

// commitRecorded commits a namespace's ingest and records the blob in the
// namespace. Bytes the store has already count as committed: they were
// sent and matched the digest.
func (ws *writeSession) commitRecorded(set map[string]string, resp *api.WriteContentResponse) error {
	if err := labels.ValidateAll(set); err != nil {
		return err
	}
	d := ws.expected
	if d == "" {
		d = ws.w.Digest()
	}
	if d != ws.recorded {
		if err := ws.begin(d, false); err != nil {
			return err
		}
	}
	dgst, err := ws.w.Commit(ws.total, ws.expected)
	if err != nil && !errdefs.IsAlreadyExists(err) {
		return err
	}
	// The client asked for this blob: the record is made even when the
	// client is gone, so that the bytes are not left to the collector.
	_, err = ws.ingests.Record(context.WithoutCancel(ws.ctx), &ingestv1.RecordRequest{
		Namespace: ws.ns,
		Ref:       ws.ref,
		Digest:    dgst.String(),
		Size:      resp.Offset,
		Labels:    set,
		Lease:     ws.lease,
	})
	if err != nil {
		return errgrpc.ToNative(err)
	}
	resp.Digest = dgst.String()
	return nil
}
