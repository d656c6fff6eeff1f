// Package router forwards public gRPC calls, undecoded, to the plugin process
// that serves their service. It knows nothing of plugin processes beyond the
// Backends interface, so that a faster router can replace it.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit"
	"corral.dev/supervisor/apimethods"
)

// Backends is what the router needs from the plugin host.
type Backends interface {
	// Acquire returns a connection to the plugin that serves method (a full
	// method name, "/pkg.Service/Method"), or to the plugin named target
	// when target is not empty, waiting while that plugin starts or
	// restarts. Errors are gRPC status errors.
	Acquire(ctx context.Context, method, target string) (Lease, error)
}

// Lease is a plugin connection held for the length of one call.
type Lease interface {
	// Conn is the plugin's connection.
	Conn() grpc.ClientConnInterface
	// Release ends the hold; the plugin may then be drained.
	Release()
}

// Options configure a Router.
type Options struct {
	// ByTarget routes by the pluginkit.TargetKey header (the internal socket)
	// instead of by service.
	ByTarget bool
	// ReplayTimeout bounds how long a call is replayed after its plugin died.
	ReplayTimeout time.Duration
	// Log receives the router's debug lines.
	Log zerolog.Logger
}

// Router forwards calls for services the server it is installed in does not
// serve itself.
type Router struct {
	backends Backends
	opts     Options
	codec    codec
	methods  apimethods.Table
	seq      atomic.Uint64
	prefix   string
}

// New returns a router that forwards to backends.
func New(backends Backends, opts Options) *Router {
	if opts.ReplayTimeout == 0 {
		opts.ReplayTimeout = 30 * time.Second
	}
	return &Router{
		backends: backends,
		opts:     opts,
		codec:    newCodec(),
		prefix:   fmt.Sprintf("%x-", time.Now().UnixNano()),
	}
}

// ServerOptions returns the options that make a grpc.Server forward every
// service it does not serve itself through r.
func (r *Router) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(r.handle),
		grpc.ForceServerCodecV2(r.codec),
	}
}

func (r *Router) handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "router: call without a method")
	}
	c := &call{r: r, ss: ss, method: method, service: pluginkit.ServiceOf(method)}
	md, _ := metadata.FromIncomingContext(ss.Context())
	if r.opts.ByTarget {
		if v := md.Get(pluginkit.TargetKey); len(v) > 0 {
			c.target = v[0]
		}
		if c.target == "" {
			return status.Errorf(codes.InvalidArgument, "internal call %s names no plugin", method)
		}
	}
	c.md = outgoing(md)

	kind := r.methods.Kind(method)
	if kind.ClientStreams {
		return c.forwardStream()
	}
	return c.forwardReplayable(kind.ServerStreams)
}

// call is one call on its way through the router.
type call struct {
	r       *Router
	ss      grpc.ServerStream
	method  string
	service string
	target  string
	md      metadata.MD
}

