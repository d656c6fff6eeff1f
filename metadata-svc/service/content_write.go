package service

import (
	"context"
	"errors"
	"fmt"
	"io"

	eventsapi "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// Write implements contentapi.ContentServer. It proxies the stream to the
// content plugin under the ref "<namespace>/<ref>", and keeps the
// namespace's records: a first message that expects a blob the namespace
// holds (or, with the shared policy, one the content plugin holds) is
// answered AlreadyExists without a transfer, and a successful COMMIT
// records the blob with the COMMIT's labels under the call's lease.
func (s *Content) Write(ss contentapi.Content_WriteServer) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()

	first, err := ss.Recv()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return err
	}
	w := &writer{s: s, ss: ss, ctx: ctx, ref: first.GetRef(), expected: first.GetExpected()}
	w.lease, _ = pluginkit.Lease(ctx)
	w.ns, err = requireNamespace(ctx)
	if err == nil {
		err = w.run(first)
	}
	s.logRequest("write content", w.ns, "key", w.ref, err)
	return errgrpc.ToGRPC(err)
}

// writer is one Write stream on its way to the content plugin.
type writer struct {
	s        *Content
	ss       contentapi.Content_WriteServer
	ctx      context.Context
	ns       string
	ref      string
	lease    string
	expected string // of the first message
	up       contentapi.Content_WriteClient

	// The length of the ingest's bytes as the content plugin last reported
	// it, and their digest if the reply carried it.
	digest string
	offset int64
}

func (w *writer) run(first *contentapi.WriteContentRequest) error {
	if w.ref == "" {
		return fmt.Errorf("first message of a write must have a ref: %w",
			errdefs.ErrInvalidArgument)
	}
	if w.expected != "" {
		if err := w.checkExisting(first.GetTotal()); err != nil {
			return err
		}
	}
	err := w.s.Store.StartIngest(w.ctx, w.ns, w.ref, w.expected, w.lease)
	if err != nil {
		return err
	}
	if w.up, err = w.s.Blobs.Write(w.ctx); err != nil {
		return errgrpc.ToNative(err)
	}
	defer w.endUpstream()

	for req := first; ; {
		resp, err := w.handle(req)
		if err != nil {
			return err
		}
		if err := w.ss.Send(resp); err != nil {
			return err
		}
		if req.GetAction() == contentapi.WriteAction_COMMIT {
			return nil
		}
		if req, err = w.ss.Recv(); err != nil {
			return upstreamEnd(err)
		}
	}
}

// endUpstream closes the content plugin's stream and waits for its end,
// so that the plugin has released the ref's lock before the client learns
// that its write is over: a writer the client opens next for the ref then
// finds it free. Cancelling the client's call ends the wait.
func (w *writer) endUpstream() {
	_ = w.up.CloseSend()
	for {
		if _, err := w.up.Recv(); err != nil {
			return
		}
	}
}

// checkExisting answers AlreadyExists when the namespace holds the expected
// blob, attaching it to the lease, or adopts it when the policy is shared
// and the content plugin has it with the expected size.
func (w *writer) checkExisting(total int64) error {
	d, err := metadata.ParseDigest(w.expected)
	if err != nil {
		return err
	}
	exists := fmt.Errorf("content %s: %w", d, errdefs.ErrAlreadyExists)
	held, err := w.s.Store.Hold(w.ctx, w.ns, d, w.lease)
	if err != nil {
		return err
	}
	if held {
		return exists
	}
	if w.s.Policy != SharingShared {
		return nil
	}

	release := w.s.GC.Hold()
	defer release()
	resp, err := w.s.Blobs.Info(w.ctx, &contentapi.InfoRequest{Digest: d.String()})
	if err != nil {
		if err = errgrpc.ToNative(err); errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	size := resp.GetInfo().GetSize()
	if total != 0 && total != size {
		return nil
	}
	if err := w.record(d, size, nil, ""); err != nil {
		return err
	}
	return exists
}

// handle forwards one request and returns the reply for the client.
func (w *writer) handle(
	req *contentapi.WriteContentRequest,
) (*contentapi.WriteContentResponse, error) {
	req.Ref = rawRef(w.ns, w.ref)
	if req.GetAction() == contentapi.WriteAction_COMMIT {
		return w.commit(req)
	}
	// The namespace's expectation is checked here and at COMMIT; the
	// content plugin must not answer AlreadyExists for another namespace's
	// blob before the bytes were sent.
	req.Expected = ""
	return w.roundTrip(req)
}

func (w *writer) roundTrip(
	req *contentapi.WriteContentRequest,
) (*contentapi.WriteContentResponse, error) {
	if err := w.up.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, errgrpc.ToNative(err)
	}
	resp, err := w.up.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("content plugin ended the write of %q: %w",
				w.ref, errdefs.ErrUnavailable)
		}
		return nil, errgrpc.ToNative(err)
	}
	w.digest, w.offset = resp.GetDigest(), resp.GetOffset()
	return resp, nil
}

