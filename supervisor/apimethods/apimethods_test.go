package apimethods

import "testing"

func TestKind(t *testing.T) {
	var tab Table
	for _, tc := range []struct {
		method string
		want   Kind
	}{
		{"/containerd.services.namespaces.v1.Namespaces/List", Kind{}},
		{"/containerd.services.content.v1.Content/Read", Kind{ServerStreams: true}},
		{"/containerd.services.content.v1.Content/Write", Bidi},
		{"/containerd.services.namespaces.v1.Namespaces/NoSuch", Bidi},
		{"/no.Such/Method", Bidi},
		{"garbage", Bidi},
	} {
		if got := tab.Kind(tc.method); got != tc.want {
			t.Errorf("Kind(%q) = %+v, want %+v", tc.method, got, tc.want)
		}
	}
	n := 0
	tab.m.Range(func(any, any) bool { n++; return true })
	if n != 3 {
		t.Errorf("table keeps %d methods, want the 3 known ones", n)
	}
}
