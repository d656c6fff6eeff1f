// Package publish forwards task events to the daemon over ttrpc.
//
// Events are queued in order and sent by one goroutine. A failed send is
// retried with backoff on a fresh connection, so an exit that happens while
// the daemon is down reaches it once it is back.
package publish

import (
	"context"
	"net"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// namespaceHeader is the ttrpc metadata key containerd reads the
// namespace from.
const namespaceHeader = "containerd-namespace-ttrpc"

// Publisher sends events to one daemon address.
type Publisher struct {
	address   string
	namespace string
	log       zerolog.Logger

	mu      sync.Mutex
	queue   []*types.Envelope
	wake    chan struct{}
	idle    chan struct{} // closed once the queue is drained
	busy    bool          // idle is open
	client  eventsapi.TTRPCEventsService
	ttrpcCl *ttrpc.Client
}

// New returns a Publisher for the ttrpc socket at address (a path or
// unix:// URL) and starts its sender.
func New(address, namespace string, log zerolog.Logger) *Publisher {
	p := &Publisher{
		address:   strings.TrimPrefix(address, "unix://"),
		namespace: namespace,
		log:       log,
		wake:      make(chan struct{}, 1),
		idle:      make(chan struct{}),
	}
	close(p.idle)
	go p.run()
	return p
}

// Publish queues event under topic; it never blocks on the daemon. A
// Publisher without an address drops its events.
func (p *Publisher) Publish(topic string, event proto.Message) {
	if p.address == "" {
		return
	}
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		p.log.Error().Err(err).Str("topic", topic).Msg("marshal event")
		return
	}
	env := &types.Envelope{
		Timestamp: timestamppb.Now(),
		Namespace: p.namespace,
		Topic:     topic,
		Event:     a,
	}
	p.mu.Lock()
	if !p.busy {
		p.idle, p.busy = make(chan struct{}), true
	}
	p.queue = append(p.queue, env)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Flush waits until every queued event was delivered or ctx ends.
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.Lock()
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sends queued events in order, retrying each until it is delivered.
func (p *Publisher) run() {
	backoff := 50 * time.Millisecond
	for range p.wake {
		for {
			p.mu.Lock()
			if len(p.queue) == 0 {
				if p.busy {
					close(p.idle)
					p.busy = false
				}
				p.mu.Unlock()
				break
			}
			env := p.queue[0]
			p.mu.Unlock()

			err := p.send(env)
			switch {
			case err == nil:
			case rejected(err):
				p.log.Warn().Err(err).Str("topic", env.Topic).Msg("daemon rejected event")
			default:
				p.log.Debug().Err(err).Str("topic", env.Topic).Msg("forward event, will retry")
				time.Sleep(backoff)
				backoff = min(backoff*2, 2*time.Second)
				continue
			}
			backoff = 50 * time.Millisecond

			p.mu.Lock()
			p.queue = p.queue[1:]
			p.mu.Unlock()
		}
	}
}

// rejected reports whether the daemon answered err itself, so that sending
// the same envelope again cannot succeed.
func rejected(err error) bool {
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.InvalidArgument, codes.Unimplemented, codes.PermissionDenied, codes.AlreadyExists:
		return true
	}
	return false
}

// send forwards one envelope, dialing first if there is no connection and
// dropping the connection on failure.
func (p *Publisher) send(env *types.Envelope) error {
	if p.client == nil {
		conn, err := net.DialTimeout("unix", p.address, 5*time.Second)
		if err != nil {
			return err
		}
		p.ttrpcCl = ttrpc.NewClient(conn)
		p.client = eventsapi.NewTTRPCEventsClient(p.ttrpcCl)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{namespaceHeader: []string{p.namespace}})
	_, err := p.client.Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	if err != nil {
		p.ttrpcCl.Close()
		p.client, p.ttrpcCl = nil, nil
	}
	return err
}
