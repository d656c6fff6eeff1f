package service

import (
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/content-svc/store"
)

// Write implements api.ContentServer. The first message names the ref and
// may give the size and digest to expect; the stream holds the ref until it
// ends, however it ends, and what was written stays for the next writer of
// the ref to resume.
func (c *Content) Write(stream api.Content_WriteServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	ws, err := c.openSession(req)
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
		if req.GetAction() == api.WriteAction_COMMIT {
			c.metrics.commits.Inc()
			c.logRequest("commit", resp.GetDigest(), ws.w.Ref(), nil)
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

// writeSession is one Write stream's writer and the size and digest it
// was last told to expect.
type writeSession struct {
	w        *store.Writer
	total    int64
	expected digest.Digest
}

// openSession opens the writer the first message of a stream asks for.
func (c *Content) openSession(req *api.WriteContentRequest) (*writeSession, error) {
	if req.GetRef() == "" {
		return nil, fmt.Errorf("open writer: first message must have a ref: %w",
			errdefs.ErrInvalidArgument)
	}
	ws := &writeSession{total: req.GetTotal(), expected: digest.Digest(req.GetExpected())}
	w, err := c.store.Writer(req.GetRef(), ws.total, ws.expected)
	if err != nil {
		return nil, err
	}
	ws.w = w
	return ws, nil
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
	dgst, err := ws.w.Commit(ws.total, ws.expected)
	if err != nil {
		return err
	}
	resp.Digest = dgst.String()
	return nil
}
