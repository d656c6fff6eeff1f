package filters

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzParse checks that Parse never panics, that its errors are well
// formed, and that a parsed filter matches without panicking and prints
// back to a string that parses to the same filter.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"",
		"name==foo",
		"type==io.containerd.snapshotter.v1, id==overlayfs",
		`labels."com.example/x"==y,labels.env!=prod`,
		`image~=/^docker\.io\//,name~=|a\|b|`,
		`name=="a\x41\101\u00e9\U0001F600\n"`,
		"labels.foo",
		"name=foo",
		`labels."x`,
		"name~=[",
	} {
		f.Add(seed)
	}
	adaptors := []Adaptor{
		AdapterFunc(func([]string) (string, bool) { return "", false }),
		AdapterFunc(func(path []string) (string, bool) { return strings.Join(path, "."), true }),
	}
	f.Fuzz(func(t *testing.T, s string) {
		parsed, err := Parse(s)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Parse(%q) error %v is not a *SyntaxError wrapping ErrInvalidArgument", s, err)
			}
			if se.Offset < 0 || se.Offset > len(s) {
				t.Fatalf("Parse(%q) error offset %d is outside the input", s, se.Offset)
			}
			return
		}
		for _, a := range adaptors {
			parsed.Match(a)
		}

		canon := parsed.(All).String()
		again, err := Parse(canon)
		if err != nil {
			t.Fatalf("Parse(%q) = %v; canonical form of %q", canon, err, s)
		}
		if got := again.(All).String(); got != canon {
			t.Fatalf("canonical form of %q is %q, which prints as %q", s, canon, got)
		}
	})
}
