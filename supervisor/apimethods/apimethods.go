// Package apimethods tells, from the descriptors of containerd's public API,
// which sides of a method stream, so that the routers know which calls they
// may hold and replay.
package apimethods

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The public API's descriptors.
	_ "github.com/containerd/containerd/api/services/containers/v1"
	_ "github.com/containerd/containerd/api/services/content/v1"
	_ "github.com/containerd/containerd/api/services/diff/v1"
	_ "github.com/containerd/containerd/api/services/images/v1"
	_ "github.com/containerd/containerd/api/services/leases/v1"
	_ "github.com/containerd/containerd/api/services/namespaces/v1"
	_ "github.com/containerd/containerd/api/services/sandbox/v1"
	_ "github.com/containerd/containerd/api/services/snapshots/v1"
	_ "github.com/containerd/containerd/api/services/streaming/v1"
	_ "github.com/containerd/containerd/api/services/tasks/v1"
	_ "github.com/containerd/containerd/api/services/transfer/v1"
)

// Kind says which sides of a method stream.
type Kind struct {
	ClientStreams bool
	ServerStreams bool
}

// Bidi is the kind assumed for a method no descriptor knows: forwarding it
// as streaming both ways is always correct, and it is never replayed.
var Bidi = Kind{ClientStreams: true, ServerStreams: true}

// Table caches the kinds of the methods it has looked up. Only known methods
// are kept, so that clients naming made-up methods cannot grow it.
type Table struct {
	m sync.Map // full method name -> Kind
}

// Kind returns the kind of the full method name "/pkg.Service/Method", and
// Bidi for a method the descriptors do not have.
func (t *Table) Kind(method string) Kind {
	if k, ok := t.m.Load(method); ok {
		return k.(Kind)
	}
	k, known := lookup(method)
	if known {
		t.m.Store(method, k)
	}
	return k
}

func lookup(method string) (Kind, bool) {
	name := strings.TrimPrefix(method, "/")
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return Bidi, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name[:i]))
	if err != nil {
		return Bidi, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return Bidi, false
	}
	md := sd.Methods().ByName(protoreflect.Name(name[i+1:]))
	if md == nil {
		return Bidi, false
	}
	return Kind{ClientStreams: md.IsStreamingClient(), ServerStreams: md.IsStreamingServer()}, true
}
