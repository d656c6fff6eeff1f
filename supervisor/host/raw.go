package host

import (
	"context"
	"net"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AcquireAddr implements h2router.Backends: it holds the plugin as Acquire
// does (waiting while it starts or restarts, counted for drains) and hands
// out the socket address of its current process instead of a connection.
func (h *Host) AcquireAddr(ctx context.Context, service, target string) (net.Addr, func(), error) {
	l, err := h.Acquire(ctx, service, target)
	if err != nil {
		return nil, nil, err
	}
	ls := l.(*lease)
	ls.in.mu.Lock()
	client := ls.in.client
	ls.in.mu.Unlock()
	if client != nil {
		if rc := client.ReattachConfig(); rc != nil && rc.Addr != nil {
			return rc.Addr, l.Release, nil
		}
	}
	l.Release()
	return nil, nil, status.Errorf(codes.Unavailable, "plugin %s has no address", ls.in.spec.Plugin.ID)
}
