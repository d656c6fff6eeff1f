package service

import (
	"context"
	"errors"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit/identifiers"
	"corral.dev/pluginkit/labels"
	ingestv1 "corral.dev/proto/ingest/v1"
)

// Ingests serves corral.ingest.v1.Ingests to the content plugin: the
// namespace's side of the Content.Write streams it takes. As for
// namespaces, a replayed Record answers as the first attempt did and
// publishes its event again.
type Ingests struct {
	ingestv1.UnimplementedIngestsServer
	c *Content
}

// NewIngests returns the Ingests service on the records and policy of c.
func NewIngests(c *Content) *Ingests {
	return &Ingests{c: c}
}

// Register registers the service on gs.
func (s *Ingests) Register(gs grpc.ServiceRegistrar) {
	ingestv1.RegisterIngestsServer(gs, s)
}

// Begin implements ingestv1.IngestsServer.
func (s *Ingests) Begin(ctx context.Context, req *ingestv1.BeginRequest) (*ingestv1.BeginResponse, error) {
	err := s.begin(ctx, req)
	s.c.logRequest("begin write", req.GetNamespace(), "key", req.GetRef(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &ingestv1.BeginResponse{}, nil
}

func (s *Ingests) begin(ctx context.Context, req *ingestv1.BeginRequest) error {
	ns := req.GetNamespace()
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if req.GetRef() == "" {
		return fmt.Errorf("first message of a write must have a ref: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetExpected() != "" {
		if _, err := metadata.ParseDigest(req.GetExpected()); err != nil {
			return err
		}
	}
	// Under the collector's hold: a collection that marked before the
	// record was made must not delete bytes the writer commits after it
	// (and the shared policy's check must find the bytes it records).
	release := s.c.GC.Hold()
	defer release()
	if req.GetCheckExisting() && req.GetExpected() != "" {
		if err := s.checkExisting(ctx, req); err != nil {
			return err
		}
	}
	return s.c.Store.StartIngest(ctx, ns, req.GetRef(), req.GetExpected(), req.GetLease())
}

// checkExisting answers AlreadyExists when the namespace holds the expected
// blob, attaching it to the lease, or adopts it when the policy is shared
// and the content plugin has it with the size announced. The caller holds
// the collector.
func (s *Ingests) checkExisting(ctx context.Context, req *ingestv1.BeginRequest) error {
	ns, lease := req.GetNamespace(), req.GetLease()
	d := digest.Digest(req.GetExpected())
	exists := fmt.Errorf("content %s: %w", d, errdefs.ErrAlreadyExists)
	held, err := s.c.Store.Hold(ctx, ns, d, lease)
	if err != nil {
		return err
	}
	if held {
		return exists
	}
	if s.c.Policy != SharingShared {
		return nil
	}

	resp, err := s.c.Blobs.Info(ctx, &contentapi.InfoRequest{Digest: d.String()})
	if err != nil {
		if err = errgrpc.ToNative(err); errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	size := resp.GetInfo().GetSize()
	if total := req.GetTotal(); total != 0 && total != size {
		return nil
	}
	if err := s.record(ctx, ns, lease, "", d, size, nil); err != nil {
		return err
	}
	return exists
}

// Record implements ingestv1.IngestsServer.
func (s *Ingests) Record(ctx context.Context, req *ingestv1.RecordRequest) (*ingestv1.RecordResponse, error) {
	err := s.recordCommit(ctx, req)
	s.c.logRequest("record commit", req.GetNamespace(), "digest", req.GetDigest(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &ingestv1.RecordResponse{}, nil
}

func (s *Ingests) recordCommit(ctx context.Context, req *ingestv1.RecordRequest) error {
	ns := req.GetNamespace()
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	d, err := metadata.ParseDigest(req.GetDigest())
	if err != nil {
		return err
	}
	if err := labels.ValidateAll(req.GetLabels()); err != nil {
		return err
	}
	return s.record(withCall(ctx), ns, req.GetLease(), req.GetRef(), d, req.GetSize(), req.GetLabels())
}

// record adds blob d to namespace ns under the lease and publishes its
// creation. A blob the namespace got meanwhile is attached to the lease and
// reported as existing.
func (s *Ingests) record(ctx context.Context, ns, lease, ref string, d digest.Digest, size int64, set map[string]string) error {
	info := &contentapi.Info{Digest: d.String(), Size: size, Labels: set}
	_, err := s.c.Store.Add(ctx, ns, info, lease, ref)
	if errdefs.IsAlreadyExists(err) {
		_, herr := s.c.Store.Hold(ctx, ns, d, lease)
		if herr == nil && ref != "" {
			herr = s.c.Store.ForgetIngest(ctx, ns, ref)
		}
		return errors.Join(herr, err)
	}
	if err != nil {
		return err
	}
	ev := &eventsapi.ContentCreate{Digest: d.String(), Size: size}
	s.c.publish(ctx, ns, TopicContentCreate, ev)
	return nil
}
