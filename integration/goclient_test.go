//go:build linux

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"corral.dev/pluginkit/testkit"
)

// newClient connects the containerd Go client to d; it is closed when t ends.
func newClient(t *testing.T, d *daemon) *client.Client {
	t.Helper()
	c, err := client.New(d.Socket)
	if err != nil {
		t.Fatalf("client.New(%s): %v", d.Socket, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clientContext is a context in namespace "default" that ends with t.
func clientContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return namespaces.WithNamespace(ctx, "default")
}

// nsEvent is a namespace event as the tests compare it.
type nsEvent struct {
	Namespace, Topic, Name string
	Labels                 map[string]string
}

// subscription is an Events.Subscribe stream made with the Go client.
type subscription struct {
	envelopes <-chan *events.Envelope
	errs      <-chan error
}

// subscribe subscribes to every event and waits until the stream delivers.
func subscribe(t *testing.T, ctx context.Context, c *client.Client) *subscription {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	envelopes, errs := c.EventService().Subscribe(ctx)
	s := &subscription{envelopes: envelopes, errs: errs}

	// The stream is opened in the background: publish probe events until
	// one arrives.
	probe := uniqueNS("probe")
	store := c.NamespaceService()
	deadline := time.After(10 * time.Second)
	for {
		if err := store.Create(ctx, probe, nil); err != nil {
			t.Fatalf("create probe namespace: %v", err)
		}
		if err := store.Delete(ctx, probe); err != nil {
			t.Fatalf("delete probe namespace: %v", err)
		}
		for {
			select {
			case e := <-envelopes:
				if e.Namespace == probe {
					s.drain(probe)
					return s
				}
				continue
			case err := <-errs:
				t.Fatalf("subscribe: %v", err)
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatal("subscribe: no event in 10s")
			}
			break
		}
	}
}

// drain drops the events about ns that are already on their way.
func (s *subscription) drain(ns string) {
	for {
		select {
		case e := <-s.envelopes:
			if e.Namespace != ns {
				return
			}
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

// next returns the next n events about namespace ns.
func (s *subscription) next(t *testing.T, ns string, n int) []nsEvent {
	t.Helper()
	var got []nsEvent
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case e := <-s.envelopes:
			if e.Namespace != ns {
				continue
			}
			got = append(got, decodeNSEvent(t, e))
		case err := <-s.errs:
			t.Fatalf("subscription ended: %v", err)
		case <-timeout:
			t.Fatalf("got %d events about %s in 5s, want %d: %+v", len(got), ns, n, got)
		}
	}
	return got
}

func decodeNSEvent(t *testing.T, e *events.Envelope) nsEvent {
	t.Helper()
	v, err := typeurl.UnmarshalAny(e.Event)
	if err != nil {
		t.Fatalf("decode %s event: %v", e.Topic, err)
	}
	ev := nsEvent{Namespace: e.Namespace, Topic: e.Topic}
	switch v := v.(type) {
	case *eventtypes.NamespaceCreate:
		ev.Name, ev.Labels = v.Name, v.Labels
	case *eventtypes.NamespaceUpdate:
		ev.Name, ev.Labels = v.Name, v.Labels
	case *eventtypes.NamespaceDelete:
		ev.Name = v.Name
	default:
		t.Fatalf("%s event: unexpected payload %T", e.Topic, v)
	}
	return ev
}

// TestGoClient drives the daemon with the containerd Go client: Version,
// Server, Plugins, the namespace store and the events it publishes.
func TestGoClient(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	ctx := clientContext(t)

	v, err := c.Version(ctx)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if want := serverVersion(t); v.Version != want {
		t.Errorf("Version = %q, want %q", v.Version, want)
	}
	srv, err := c.Server(ctx)
	if err != nil {
		t.Fatalf("Server: %v", err)
	}
	uuid, err := os.ReadFile(filepath.Join(d.Root, "io.containerd.grpc.v1.introspection", "uuid"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSpace(string(uuid)); srv.UUID != want {
		t.Errorf("Server().UUID = %q, want %q (from root)", srv.UUID, want)
	}
	checkClientPlugins(t, ctx, c)

	sub := subscribe(t, ctx, c)
	ns := uniqueNS("goclient")
	store := c.NamespaceService()
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	labels := func(want map[string]string) {
		t.Helper()
		got, err := store.Labels(ctx, ns)
		step("Labels", err)
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("Labels(%s) (-want +got):\n%s", ns, diff)
		}
	}

	step("Create", store.Create(ctx, ns, map[string]string{"k": "v"}))
	list, err := store.List(ctx)
	step("List", err)
	if !slices.Contains(list, ns) {
		t.Errorf("List = %q, want it to hold %s", list, ns)
	}
	labels(map[string]string{"k": "v"})
	if err := store.Create(ctx, ns, nil); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Create(%s) = %v, want AlreadyExists", ns, err)
	}
	step("SetLabel", store.SetLabel(ctx, ns, "a", "b"))
	labels(map[string]string{"a": "b", "k": "v"})
	step("SetLabel to empty", store.SetLabel(ctx, ns, "k", ""))
	labels(map[string]string{"a": "b"})
	step("Delete", store.Delete(ctx, ns))
	list, err = store.List(ctx)
	step("List", err)
	if slices.Contains(list, ns) {
		t.Errorf("List after Delete = %q, still holds %s", list, ns)
	}

	want := []nsEvent{
		{Namespace: ns, Topic: "/namespaces/create", Name: ns, Labels: map[string]string{"k": "v"}},
		{Namespace: ns, Topic: "/namespaces/update", Name: ns, Labels: map[string]string{"a": "b", "k": "v"}},
		{Namespace: ns, Topic: "/namespaces/update", Name: ns, Labels: map[string]string{"a": "b"}},
		{Namespace: ns, Topic: "/namespaces/delete", Name: ns},
	}
	if diff := cmp.Diff(want, sub.next(t, ns, len(want)), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// checkClientPlugins checks that introspection lists bolt with no error,
// and returns its exports.
func checkClientPlugins(t *testing.T, ctx context.Context, c *client.Client) map[string]string {
	t.Helper()
	filter := fmt.Sprintf("type==io.containerd.metadata.v1,id==%s", boltID)
	resp, err := c.IntrospectionService().Plugins(ctx, filter)
	if err != nil {
		t.Fatalf("Plugins(%s): %v", filter, err)
	}
	if len(resp.Plugins) != 1 {
		t.Fatalf("Plugins(%s) = %d plugins, want 1: %v", filter, len(resp.Plugins), resp.Plugins)
	}
	p := resp.Plugins[0]
	if p.ID != boltID || p.InitErr != nil {
		t.Errorf("Plugins(%s) = id %q, init error %v; want %s, none", filter, p.ID, p.InitErr, boltID)
	}
	return p.Exports
}

// TestGoClientMissingNamespace checks what the client relies on for a
// namespace that does not exist: Labels (Namespaces.Get) answers empty
// labels and Delete answers NotFound, and neither creates it.
func TestGoClientMissingNamespace(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	store := newClient(t, d).NamespaceService()
	ctx := clientContext(t)
	ns := uniqueNS("missing")

	labels, err := store.Labels(ctx, ns)
	if err != nil || len(labels) != 0 {
		t.Errorf("Labels(%s) = %v, %v; want no labels, no error", ns, labels, err)
	}
	if err := store.Delete(ctx, ns); !errdefs.IsNotFound(err) {
		t.Errorf("Delete(%s) = %v, want NotFound", ns, err)
	}
	list, err := store.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if slices.Contains(list, ns) {
		t.Errorf("List = %q: Labels or Delete created %s", list, ns)
	}
}
