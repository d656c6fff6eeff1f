//go:build linux

package sidebyside_test

import (
	"context"
	"os"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc/metadata"

	"corral.dev/bench/sidebyside"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/testkit"
	"corral.dev/supervisor/host"
)

// namespacesService is the service metadata-svc serves.
const namespacesService = "containerd.services.namespaces.v1.Namespaces"

// hopTarget is a Namespaces client and the processes that serve it.
type hopTarget struct {
	client namespacesapi.NamespacesClient
	// pid is the process measured as main; its descendants are measured
	// as children.
	pid                   int
	mainLabel, childLabel string
}

// idlePause is how long the -idle variants of BenchmarkHop wait between
// calls, long enough for the server's threads to park.
const idlePause = 500 * time.Microsecond

// BenchmarkHop measures one unary Namespaces.List made straight to the
// plugin process (direct), through our supervisor's public socket
// (supervisor), and to containerd 1.6.20 for reference. The difference
// between direct and supervisor is the cost of the hop. Each also reports
// the server processes' CPU per call from /proc. The -idle variants pause
// between calls (outside the timer) so that every call wakes an idle
// server, as calls through the supervisor find the plugin.
func BenchmarkHop(b *testing.B) {
	testkit.RequiresRoot(b)
	bin := ourBinary(b)
	ctx := metadata.AppendToOutgoingContext(context.Background(), pluginkit.NamespaceKey, "default")

	targets := []struct {
		name  string
		start func(b *testing.B, bin string) hopTarget
	}{
		{"direct", startPlugin},
		{"supervisor", startSupervisor},
		{"containerd", startContainerd},
	}
	for _, tc := range targets {
		// Start outside b.Run: the function passed to b.Run runs once per
		// round of b.N.
		target := tc.start(b, bin)
		b.Run(tc.name, func(b *testing.B) {
			benchList(ctx, b, target, 0)
		})
		b.Run(tc.name+"-idle", func(b *testing.B) {
			benchList(ctx, b, target, idlePause)
		})
	}
}

// benchList makes b.N calls, pause apart, and reports the CPU of target's
// processes.
func benchList(ctx context.Context, b *testing.B, target hopTarget, pause time.Duration) {
	if _, err := target.client.List(ctx, &namespacesapi.ListNamespacesRequest{}); err != nil {
		b.Fatal(err)
	}
	before, err := sidebyside.ReadCPU(target.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := target.client.List(ctx, &namespacesapi.ListNamespacesRequest{}); err != nil {
			b.Fatal(err)
		}
		if pause > 0 {
			b.StopTimer()
			time.Sleep(pause)
			b.StartTimer()
		}
	}
	b.StopTimer()
	after, err := sidebyside.ReadCPU(target.pid)
	if err != nil {
		b.Fatal(err)
	}
	used := after.Sub(before)
	perOp := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(perOp(used.Daemon), target.mainLabel+"-cpu-us/op")
	if target.childLabel != "" {
		b.ReportMetric(perOp(used.ChildTotal()), target.childLabel+"-cpu-us/op")
	}
}

// startPlugin runs metadata-svc under a plugin host in this process, as
// the supervisor would, and connects to it without the router.
func startPlugin(b *testing.B, bin string) hopTarget {
	dir := b.TempDir()
	h := host.New([]host.Spec{{
		Plugin: pluginkit.Plugin{Type: "io.containerd.metadata.v1", ID: "bolt"},
		Path:   bin,
		Root:   dir,
		State:  dir,
	}}, host.Options{LogLevel: "error", Log: zerolog.Nop()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h.Start(ctx)
	b.Cleanup(h.Stop)

	lease, err := h.Acquire(ctx, namespacesService, "")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lease.Release)
	pid := h.Instances()[0].Status().Pid
	if pid == 0 {
		b.Fatal("plugin has no pid")
	}
	return hopTarget{
		client:    namespacesapi.NewNamespacesClient(lease.Conn()),
		pid:       pid,
		mainLabel: "plugin",
	}
}

// startSupervisor runs our daemon and connects to its public socket.
func startSupervisor(b *testing.B, bin string) hopTarget {
	return startDaemon(b, func(ctx context.Context) (*sidebyside.Daemon, error) {
		return sidebyside.StartOurs(ctx, bin)
	}, "supervisor", "plugin")
}

// startContainerd runs containerd 1.6.20 and connects to its socket.
func startContainerd(b *testing.B, _ string) hopTarget {
	if _, err := os.Stat(sidebyside.ContainerdPath); err != nil {
		b.Skipf("no %s: %v", sidebyside.ContainerdPath, err)
	}
	return startDaemon(b, func(ctx context.Context) (*sidebyside.Daemon, error) {
		return sidebyside.StartContainerd(ctx, sidebyside.ContainerdPath)
	}, "containerd", "")
}

func startDaemon(
	b *testing.B,
	start func(ctx context.Context) (*sidebyside.Daemon, error),
	mainLabel, childLabel string,
) hopTarget {
	d, err := start(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Stop(); err != nil {
			b.Error(err)
		}
	})
	conn, err := sidebyside.Dial(d.Address)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return hopTarget{
		client:     namespacesapi.NewNamespacesClient(conn),
		pid:        d.Pid(),
		mainLabel:  mainLabel,
		childLabel: childLabel,
	}
}
