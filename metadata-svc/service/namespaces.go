package service

import (
	"context"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// Event topics of the Namespaces service.
const (
	TopicNamespaceCreate = "/namespaces/create"
	TopicNamespaceUpdate = "/namespaces/update"
	TopicNamespaceDelete = "/namespaces/delete"
)

// Namespaces serves containerd.services.namespaces.v1.Namespaces on a
// namespace store and publishes an event after each change.
//
// A replayed call (same call id) answers as the first attempt did and
// publishes its event again, since the first attempt may have died before
// publishing: events are delivered at least once.
type Namespaces struct {
	api.UnimplementedNamespacesServer

	store  *metadata.NamespaceStore
	events pluginkit.Publisher
	log    zerolog.Logger
}

// NewNamespaces returns the Namespaces service on store, publishing to
// events.
func NewNamespaces(
	store *metadata.NamespaceStore,
	events pluginkit.Publisher,
	log zerolog.Logger,
) *Namespaces {
	return &Namespaces{store: store, events: events, log: log}
}

// Register registers the service on gs.
func (s *Namespaces) Register(gs grpc.ServiceRegistrar) {
	api.RegisterNamespacesServer(gs, s)
}

// Get implements api.NamespacesServer.
func (s *Namespaces) Get(
	ctx context.Context,
	req *api.GetNamespaceRequest,
) (*api.GetNamespaceResponse, error) {
	ns, err := s.store.Get(ctx, req.GetName())
	s.logRequest("get namespace", req.GetName(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.GetNamespaceResponse{Namespace: ns}, nil
}

// List implements api.NamespacesServer.
func (s *Namespaces) List(
	ctx context.Context,
	_ *api.ListNamespacesRequest,
) (*api.ListNamespacesResponse, error) {
	list, err := s.store.List(ctx)
	s.logRequest("list namespaces", "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &api.ListNamespacesResponse{Namespaces: list}, nil
}

// Create implements api.NamespacesServer.
func (s *Namespaces) Create(
	ctx context.Context,
	req *api.CreateNamespaceRequest,
) (*api.CreateNamespaceResponse, error) {
	if req.GetNamespace() == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument,
			"create namespace: no namespace in request")
	}
	name := req.GetNamespace().GetName()
	ns, err := s.store.Create(withCall(ctx), name, req.GetNamespace().GetLabels())
	s.logRequest("create namespace", name, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	s.publish(ctx, name, TopicNamespaceCreate, &eventsapi.NamespaceCreate{
		Name:   ns.GetName(),
		Labels: ns.GetLabels(),
	})
	return &api.CreateNamespaceResponse{Namespace: ns}, nil
}

// Update implements api.NamespacesServer. The response and the event carry
// the namespace's labels after the update.
func (s *Namespaces) Update(
	ctx context.Context,
	req *api.UpdateNamespaceRequest,
) (*api.UpdateNamespaceResponse, error) {
	if req.GetNamespace() == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument,
			"update namespace: no namespace in request")
	}
	name := req.GetNamespace().GetName()
	paths := req.GetUpdateMask().GetPaths()
	ns, err := s.store.Update(withCall(ctx), name, req.GetNamespace().GetLabels(), paths)
	s.logRequest("update namespace", name, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	s.publish(ctx, name, TopicNamespaceUpdate, &eventsapi.NamespaceUpdate{
		Name:   ns.GetName(),
		Labels: ns.GetLabels(),
	})
	return &api.UpdateNamespaceResponse{Namespace: ns}, nil
}

// Delete implements api.NamespacesServer.
func (s *Namespaces) Delete(
	ctx context.Context,
	req *api.DeleteNamespaceRequest,
) (*emptypb.Empty, error) {
	err := s.store.Delete(withCall(ctx), req.GetName())
	s.logRequest("delete namespace", req.GetName(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	s.publish(ctx, req.GetName(), TopicNamespaceDelete, &eventsapi.NamespaceDelete{
		Name: req.GetName(),
	})
	return &emptypb.Empty{}, nil
}

// withCall hands the supervisor's call id of ctx to the store, so that a
// replayed call gets the first outcome.
func withCall(ctx context.Context) context.Context {
	return metadata.WithCallID(ctx, pluginkit.CallID(ctx))
}

// publish sends event under topic in namespace ns, the namespace the event
// is about. A failure is logged: the change it reports is committed.
func (s *Namespaces) publish(ctx context.Context, ns, topic string, event proto.Message) {
	if err := s.events.Publish(ctx, ns, topic, event); err != nil {
		s.log.Warn().Err(err).Str("namespace", ns).Msg("publish namespace event")
	}
}

func (s *Namespaces) logRequest(msg, ns string, err error) {
	ev := s.log.Debug()
	if ns != "" {
		ev = ev.Str("namespace", ns)
	}
	ev.Err(err).Msg(msg)
}
