package filters_test

import (
	"testing"

	"corral.dev/pluginkit/filters"
)

// object is a container-like record exposed through adapt.
type object struct {
	name   string
	image  string
	labels map[string]string
}

// adapt maps field paths the way containerd's metadata adaptors do: plain
// fields are present when not empty, labels when the key is set.
func adapt(o object) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		switch {
		case len(path) == 1 && path[0] == "name":
			return o.name, o.name != ""
		case len(path) == 1 && path[0] == "image":
			return o.image, o.image != ""
		case len(path) == 2 && path[0] == "labels":
			v, ok := o.labels[path[1]]
			return v, ok
		case len(path) == 1 && path[0] == "labels":
			return "", len(o.labels) > 0
		}
		return "", false
	})
}

func TestMatch(t *testing.T) {
	redis := object{
		name:  "redis",
		image: "docker.io/library/redis:7",
		labels: map[string]string{
			"com.example/tier": "cache",
			"env":              "prod",
			"empty":            "",
		},
	}
	bare := object{name: "bare", image: "ghcr.io/x/bare:1"}

	tests := []struct {
		filters []string
		obj     object
		want    bool
	}{
		{nil, bare, true},
		{[]string{""}, bare, true},
		{[]string{"name==redis"}, redis, true},
		{[]string{"name==redis"}, bare, false},
		{[]string{"name!=redis"}, bare, true},
		{[]string{"name!=redis"}, redis, false},
		{[]string{"labels.env"}, redis, true},
		{[]string{"labels.env"}, bare, false},
		{[]string{"labels.empty"}, redis, true},
		{[]string{`labels.empty==""`}, redis, true},
		{[]string{`labels.missing==""`}, redis, false},
		{[]string{"labels.env==prod"}, redis, true},
		{[]string{"labels.env==dev"}, redis, false},
		{[]string{`labels."com.example/tier"==cache`}, redis, true},
		{[]string{`labels."com.example/tier"`}, bare, false},
		// != and ~= do not require the field: a missing one reads as "".
		{[]string{"labels.env!=prod"}, bare, true},
		{[]string{`labels.env!=""`}, bare, false},
		{[]string{"labels.env~=^$"}, bare, true},
		{[]string{`image~=^docker\.io/`}, redis, true},
		{[]string{`image~=^docker\.io/`}, bare, false},
		{[]string{"image~=redis"}, redis, true},
		{[]string{`image~=/^ghcr\\.io\//`}, bare, true},
		{[]string{`name~=|^(redis\|bare)$|`}, bare, true},
		{[]string{"name==redis,labels.env==prod"}, redis, true},
		{[]string{"name==redis,labels.env==dev"}, redis, false},
		{[]string{"name==redis", "name==bare"}, bare, true},
		{[]string{"name==redis", "name==other"}, bare, false},
		{[]string{"name==nope", ""}, bare, true},
		{[]string{"unknown"}, redis, false},
		{[]string{"unknown!=x"}, redis, true},
	}
	for _, tt := range tests {
		f, err := filters.ParseAll(tt.filters...)
		if err != nil {
			t.Errorf("ParseAll(%q) = %v", tt.filters, err)
			continue
		}
		if got := f.Match(adapt(tt.obj)); got != tt.want {
			t.Errorf("ParseAll(%q).Match(%s) = %v, want %v", tt.filters, tt.obj.name, got, tt.want)
		}
	}
}

func TestIntrospectionFilter(t *testing.T) {
	// ctr 2.x sends this to Introspection.Plugins for "ctr plugins ls".
	f, err := filters.Parse("type==io.containerd.snapshotter.v1, id==overlayfs")
	if err != nil {
		t.Fatal(err)
	}
	plugin := func(typ, id string) filters.Adaptor {
		return filters.AdapterFunc(func(path []string) (string, bool) {
			switch path[0] {
			case "type":
				return typ, true
			case "id":
				return id, true
			}
			return "", false
		})
	}
	tests := []struct {
		typ, id string
		want    bool
	}{
		{"io.containerd.snapshotter.v1", "overlayfs", true},
		{"io.containerd.snapshotter.v1", "btrfs", false},
		{"io.containerd.content.v1", "overlayfs", false},
	}
	for _, tt := range tests {
		if got := f.Match(plugin(tt.typ, tt.id)); got != tt.want {
			t.Errorf("Match(type=%s, id=%s) = %v, want %v", tt.typ, tt.id, got, tt.want)
		}
	}
}
