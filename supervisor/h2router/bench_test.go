package h2router

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"corral.dev/supervisor/router"
)

// The benchmarks run client, router and plugin in one process, so the CPU
// figure (cpu-us/op, from getrusage) is that of all three: the router's own
// cost is the difference to "direct".

// grpcBackends adapts a backend to the grpc-go router.
type grpcBackends struct{ conn *grpc.ClientConn }

type grpcLease struct{ conn *grpc.ClientConn }

func (l grpcLease) Conn() grpc.ClientConnInterface { return l.conn }
func (grpcLease) Release()                         {}

func (g grpcBackends) Acquire(context.Context, string, string) (router.Lease, error) {
	return grpcLease(g), nil
}

// benchTargets returns a client connection per way of reaching the plugin.
func benchTargets(b *testing.B) map[string]*grpc.ClientConn {
	be := startBackend(b, &fakeNamespaces{}, &fakeContent{})
	direct := dialUnix(b, be.addr.String())
	b.Cleanup(func() { direct.Close() })

	grpcR := router.New(grpcBackends{direct}, router.Options{Log: zerolog.Nop()})
	srv := grpc.NewServer(grpcR.ServerOptions()...)
	sock := filepath.Join(shortTemp(b), "g.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	b.Cleanup(srv.Stop)
	viaGRPC := dialUnix(b, sock)
	b.Cleanup(func() { viaGRPC.Close() })

	_, viaH2 := startRouter(b, newFakeBackends(be, be), Options{})

	withLanes = true
	defer func() { withLanes = false }()
	lb := startBackend(b, &fakeNamespaces{}, &fakeContent{})
	_, viaLane := startRouter(b, newFakeBackends(lb, lb), Options{})
	return map[string]*grpc.ClientConn{"direct": direct, "grpcrouter": viaGRPC, "h2router": viaH2, "lane": viaLane}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkUnary(b *testing.B) {
	targets := benchTargets(b)
	for _, name := range []string{"direct", "grpcrouter", "h2router", "lane"} {
		client := namespacesapi.NewNamespacesClient(targets[name])
		req := &namespacesapi.GetNamespaceRequest{Name: "a"}
		b.Run(name, func(b *testing.B) {
			ctx := nsCtx()
			if _, err := client.Get(ctx, req); err != nil {
				b.Fatal(err)
			}
			cpu := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				if _, err := client.Get(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// BenchmarkParallel16 makes unary calls from 16 goroutines at once.
func BenchmarkParallel16(b *testing.B) {
	targets := benchTargets(b)
	for _, name := range []string{"direct", "grpcrouter", "h2router", "lane"} {
		client := namespacesapi.NewNamespacesClient(targets[name])
		req := &namespacesapi.GetNamespaceRequest{Name: "a"}
		b.Run(name, func(b *testing.B) {
			b.SetParallelism(max(1, 16/runtime.GOMAXPROCS(0)))
			cpu := cpuTime()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ctx := nsCtx()
				for pb.Next() {
					if _, err := client.Get(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// BenchmarkRead streams 64 MiB in 1 MiB messages per op, the shape of a
// content Read.
func BenchmarkRead(b *testing.B) {
	targets := benchTargets(b)
	const size = 64 << 20
	for _, name := range []string{"direct", "grpcrouter", "h2router", "lane"} {
		client := contentapi.NewContentClient(targets[name])
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			cpu := cpuTime()
			for b.Loop() {
				rs, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: size, Offset: 1 << 20})
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := rs.Recv(); err != nil {
						if !errors.Is(err, io.EOF) {
							b.Fatal(err)
						}
						break
					}
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}
