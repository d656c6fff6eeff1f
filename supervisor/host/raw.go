package host

import (
	"context"
	"net"

	"corral.dev/pluginkit/lane"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AcquireAddr implements h2router.Backends: it holds the plugin as Acquire
// does (waiting while it starts or restarts, counted for drains) and hands
// out the socket address of its current process instead of a connection.
func (h *Host) AcquireAddr(ctx context.Context, method, target string) (net.Addr, func(), error) {
	l, err := h.Acquire(ctx, method, target)
	if err != nil {
		return nil, nil, err
	}
	ls := l.(*lease)
	if addr := ls.in.addr(); addr != nil {
		return addr, l.Release, nil
	}
	l.Release()
	return nil, nil, status.Errorf(codes.Unavailable, "plugin %s has no address", ls.in.spec.Plugin.ID)
}

// TryAcquireAddr is AcquireAddr for a plugin that is running now: it never
// waits, and ok is false when the plugin is not running or not known.
func (h *Host) TryAcquireAddr(method, target string) (addr net.Addr, release func(), ok bool) {
	var in *Instance
	if target != "" {
		in = h.instances[target]
	} else {
		in = h.lookup(method)
	}
	if in == nil {
		return nil, nil, false
	}
	in.mu.Lock()
	if in.state != Running || in.client == nil {
		in.mu.Unlock()
		return nil, nil, false
	}
	in.inflight++
	in.mu.Unlock()
	l := &lease{in: in}
	if addr = in.addr(); addr == nil {
		l.Release()
		return nil, nil, false
	}
	return addr, l.Release, true
}

// addr returns the socket address of the plugin's current process.
func (in *Instance) addr() net.Addr {
	in.mu.Lock()
	client, lanePath := in.client, in.lane
	in.mu.Unlock()
	if client == nil {
		return nil
	}
	rc := client.ReattachConfig()
	if rc == nil {
		return nil
	}
	if lanePath != "" {
		return &lane.Addr{Addr: rc.Addr, Lane: lanePath}
	}
	return rc.Addr
}
