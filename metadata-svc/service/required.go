package service

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/metadata-svc/metadata"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/identifiers"
)

// Collector runs the garbage collection of the metadata database and the
// content and snapshots it references.
type Collector interface {
	// Collect starts a collection. With sync it returns once the
	// collection has finished, with its error; without, it may return as
	// soon as the collection is scheduled.
	Collect(ctx context.Context, sync bool) error
}

// requireNamespace returns the namespace of an incoming call. A call
// without one fails with [errdefs.ErrFailedPrecondition], one with an
// invalid name with [errdefs.ErrInvalidArgument].
func requireNamespace(ctx context.Context) (string, error) {
	ns, ok := pluginkit.Namespace(ctx)
	if !ok {
		return "", fmt.Errorf("namespace is required: %w", errdefs.ErrFailedPrecondition)
	}
	if err := identifiers.Validate(ns); err != nil {
		return "", fmt.Errorf("namespace: %w", err)
	}
	return ns, nil
}

// storeContext is the context of a store write for an incoming call: it
// carries the call id and, when the client sent one, the source date
// epoch that stamps the record instead of the current time.
func storeContext(ctx context.Context, epoch *timestamppb.Timestamp) context.Context {
	ctx = withCall(ctx)
	if epoch != nil {
		ctx = metadata.WithSourceDateEpoch(ctx, epoch.AsTime())
	}
	return ctx
}

// collectGarbage asks gc, if there is one, for a collection after a
// delete. Without sync the collection outlives the call, and its error is
// logged rather than returned.
func collectGarbage(ctx context.Context, gc Collector, log zerolog.Logger, sync bool) error {
	if gc == nil {
		return nil
	}
	if sync {
		return gc.Collect(ctx, true)
	}
	if err := gc.Collect(context.WithoutCancel(ctx), false); err != nil {
		log.Warn().Err(err).Msg("schedule garbage collection")
	}
	return nil
}

// publishEvent sends event under topic in namespace ns. A failure is
// logged: the change it reports is committed.
func publishEvent(
	ctx context.Context,
	pub pluginkit.Publisher,
	log zerolog.Logger,
	ns, topic string,
	event proto.Message,
) {
	if err := pub.Publish(ctx, ns, topic, event); err != nil {
		log.Warn().Err(err).Str("namespace", ns).Msg("publish event")
	}
}

// logRequestOn logs one handled request at debug level, with the
// namespace and the id of the object it is about.
func logRequestOn(log zerolog.Logger, msg, ns, id string, err error) {
	ev := log.Debug().Str("namespace", ns)
	if id != "" {
		ev = ev.Str("id", id)
	}
	ev.Err(err).Msg(msg)
}
