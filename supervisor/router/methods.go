package router

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

// kind says which sides of a call stream.
type kind struct {
	clientStreams bool
	serverStreams bool
}

// methodTable caches the kind of each method the router has seen.
type methodTable struct {
	m sync.Map // full method name -> kind
}

// kind returns the kind of a full method name. A method the descriptors do not
// know is treated as streaming both ways, which forwards any call correctly.
func (t *methodTable) kind(method string) kind {
	if k, ok := t.m.Load(method); ok {
		return k.(kind)
	}
	k := lookupKind(method)
	t.m.Store(method, k)
	return k
}

func lookupKind(method string) kind {
	bidi := kind{clientStreams: true, serverStreams: true}
	name := strings.TrimPrefix(method, "/")
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return bidi
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name[:i]))
	if err != nil {
		return bidi
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return bidi
	}
	md := sd.Methods().ByName(protoreflect.Name(name[i+1:]))
	if md == nil {
		return bidi
	}
	return kind{clientStreams: md.IsStreamingClient(), serverStreams: md.IsStreamingServer()}
}
