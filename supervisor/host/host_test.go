package host

import (
	"testing"

	"github.com/rs/zerolog"
)

// TestRouteMethodsAheadOfServices routes a method a plugin claims to it,
// and the rest of the method's service to the service's plugin.
func TestRouteMethodsAheadOfServices(t *testing.T) {
	h := New(nil, Options{Log: zerolog.Nop()})
	bolt, content := &Instance{h: h}, &Instance{h: h}
	const svc = "containerd.services.content.v1.Content"
	h.route(bolt, []string{svc, "containerd.services.leases.v1.Leases"}, nil)
	h.route(content, nil, []string{"/" + svc + "/Write"})

	for method, want := range map[string]*Instance{
		"/" + svc + "/Write":                           content,
		"/" + svc + "/Info":                            bolt,
		"/containerd.services.leases.v1.Leases/Create": bolt,
		"/containerd.services.images.v1.Images/List":   nil,
	} {
		if got := h.lookup(method); got != want {
			t.Errorf("lookup(%q) = %p, want %p", method, got, want)
		}
	}

	// A claim already taken stays with the first plugin.
	other := &Instance{h: h}
	h.route(other, nil, []string{"/" + svc + "/Write"})
	if got := h.lookup("/" + svc + "/Write"); got != content {
		t.Errorf("second claim of Write moved it to %p", got)
	}
}
