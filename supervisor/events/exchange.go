// Package events is the supervisor's event exchange: it serves containerd's
// Events service, takes the events plugins publish over the internal socket,
// and streams them to every subscriber whose filters match.
package events

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/filters"
	"corral.dev/pluginkit/identifiers"
)

// subscriberBuffer is how many envelopes a subscriber may fall behind before
// it is cut off; publishers never wait for a slow subscriber.
const subscriberBuffer = 1024

// Exchange fans events out to subscribers.
type Exchange struct {
	eventsapi.UnimplementedEventsServer

	log  zerolog.Logger
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	filter filters.Filter
	ch     chan *types.Envelope
	cut    chan struct{}
}

// NewExchange returns an exchange with no subscribers.
func NewExchange(log zerolog.Logger) *Exchange {
	return &Exchange{log: log, subs: make(map[*subscriber]struct{})}
}

// Publish implements eventsapi.EventsServer: the namespace comes from the
// call's header.
func (e *Exchange) Publish(ctx context.Context, req *eventsapi.PublishRequest) (*emptypb.Empty, error) {
	ns, ok := pluginkit.Namespace(ctx)
	if !ok {
		return nil, errgrpc.ToGRPC(fmt.Errorf("publish %s: namespace is required: %w", req.Topic, errdefs.ErrFailedPrecondition))
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: ns, Topic: req.Topic, Event: req.Event}
	if err := e.Broadcast(env); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Forward implements eventsapi.EventsServer: the envelope arrives whole.
func (e *Exchange) Forward(ctx context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if req.Envelope == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("forward: no envelope: %w", errdefs.ErrInvalidArgument))
	}
	if err := e.Broadcast(req.Envelope); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Subscribe implements eventsapi.EventsServer.
func (e *Exchange) Subscribe(req *eventsapi.SubscribeRequest, stream eventsapi.Events_SubscribeServer) error {
	f, err := filters.ParseAll(req.Filters...)
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	s := &subscriber{filter: f, ch: make(chan *types.Envelope, subscriberBuffer), cut: make(chan struct{})}
	e.mu.Lock()
	e.subs[s] = struct{}{}
	e.mu.Unlock()
	defer e.remove(s)

	for {
		select {
		case env := <-s.ch:
			if err := stream.Send(env); err != nil {
				return err
			}
		case <-s.cut:
			return errgrpc.ToGRPC(fmt.Errorf("subscriber fell %d events behind: %w", subscriberBuffer, errdefs.ErrResourceExhausted))
		case <-stream.Context().Done():
			return nil
		}
	}
}

// Broadcast validates env and hands it to every matching subscriber.
func (e *Exchange) Broadcast(env *types.Envelope) error {
	if err := validateTopic(env.Topic); err != nil {
		return err
	}
	if err := identifiers.Validate(env.Namespace); err != nil {
		return fmt.Errorf("event namespace: %w", err)
	}
	if env.Timestamp == nil {
		env.Timestamp = timestamppb.New(time.Now())
	}
	e.log.Debug().Str("namespace", env.Namespace).Str("topic", env.Topic).Msg("event")

	a := envelopeAdaptor{env}
	e.mu.Lock()
	defer e.mu.Unlock()
	for s := range e.subs {
		if !s.filter.Match(a) {
			continue
		}
		select {
		case s.ch <- env:
		default:
			e.log.Warn().Msg("event subscriber too slow, cutting it off")
			delete(e.subs, s)
			close(s.cut)
		}
	}
	return nil
}

func (e *Exchange) remove(s *subscriber) {
	e.mu.Lock()
	delete(e.subs, s)
	e.mu.Unlock()
}

// validateTopic checks that a topic is "/" followed by identifiers joined by "/".
func validateTopic(topic string) error {
	if !strings.HasPrefix(topic, "/") {
		return fmt.Errorf("topic %q must start with /: %w", topic, errdefs.ErrInvalidArgument)
	}
	for _, part := range strings.Split(topic[1:], "/") {
		if err := identifiers.Validate(part); err != nil {
			return fmt.Errorf("topic %q: %w", topic, err)
		}
	}
	return nil
}

// envelopeAdaptor exposes an envelope's fields to filters.
type envelopeAdaptor struct {
	env *types.Envelope
}

func (a envelopeAdaptor) Field(path []string) (string, bool) {
	if len(path) != 1 {
		return "", false
	}
	switch path[0] {
	case "namespace":
		return a.env.Namespace, a.env.Namespace != ""
	case "topic":
		return a.env.Topic, a.env.Topic != ""
	}
	return "", false
}
