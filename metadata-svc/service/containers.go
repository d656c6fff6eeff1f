package service

import (
	"context"

	eventsapi "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// Event topics of the Containers service.
const (
	TopicContainerCreate = "/containers/create"
	TopicContainerUpdate = "/containers/update"
	TopicContainerDelete = "/containers/delete"
)

// Containers serves containerd.services.containers.v1.Containers on a
// container store and publishes an event after each change. Every call
// needs a namespace.
//
// As for namespaces, a replayed call answers as the first attempt did and
// publishes its event again.
type Containers struct {
	containersapi.UnimplementedContainersServer

	store  *metadata.ContainerStore
	events pluginkit.Publisher
	gc     Collector
	log    zerolog.Logger
}

// NewContainers returns the Containers service on store, publishing to
// events. A Delete schedules a collection on gc, without waiting; a nil gc
// collects nothing.
func NewContainers(
	store *metadata.ContainerStore,
	events pluginkit.Publisher,
	gc Collector,
	log zerolog.Logger,
) *Containers {
	return &Containers{store: store, events: events, gc: gc, log: log}
}

// Register registers the service on gs.
func (s *Containers) Register(gs grpc.ServiceRegistrar) {
	containersapi.RegisterContainersServer(gs, s)
}

// Get implements containersapi.ContainersServer.
func (s *Containers) Get(
	ctx context.Context,
	req *containersapi.GetContainerRequest,
) (*containersapi.GetContainerResponse, error) {
	ns, err := requireNamespace(ctx)
	var c *containersapi.Container
	if err == nil {
		c, err = s.store.Get(ctx, ns, req.GetID())
	}
	logRequestOn(s.log, "get container", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &containersapi.GetContainerResponse{Container: c}, nil
}

// List implements containersapi.ContainersServer.
func (s *Containers) List(
	ctx context.Context,
	req *containersapi.ListContainersRequest,
) (*containersapi.ListContainersResponse, error) {
	ns, err := requireNamespace(ctx)
	var raw []byte
	if err == nil {
		raw, err = s.store.ListEncoded(ctx, ns, req.GetFilters()...)
	}
	logRequestOn(s.log, "list containers", ns, "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return encodedResponse(&containersapi.ListContainersResponse{}, raw), nil
}

// ListStream implements containersapi.ContainersServer: one message per
// container, so that no message grows with the number of containers.
func (s *Containers) ListStream(
	req *containersapi.ListContainersRequest,
	ss containersapi.Containers_ListStreamServer,
) error {
	ns, err := requireNamespace(ss.Context())
	var msgs [][]byte
	if err == nil {
		msgs, err = s.store.ListEncodedMessages(ss.Context(), ns, req.GetFilters()...)
	}
	logRequestOn(s.log, "list containers", ns, "", err)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	for _, raw := range msgs {
		if err := ss.Send(encodedResponse(&containersapi.ListContainerMessage{}, raw)); err != nil {
			return err
		}
	}
	return nil
}

// Create implements containersapi.ContainersServer. The server sets
// created_at and updated_at.
func (s *Containers) Create(
	ctx context.Context,
	req *containersapi.CreateContainerRequest,
) (*containersapi.CreateContainerResponse, error) {
	id := req.GetContainer().GetID()
	ns, err := requireNamespace(ctx)
	var c *containersapi.Container
	if err == nil {
		c, err = s.store.Create(withCall(ctx), ns, req.GetContainer())
	}
	logRequestOn(s.log, "create container", ns, id, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	ev := &eventsapi.ContainerCreate{ID: c.GetID(), Image: c.GetImage()}
	if rt := c.GetRuntime(); rt != nil {
		ev.Runtime = &eventsapi.ContainerCreate_Runtime{
			Name:    rt.GetName(),
			Options: rt.GetOptions(),
		}
	}
	publishEvent(ctx, s.events, s.log, ns, TopicContainerCreate, ev)
	return &containersapi.CreateContainerResponse{Container: c}, nil
}

// Update implements containersapi.ContainersServer.
func (s *Containers) Update(
	ctx context.Context,
	req *containersapi.UpdateContainerRequest,
) (*containersapi.UpdateContainerResponse, error) {
	id := req.GetContainer().GetID()
	ns, err := requireNamespace(ctx)
	var c *containersapi.Container
	if err == nil {
		paths := req.GetUpdateMask().GetPaths()
		c, err = s.store.Update(withCall(ctx), ns, req.GetContainer(), paths)
	}
	logRequestOn(s.log, "update container", ns, id, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	publishEvent(ctx, s.events, s.log, ns, TopicContainerUpdate, &eventsapi.ContainerUpdate{
		ID:          c.GetID(),
		Image:       c.GetImage(),
		Labels:      c.GetLabels(),
		SnapshotKey: c.GetSnapshotKey(),
	})
	return &containersapi.UpdateContainerResponse{Container: c}, nil
}

// Delete implements containersapi.ContainersServer. It schedules a garbage
// collection for the snapshot the container held, without waiting.
func (s *Containers) Delete(
	ctx context.Context,
	req *containersapi.DeleteContainerRequest,
) (*emptypb.Empty, error) {
	ns, err := requireNamespace(ctx)
	if err == nil {
		err = s.store.Delete(withCall(ctx), ns, req.GetID())
	}
	logRequestOn(s.log, "delete container", ns, req.GetID(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	publishEvent(ctx, s.events, s.log, ns, TopicContainerDelete, &eventsapi.ContainerDelete{
		ID: req.GetID(),
	})
	_ = collectGarbage(ctx, s.gc, s.log, false)
	return &emptypb.Empty{}, nil
}