// forwardReplayable forwards a call whose client sends one message. If the
// plugin dies before its handler answered and before anything reached the
// client, the call is sent again, with the same call id, to the plugin's next
// process; plugins make such replays harmless (pluginkit.CallIDKey).
func (c *call) forwardReplayable(serverStreams bool) error {
	ctx := c.ss.Context()
	req := new(frame)
	if err := c.ss.RecvMsg(req); err != nil {
		return err
	}
	c.md.Set(pluginkit.CallIDKey, c.r.prefix+fmt.Sprint(c.r.seq.Add(1)))

	deadline := time.Now().Add(c.r.opts.ReplayTimeout)
	backoff := 2 * time.Millisecond
	for attempt := 1; ; attempt++ {
		lease, err := c.r.backends.Acquire(ctx, c.method, c.target)
		if err != nil {
			return err
		}
		var answered bool
		if serverStreams {
			answered, err = c.serverStream(lease.Conn(), req)
		} else {
			answered, err = c.unary(lease.Conn(), req)
		}
		lease.Release()
		if answered || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		c.r.opts.Log.Debug().Str("method", c.method).Int("attempt", attempt).Err(err).
			Msg("plugin connection failed, replaying call")
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// unary forwards one request and its response. answered is false when the
// plugin's handler never answered, so the call may be replayed.
func (c *call) unary(conn grpc.ClientConnInterface, req *frame) (answered bool, err error) {
	var header, trailer metadata.MD
	resp := new(frame)
	ctx := metadata.NewOutgoingContext(c.ss.Context(), c.md)
	err = conn.Invoke(ctx, c.method, req, resp,
		grpc.ForceCodecV2(c.r.codec), grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil && unanswered(err, trailer) {
		return false, err
	}
	if err := c.ss.SetHeader(header); err != nil {
		return true, err
	}
	c.ss.SetTrailer(clean(trailer))
	if err != nil {
		return true, err
	}
	return true, c.ss.SendMsg(resp)
}

// serverStream forwards one request and the stream of responses.
func (c *call) serverStream(conn grpc.ClientConnInterface, req *frame) (answered bool, err error) {
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(c.ss.Context(), c.md))
	defer cancel()
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, c.method,
		grpc.ForceCodecV2(c.r.codec))
	if err != nil {
		return !unanswered(err, nil), err
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if err := cs.CloseSend(); err != nil {
		return false, err
	}
	for sent := false; ; sent = true {
		f := new(frame)
		err := cs.RecvMsg(f)
		if err != nil {
			return c.finish(cs, sent, err)
		}
		if !sent {
			if err := c.sendHeader(cs); err != nil {
				return true, err
			}
		}
		if err := c.ss.SendMsg(f); err != nil {
			return true, err
		}
	}
}

// forwardStream forwards a call whose client streams, in both directions at
// once. Such calls are never replayed: the router keeps none of their messages.
func (c *call) forwardStream() error {
	lease, err := c.r.backends.Acquire(c.ss.Context(), c.method, c.target)
	if err != nil {
		return err
	}
	defer lease.Release()

	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(c.ss.Context(), c.md))
	defer cancel()
	cs, err := lease.Conn().NewStream(ctx,
		&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, c.method,
		grpc.ForceCodecV2(c.r.codec))
	if err != nil {
		return err
	}
	go c.pumpUp(cs, cancel)

	for sent := false; ; sent = true {
		f := new(frame)
		if err := cs.RecvMsg(f); err != nil {
			_, err = c.finish(cs, sent, err)
			return err
		}
		if !sent {
			if err := c.sendHeader(cs); err != nil {
				return err
			}
		}
		if err := c.ss.SendMsg(f); err != nil {
			return err
		}
	}
}

// pumpUp copies the client's messages to the plugin until the client closes
// its side. If the client's side breaks, the plugin's stream is cancelled.
func (c *call) pumpUp(cs grpc.ClientStream, cancel context.CancelFunc) {
	for {
		f := new(frame)
		if err := c.ss.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				_ = cs.CloseSend()
				return
			}
			cancel()
			return
		}
		if err := cs.SendMsg(f); err != nil {
			// The plugin ended the stream; its status arrives on the
			// receiving side.
			return
		}
	}
}

func (c *call) sendHeader(cs grpc.ClientStream) error {
	header, err := cs.Header()
	if err != nil {
		return nil
	}
	return c.ss.SendHeader(header)
}

// finish ends a forwarded stream with the plugin's status and trailer.
func (c *call) finish(cs grpc.ClientStream, sent bool, err error) (answered bool, _ error) {
	trailer := cs.Trailer()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if err != nil && !sent && unanswered(err, trailer) {
		return false, err
	}
	if status.Code(err) == codes.Canceled && c.ss.Context().Err() == nil {
		// The client did not cancel: the plugin's connection was closed
		// under the call, which clients must see as a retryable failure.
		err = status.Errorf(codes.Unavailable, "plugin connection lost: %s", status.Convert(err).Message())
	}
	if !sent {
		if header, herr := cs.Header(); herr == nil {
			_ = c.ss.SetHeader(header)
		}
	}
	c.ss.SetTrailer(clean(trailer))
	return true, err
}

// unanswered reports whether err came from the connection rather than from
// the plugin's handler, which marks every answer in its trailer. A dead
// process's connection fails calls with Unavailable, or with Canceled
// (grpc.ErrClientConnClosing) once the host has closed it; a client's own
// cancellation is told apart by its context, which the caller checks.
func unanswered(err error, trailer metadata.MD) bool {
	if len(trailer.Get(pluginkit.HandledKey)) > 0 {
		return false
	}
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.Canceled
}

// outgoing turns the client's metadata into the metadata sent to a plugin,
// leaving out what the transport sets itself.
func outgoing(md metadata.MD) metadata.MD {
	out := make(metadata.MD, len(md))
	for k, v := range md {
		switch {
		case strings.HasPrefix(k, ":"), k == "content-type", k == "user-agent",
			k == pluginkit.TargetKey, k == pluginkit.CallIDKey, k == pluginkit.HandledKey:
			continue
		}
		out[k] = v
	}
	return out
}

// clean drops the router's own keys from a trailer before it reaches a client.
func clean(md metadata.MD) metadata.MD {
	if len(md) == 0 {
		return md
	}
	md = md.Copy()
	delete(md, pluginkit.HandledKey)
	return md
}
