package pluginkit

import "testing"

func TestServiceOf(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/containerd.services.namespaces.v1.Namespaces/Get", "containerd.services.namespaces.v1.Namespaces"},
		{"/a.B/C", "a.B"},
		{"nomethod", "nomethod"},
	} {
		if got := ServiceOf(tc.in); got != tc.want {
			t.Errorf("ServiceOf(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
