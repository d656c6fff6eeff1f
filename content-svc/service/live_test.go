package service

import (
	"context"
	"os"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/contenttest"
)

// Environment of the live tests and benchmarks.
const (
	// EnvLiveSocket names a running daemon's internal socket
	// (<state>/internal.sock). When set, the live tests and benchmarks
	// reach the content plugin through the supervisor, as the metadata
	// plugin does.
	EnvLiveSocket = "CORRAL_CONTENT_LIVE_SOCKET"
	// EnvLiveNamespace, when set, sends calls in that namespace, under a
	// lease made for the run, instead of addressing the content plugin: the
	// same tests and benchmarks then run against a public Content service
	// (ours or containerd's) at EnvLiveSocket.
	EnvLiveNamespace = "CORRAL_CONTENT_LIVE_NAMESPACE"
)

// leaseKey is the header that carries a containerd lease.
const leaseKey = "containerd-lease"

// live returns a client of the service at EnvLiveSocket and the context
// of its calls, or skips tb.
func live(tb testing.TB) (contentapi.ContentClient, func() context.Context) {
	tb.Helper()
	sock := os.Getenv(EnvLiveSocket)
	if sock == "" {
		tb.Skipf("set %s to a running daemon's socket", EnvLiveSocket)
	}
	cc, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(pluginkit.MaxMsgSize),
			grpc.MaxCallSendMsgSize(pluginkit.MaxMsgSize),
		),
	)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })

	ns := os.Getenv(EnvLiveNamespace)
	if ns == "" {
		ctx := metadata.AppendToOutgoingContext(context.Background(), pluginkit.TargetKey, Plugin.ID)
		return contentapi.NewContentClient(cc), func() context.Context { return ctx }
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), pluginkit.NamespaceKey, ns)
	lease := createLease(tb, leasesapi.NewLeasesClient(cc), ctx)
	ctx = metadata.AppendToOutgoingContext(ctx, leaseKey, lease)
	return contentapi.NewContentClient(cc), func() context.Context { return ctx }
}

// createLease makes a lease that keeps the run's blobs from the garbage
// collector, and removes it when tb ends.
func createLease(tb testing.TB, c leasesapi.LeasesClient, ctx context.Context) string {
	tb.Helper()
	resp, err := c.Create(ctx, &leasesapi.CreateRequest{
		ID:     "content-svc-live-" + time.Now().Format("150405.000000000"),
		Labels: map[string]string{"containerd.io/gc.expire": time.Now().Add(time.Hour).Format(time.RFC3339)},
	})
	if err != nil {
		tb.Fatalf("create lease: %v", err)
	}
	id := resp.GetLease().GetID()
	tb.Cleanup(func() { c.Delete(ctx, &leasesapi.DeleteRequest{ID: id}) })
	return id
}

func TestLiveConformance(t *testing.T) {
	c, ctx := live(t)
	contenttest.Run(t, func(*testing.T) contentapi.ContentClient { return c }, ctx)
}

func BenchmarkLiveIngest(b *testing.B) {
	c, ctx := live(b)
	benchIngest(b, c, ctx())
}

func BenchmarkLiveRead(b *testing.B) {
	c, ctx := live(b)
	benchRead(b, c, ctx())
}