// commit commits the ingest in the content plugin and records the blob.
// A blob the content plugin has already counts as committed: the bytes
// were sent and verified against the expected digest.
func (w *writer) commit(
	req *contentapi.WriteContentRequest,
) (*contentapi.WriteContentResponse, error) {
	for k, v := range req.GetLabels() {
		if err := metadata.ValidateLabel(k, v); err != nil {
			return nil, err
		}
	}
	if req.GetExpected() == "" {
		req.Expected = w.expected
	}
	known, err := w.knownDigest(req)
	if err != nil {
		return nil, err
	}
	release := w.s.GC.Hold()
	defer release()

	resp, err := w.roundTrip(req)
	if errdefs.IsAlreadyExists(err) && known != "" {
		resp, err = w.committed(known)
	}
	if err != nil {
		return nil, err
	}
	d, err := metadata.ParseDigest(resp.GetDigest())
	if err != nil {
		return nil, fmt.Errorf("commit %q: content plugin answered: %w", w.ref, err)
	}
	if err := w.record(d, resp.GetOffset(), req.GetLabels(), w.ref); err != nil {
		return nil, err
	}
	return resp, nil
}

// knownDigest returns the digest the bytes of the ingest will have once
// COMMIT req is applied, if it can be known before: the expected one, or,
// for a COMMIT that adds no bytes, the digest of the bytes written so far,
// asked for with a STAT when the last reply did not carry it.
func (w *writer) knownDigest(req *contentapi.WriteContentRequest) (string, error) {
	switch {
	case req.GetExpected() != "":
		return req.GetExpected(), nil
	case len(req.GetData()) > 0 || req.GetOffset() == 0:
		return "", nil
	}
	if w.digest == "" || w.offset != req.GetOffset() {
		stat := contentapi.WriteContentRequest{Ref: req.GetRef()} // STAT
		if _, err := w.roundTrip(&stat); err != nil {
			return "", err
		}
	}
	if w.offset != req.GetOffset() {
		return "", nil
	}
	return w.digest, nil
}

// committed is the COMMIT reply for a blob the content plugin already has.
func (w *writer) committed(dgst string) (*contentapi.WriteContentResponse, error) {
	info, err := w.s.Blobs.Info(w.ctx, &contentapi.InfoRequest{Digest: dgst})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	size := info.GetInfo().GetSize()
	return &contentapi.WriteContentResponse{
		Action: contentapi.WriteAction_COMMIT,
		Offset: size,
		Total:  size,
		Digest: dgst,
	}, nil
}

// record adds blob d to the namespace under the lease and publishes its
// creation. A blob the namespace got meanwhile is attached to the lease
// and reported as existing.
func (w *writer) record(d digest.Digest, size int64, labels map[string]string, ref string) error {
	info := &contentapi.Info{Digest: d.String(), Size: size, Labels: labels}
	_, err := w.s.Store.Add(w.ctx, w.ns, info, w.lease, ref)
	if errdefs.IsAlreadyExists(err) {
		_, herr := w.s.Store.Hold(w.ctx, w.ns, d, w.lease)
		if herr == nil && ref != "" {
			herr = w.s.Store.ForgetIngest(w.ctx, w.ns, ref)
		}
		return errors.Join(herr, err)
	}
	if err != nil {
		return err
	}
	ev := &eventsapi.ContentCreate{Digest: d.String(), Size: size}
	w.s.publish(w.ctx, w.ns, TopicContentCreate, ev)
	return nil
}
