package service

import (
	"context"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/metadata-svc/metadata"
)

// Leases serves containerd.services.leases.v1.Leases on a lease store. It
// tells the collector when a lease will expire and when one is deleted.
type Leases struct {
	leasesapi.UnimplementedLeasesServer

	store *metadata.LeaseStore
	gc    *metadata.GC
	log   zerolog.Logger
}

// NewLeases returns the Leases service on store.
func NewLeases(store *metadata.LeaseStore, gc *metadata.GC, log zerolog.Logger) *Leases {
	return &Leases{store: store, gc: gc, log: log}
}

// Register registers the service on gs.
func (s *Leases) Register(gs grpc.ServiceRegistrar) {
	leasesapi.RegisterLeasesServer(gs, s)
}

// Create implements leasesapi.LeasesServer. An empty id makes the server
// pick one.
func (s *Leases) Create(
	ctx context.Context,
	req *leasesapi.CreateRequest,
) (*leasesapi.CreateResponse, error) {
	ns, err := requireNamespace(ctx)
	var l *leasesapi.Lease
	if err == nil {
		l, err = s.store.Create(withCall(ctx), ns, req.GetID(), req.GetLabels())
	}
	logRequestOn(s.log, "create lease", ns, l.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if exp, ok := metadata.LeaseExpiry(l.GetLabels()); ok {
		s.gc.ExpireAt(exp)
	}
	return &leasesapi.CreateResponse{Lease: l}, nil
}

// Delete implements leasesapi.LeasesServer. With sync it returns after a
// collection.
func (s *Leases) Delete(ctx context.Context, req *leasesapi.DeleteRequest) (*emptypb.Empty, error) {
	ns, err := requireNamespace(ctx)
	if err == nil {
		err = s.store.Delete(withCall(ctx), ns, req.GetID())
	}
	if err == nil {
		err = s.gc.Collect(ctx, req.GetSync())
	}
	logRequestOn(s.log, "delete lease", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// List implements leasesapi.LeasesServer.
func (s *Leases) List(
	ctx context.Context,
	req *leasesapi.ListRequest,
) (*leasesapi.ListResponse, error) {
	ns, err := requireNamespace(ctx)
	var list []*leasesapi.Lease
	if err == nil {
		list, err = s.store.List(ctx, ns, req.GetFilters()...)
	}
	logRequestOn(s.log, "list leases", ns, "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &leasesapi.ListResponse{Leases: list}, nil
}

// AddResource implements leasesapi.LeasesServer.
func (s *Leases) AddResource(
	ctx context.Context,
	req *leasesapi.AddResourceRequest,
) (*emptypb.Empty, error) {
	ns, err := requireResource(ctx, req.GetResource())
	if err == nil {
		err = s.store.AddResource(withCall(ctx), ns, req.GetID(), req.GetResource())
	}
	logRequestOn(s.log, "add lease resource", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// DeleteResource implements leasesapi.LeasesServer. What the lease no
// longer holds goes with the next collection if nothing else holds it.
func (s *Leases) DeleteResource(
	ctx context.Context,
	req *leasesapi.DeleteResourceRequest,
) (*emptypb.Empty, error) {
	ns, err := requireResource(ctx, req.GetResource())
	if err == nil {
		err = s.store.DeleteResource(withCall(ctx), ns, req.GetID(), req.GetResource())
	}
	logRequestOn(s.log, "delete lease resource", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.gc.Schedule()
	return &emptypb.Empty{}, nil
}

// ListResources implements leasesapi.LeasesServer.
func (s *Leases) ListResources(
	ctx context.Context,
	req *leasesapi.ListResourcesRequest,
) (*leasesapi.ListResourcesResponse, error) {
	ns, err := requireNamespace(ctx)
	var list []*leasesapi.Resource
	if err == nil {
		list, err = s.store.ListResources(ctx, ns, req.GetID())
	}
	logRequestOn(s.log, "list lease resources", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &leasesapi.ListResourcesResponse{Resources: list}, nil
}

// requireResource returns the namespace of a call about resource r, which
// must be set.
func requireResource(ctx context.Context, r *leasesapi.Resource) (string, error) {
	ns, err := requireNamespace(ctx)
	if err == nil && r == nil {
		err = errdefs.ErrInvalidArgument
	}
	return ns, err
}
