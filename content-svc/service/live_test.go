package service

import (
	"context"
	"os"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/contenttest"
)

// EnvLiveSocket names a running daemon's internal socket
// (<state>/internal.sock). When set, the live tests and benchmarks reach
// the content plugin through the supervisor, as the metadata plugin does.
const EnvLiveSocket = "CORRAL_CONTENT_LIVE_SOCKET"

// liveClient returns a client of the content plugin behind the supervisor
// at the socket EnvLiveSocket names, or skips tb.
func liveClient(tb testing.TB) contentapi.ContentClient {
	tb.Helper()
	sock := os.Getenv(EnvLiveSocket)
	if sock == "" {
		tb.Skipf("set %s to a running daemon's internal socket", EnvLiveSocket)
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
	return contentapi.NewContentClient(cc)
}

// liveContext addresses calls to the content plugin.
func liveContext() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), pluginkit.TargetKey, Plugin.ID)
}

func TestLiveConformance(t *testing.T) {
	liveClient(t)
	contenttest.Run(t,
		func(t *testing.T) contentapi.ContentClient { return liveClient(t) },
		liveContext,
	)
}

func BenchmarkLiveIngest(b *testing.B) {
	benchIngest(b, liveClient(b), liveContext())
}

func BenchmarkLiveRead(b *testing.B) {
	benchRead(b, liveClient(b), liveContext())
}
