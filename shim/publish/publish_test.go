package publish

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/emptypb"
)

// daemon records the envelopes forwarded to it.
type daemon struct {
	mu     sync.Mutex
	topics []string
	ids    []string
	ns     []string
}

func (d *daemon) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	md, _ := ttrpc.GetMetadata(ctx)
	v, err := typeurl.UnmarshalAny(r.Envelope.Event)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.topics = append(d.topics, r.Envelope.Topic)
	d.ids = append(d.ids, v.(*eventtypes.TaskExit).ID)
	d.ns = append(d.ns, md[namespaceHeader]...)
	return &emptypb.Empty{}, nil
}

// serve starts a ttrpc events service on path and returns its stopper.
func serve(t *testing.T, path string, d *daemon) func() {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(srv, d)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), l) }()
	return func() { srv.Close() }
}

func TestPublishWhileDaemonDown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.sock")
	p := New("unix://"+path, "ns1", zerolog.Nop())

	// The daemon is not there yet: events wait in order.
	for _, id := range []string{"a", "b", "c"} {
		p.Publish("/tasks/exit", &eventtypes.TaskExit{ContainerID: "c1", ID: id})
	}
	time.Sleep(300 * time.Millisecond)

	d := &daemon{}
	stop := serve(t, path, d)
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush = %v, want nil", err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if got := len(d.ids); got != 3 || d.ids[0] != "a" || d.ids[1] != "b" || d.ids[2] != "c" {
		t.Fatalf("forwarded ids = %v, want [a b c]", d.ids)
	}
	for i, ns := range d.ns {
		if ns != "ns1" || d.topics[i] != "/tasks/exit" {
			t.Errorf("event %d: namespace %q topic %q, want ns1 /tasks/exit", i, ns, d.topics[i])
		}
	}
}

func TestPublishAfterDaemonRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.sock")
	d := &daemon{}
	stop := serve(t, path, d)
	p := New(path, "ns1", zerolog.Nop())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	p.Publish("/tasks/exit", &eventtypes.TaskExit{ID: "before"})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	p.Publish("/tasks/exit", &eventtypes.TaskExit{ID: "during"})
	time.Sleep(200 * time.Millisecond)
	stop = serve(t, path, d)
	defer stop()
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush after restart = %v, want nil", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Delivery is at least once: a Forward the closing server handled but
	// whose answer was lost is sent again. Order and presence are what count.
	if got := slices.Compact(slices.Clone(d.ids)); !slices.Equal(got, []string{"before", "during"}) {
		t.Fatalf("forwarded ids = %v, want before then during", d.ids)
	}
}
