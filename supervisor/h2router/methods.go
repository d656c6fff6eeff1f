package h2router

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The public API's descriptors tell the router which calls stream.
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

// methodTable caches whether each method's client streams.
type methodTable struct {
	m sync.Map // :path -> bool
}

// clientStreams reports whether the client of path may send more than one
// message. A method no descriptor knows counts as streaming, which is
// never replayed.
func (t *methodTable) clientStreams(path string) bool {
	if v, ok := t.m.Load(path); ok {
		return v.(bool)
	}
	v, known := lookupClientStreams(path)
	if known {
		t.m.Store(path, v)
	}
	return v
}

// lookupClientStreams looks path up in the descriptors; known is false
// for a method they do not have, which is not cached.
func lookupClientStreams(path string) (streams, known bool) {
	name := strings.TrimPrefix(path, "/")
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return true, false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name[:i]))
	if err != nil {
		return true, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return true, false
	}
	md := sd.Methods().ByName(protoreflect.Name(name[i+1:]))
	if md == nil {
		return true, false
	}
	return md.IsStreamingClient(), true
}
