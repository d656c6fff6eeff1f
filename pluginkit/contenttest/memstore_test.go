package contenttest_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"corral.dev/pluginkit/contenttest"
)

// TestMemStoreConformance holds the in-memory store to the suite that
// content-svc passes.
func TestMemStoreConformance(t *testing.T) {
	gs := grpc.NewServer()
	contentapi.RegisterContentServer(gs, contenttest.NewMemStore())
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	contenttest.Run(t, func(t *testing.T) contentapi.ContentClient {
		cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return contentapi.NewContentClient(cc)
	}, context.Background)
}
