package pluginkit

import (
	"context"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// NamespaceKey is the gRPC header that carries the containerd namespace.
const NamespaceKey = "containerd-namespace"

// LeaseKey is the gRPC header that carries the lease a call works under.
const LeaseKey = "containerd-lease"

// Namespace returns the namespace of an incoming call, if it has one.
func Namespace(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(NamespaceKey); len(v) > 0 && v[0] != "" {
		return v[0], true
	}
	return "", false
}

// Lease returns the lease an incoming call works under, if it names one.
// What the call creates is attached to that lease.
func Lease(ctx context.Context) (string, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(LeaseKey); len(v) > 0 && v[0] != "" {
		return v[0], true
	}
	return "", false
}

// CallID returns the supervisor's id for an incoming call ("" if none). A
// replayed call carries the same id as the first attempt.
func CallID(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(CallIDKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Publisher publishes events to the supervisor's exchange.
type Publisher interface {
	// Publish sends event under topic in the namespace ns.
	Publish(ctx context.Context, ns, topic string, event proto.Message) error
}

type publisher struct {
	cc *grpc.ClientConn
}

func (p *publisher) Publish(ctx context.Context, ns, topic string, event proto.Message) error {
	if p.cc == nil {
		return nil
	}
	a, err := MarshalAny(event)
	if err != nil {
		return err
	}
	ctx = metadata.AppendToOutgoingContext(context.WithoutCancel(ctx), NamespaceKey, ns)
	_, err = eventsapi.NewEventsClient(p.cc).Publish(ctx, &eventsapi.PublishRequest{Topic: topic, Event: a})
	if err != nil {
		return fmt.Errorf("publish %s: %w", topic, errgrpc.ToNative(err))
	}
	return nil
}

// MarshalAny wraps m in an Any whose type URL is m's bare full name, the form
// containerd's clients expect on the wire.
func MarshalAny(m proto.Message) (*anypb.Any, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", proto.MessageName(m), err)
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: b}, nil
}

// pluginConn sends calls to one plugin through the supervisor's internal socket.
type pluginConn struct {
	cc *grpc.ClientConn
	id string
}

func (c *pluginConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(metadata.AppendToOutgoingContext(ctx, TargetKey, c.id), method, args, reply, opts...)
}

func (c *pluginConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(metadata.AppendToOutgoingContext(ctx, TargetKey, c.id), desc, method, opts...)
}
