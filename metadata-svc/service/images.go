package service

import (
	"context"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/events"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
)

// Event topics of the Images service. Their payloads keep the proto
// package containerd.services.images.v1, as containerd's do.
const (
	TopicImageCreate = "/images/create"
	TopicImageUpdate = "/images/update"
	TopicImageDelete = "/images/delete"
)

// Images serves containerd.services.images.v1.Images on an image store and
// publishes an event after each change. Every call needs a namespace.
//
// As for namespaces, a replayed call answers as the first attempt did and
// publishes its event again.
type Images struct {
	imagesapi.UnimplementedImagesServer

	store  *metadata.ImageStore
	events pluginkit.Publisher
	gc     Collector
	log    zerolog.Logger
}

// NewImages returns the Images service on store, publishing to events. A
// Delete asks gc for a collection, and waits for it when the request says
// sync; a nil gc collects nothing.
func NewImages(
	store *metadata.ImageStore,
	events pluginkit.Publisher,
	gc Collector,
	log zerolog.Logger,
) *Images {
	return &Images{store: store, events: events, gc: gc, log: log}
}

// Register registers the service on gs.
func (s *Images) Register(gs grpc.ServiceRegistrar) {
	imagesapi.RegisterImagesServer(gs, s)
}

// Get implements imagesapi.ImagesServer.
func (s *Images) Get(
	ctx context.Context,
	req *imagesapi.GetImageRequest,
) (*imagesapi.GetImageResponse, error) {
	ns, err := requireNamespace(ctx)
	var img *imagesapi.Image
	if err == nil {
		img, err = s.store.Get(ctx, ns, req.GetName())
	}
	logRequestOn(s.log, "get image", ns, req.GetName(), err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &imagesapi.GetImageResponse{Image: img}, nil
}

// List implements imagesapi.ImagesServer.
func (s *Images) List(
	ctx context.Context,
	req *imagesapi.ListImagesRequest,
) (*imagesapi.ListImagesResponse, error) {
	ns, err := requireNamespace(ctx)
	var raw []byte
	if err == nil {
		raw, err = s.store.ListEncoded(ctx, ns, req.GetFilters()...)
	}
	logRequestOn(s.log, "list images", ns, "", err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return encodedResponse(&imagesapi.ListImagesResponse{}, raw), nil
}

// Create implements imagesapi.ImagesServer. The server sets created_at
// and updated_at, from source_date_epoch when the request has one.
func (s *Images) Create(
	ctx context.Context,
	req *imagesapi.CreateImageRequest,
) (*imagesapi.CreateImageResponse, error) {
	name := req.GetImage().GetName()
	ns, err := requireNamespace(ctx)
	var img *imagesapi.Image
	if err == nil {
		img, err = s.store.Create(storeContext(ctx, req.GetSourceDateEpoch()), ns, req.GetImage())
	}
	logRequestOn(s.log, "create image", ns, name, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	publishEvent(ctx, s.events, s.log, ns, TopicImageCreate, &eventsapi.ImageCreate{
		Name:   img.GetName(),
		Labels: img.GetLabels(),
	})
	return &imagesapi.CreateImageResponse{Image: img}, nil
}

// Update implements imagesapi.ImagesServer. Updating an image that does
// not exist is NotFound, which is how clients learn to create it.
func (s *Images) Update(
	ctx context.Context,
	req *imagesapi.UpdateImageRequest,
) (*imagesapi.UpdateImageResponse, error) {
	name := req.GetImage().GetName()
	ns, err := requireNamespace(ctx)
	var img *imagesapi.Image
	if err == nil {
		sctx := storeContext(ctx, req.GetSourceDateEpoch())
		img, err = s.store.Update(sctx, ns, req.GetImage(), req.GetUpdateMask().GetPaths())
	}
	logRequestOn(s.log, "update image", ns, name, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	publishEvent(ctx, s.events, s.log, ns, TopicImageUpdate, &eventsapi.ImageUpdate{
		Name:   img.GetName(),
		Labels: img.GetLabels(),
	})
	return &imagesapi.UpdateImageResponse{Image: img}, nil
}

// Delete implements imagesapi.ImagesServer. With sync, it returns once the
// garbage collection that follows the delete has finished.
func (s *Images) Delete(
	ctx context.Context,
	req *imagesapi.DeleteImageRequest,
) (*emptypb.Empty, error) {
	name := req.GetName()
	ns, err := requireNamespace(ctx)
	if err == nil {
		target := digest.Digest(req.GetTarget().GetDigest())
		err = s.store.Delete(withCall(ctx), ns, name, target)
	}
	logRequestOn(s.log, "delete image", ns, name, err)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	publishEvent(ctx, s.events, s.log, ns, TopicImageDelete, &eventsapi.ImageDelete{Name: name})
	if err := collectGarbage(ctx, s.gc, s.log, req.GetSync()); err != nil {
		err = fmt.Errorf("collect garbage after deleting image %q: %w", name, err)
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}
