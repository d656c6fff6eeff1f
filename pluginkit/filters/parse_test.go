package filters

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
)

// sel is the comparable shape of a parsed selector.
type sel struct {
	Path  []string
	Op    string
	Value string
}

// flatten returns the selectors of a filter returned by Parse.
func flatten(t *testing.T, f Filter) []sel {
	t.Helper()
	all, ok := f.(All)
	if !ok {
		t.Fatalf("Parse returned %T, want All", f)
	}
	var out []sel
	for _, f := range all {
		s := f.(selector)
		out = append(out, sel{Path: s.path, Op: s.op.String(), Value: s.value})
	}
	return out
}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		want  []sel
		canon string // String() of the result; the input when empty
	}{
		{
			name: "empty",
			in:   "",
		},
		{
			name: "equal",
			in:   "name==foo",
			want: []sel{{Path: []string{"name"}, Op: "==", Value: "foo"}},
		},
		{
			name: "not equal",
			in:   "labels.env!=prod",
			want: []sel{{Path: []string{"labels", "env"}, Op: "!=", Value: "prod"}},
		},
		{
			name: "regexp",
			in:   `image~=^docker\.io/library/`,
			want: []sel{{Path: []string{"image"}, Op: "~=", Value: `^docker\.io/library/`}},
		},
		{
			name: "presence",
			in:   "labels.foo",
			want: []sel{{Path: []string{"labels", "foo"}}},
		},
		{
			name: "ctr 2.x introspection filter",
			in:   "type==io.containerd.snapshotter.v1, id==overlayfs",
			want: []sel{
				{Path: []string{"type"}, Op: "==", Value: "io.containerd.snapshotter.v1"},
				{Path: []string{"id"}, Op: "==", Value: "overlayfs"},
			},
			canon: "type==io.containerd.snapshotter.v1,id==overlayfs",
		},
		{
			name: "whitespace around every token",
			in:   "  labels . foo  ==  bar ,  name ,id~=x  ",
			want: []sel{
				{Path: []string{"labels", "foo"}, Op: "==", Value: "bar"},
				{Path: []string{"name"}},
				{Path: []string{"id"}, Op: "~=", Value: "x"},
			},
			canon: "labels.foo==bar,name,id~=x",
		},
		{
			name: "quoted label key",
			in:   `labels."com.example/x"==y`,
			want: []sel{{Path: []string{"labels", "com.example/x"}, Op: "==", Value: "y"}},
		},
		{
			name:  "quoted path components everywhere",
			in:    `"labels"."with space".""`,
			want:  []sel{{Path: []string{"labels", "with space", ""}}},
			canon: `labels."with space".""`,
		},
		{
			name: "field names may start with digits or underscores",
			in:   "1a._b",
			want: []sel{{Path: []string{"1a", "_b"}}},
		},
		{
			name:  "quoted value with escapes",
			in:    `name=="a,b \"c\"\t\x41\101\u00e9\U0001F600\\"`,
			want:  []sel{{Path: []string{"name"}, Op: "==", Value: "a,b \"c\"\tAAé😀\\"}},
			canon: `name=="a,b \"c\"\tAAé😀\\"`,
		},
		{
			name: "empty quoted value",
			in:   `name==""`,
			want: []sel{{Path: []string{"name"}, Op: "==", Value: ""}},
		},
		{
			name:  "slash-quoted regexp",
			in:    `name~=/^a\/b\\d+$/`,
			want:  []sel{{Path: []string{"name"}, Op: "~=", Value: `^a/b\d+$`}},
			canon: `name~=^a/b\d+$`,
		},
		{
			name:  "pipe-quoted regexp",
			in:    `name~=|a\|b|`,
			want:  []sel{{Path: []string{"name"}, Op: "~=", Value: "a|b"}},
			canon: `name~=a|b`,
		},
		{
			name: "single quotes and backquotes are literal",
			in:   "name=='foo',id==`x`",
			want: []sel{
				{Path: []string{"name"}, Op: "==", Value: "'foo'"},
				{Path: []string{"id"}, Op: "==", Value: "`x`"},
			},
		},
		{
			name: "bare values take any graphic rune",
			in:   `image==docker.io/library/redis:7@sha256:ab,x==a"b"=c,y==.hidden,z==é`,
			want: []sel{
				{Path: []string{"image"}, Op: "==", Value: "docker.io/library/redis:7@sha256:ab"},
				{Path: []string{"x"}, Op: "==", Value: `a"b"=c`},
				{Path: []string{"y"}, Op: "==", Value: ".hidden"},
				{Path: []string{"z"}, Op: "==", Value: "é"},
			},
		},
		{
			name:  "surrogate escape decodes to the replacement rune",
			in:    `name=="\ud800"`,
			want:  []sel{{Path: []string{"name"}, Op: "==", Value: "\uFFFD"}},
			canon: "name==\uFFFD",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.in, err)
			}
			if diff := cmp.Diff(tt.want, flatten(t, f)); diff != "" {
				t.Errorf("Parse(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
			canon := tt.canon
			if canon == "" {
				canon = tt.in
			}
			if got := f.(All).String(); got != canon {
				t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, canon)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in     string
		offset int
		msg    string
	}{
		{"   ", 3, "expected a field name, found end of filter"},
		{",name", 0, `expected a field name, found ','`},
		{"name,", 5, "expected a field name, found end of filter"},
		{"a,,b", 2, `expected a field name, found ','`},
		{"name=foo", 4, `unsupported operator "="`},
		{"name===foo", 4, `unsupported operator "==="`},
		{"name==!foo", 4, `unsupported operator "==!"`},
		{"name== =foo", 7, `expected a value, found '='`},
		{"name==", 6, "expected a value, found end of filter"},
		{"name==,x", 6, `expected a value, found ','`},
		{"name foo", 5, `expected an operator ("==", "!=" or "~="), found 'f'`},
		{"labels.foo-bar", 10, `expected an operator ("==", "!=" or "~="), found '-'`},
		{"labels.", 7, "expected a field name, found end of filter"},
		{"labels..x", 7, `expected a field name, found '.'`},
		{"'name'==x", 0, `expected a field name, found '\''`},
		{"labels./x/", 7, `field names may only be quoted with '"'`},
		{"name==/x/", 6, `only ~= values may be quoted with '/'`},
		{"name!=|x|", 6, `only ~= values may be quoted with '|'`},
		{"name==foo bar", 10, `expected "," or end of filter, found 'b'`},
		{`name=="foo"bar`, 11, `expected "," or end of filter, found 'b'`},
		{`labels."x`, 7, "unterminated quoted string"},
		{"name==\"a\nb\"", 6, "unterminated quoted string"},
		{`name=="a\"`, 6, "unterminated quoted string"},
		{`name~="\d"`, 7, "invalid escape sequence"},
		{`name~=/a\d/`, 8, "invalid escape sequence"},
		{`name=="\'"`, 7, "invalid escape sequence"},
		{`name=="\400"`, 7, "invalid escape sequence"},
		{`name=="\x4"`, 7, "invalid escape sequence"},
		{`name=="\U00110000"`, 7, "invalid escape sequence"},
		{`name=="\`, 7, "unterminated quoted string"},
		{"name~=[", 6, "invalid regular expression: error parsing regexp: missing closing ]: `[`"},
		{"name==\x00", 6, "unexpected NUL"},
		{"name==\xff", 6, "invalid UTF-8"},
		{"name==a\x01", 7, `expected "," or end of filter, found '\x01'`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", tt.in, f)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Parse(%q) error %v is not invalid argument", tt.in, err)
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) error %T is not a *SyntaxError", tt.in, err)
			}
			got := SyntaxError{Filter: se.Filter, Offset: se.Offset, Msg: se.Msg}
			want := SyntaxError{Filter: tt.in, Offset: tt.offset, Msg: tt.msg}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Parse(%q) error mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestSyntaxErrorMessage(t *testing.T) {
	_, err := Parse("name=foo")
	want := `parse filter "name=foo" at offset 4: unsupported operator "=": invalid argument`
	if err == nil || err.Error() != want {
		t.Errorf("Parse error = %v, want %s", err, want)
	}
}

func TestParseAll(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    string // the result's type, or "error"
		wantLen int    // for Any
	}{
		{name: "no filters", in: nil, want: "always"},
		{name: "only empty filters", in: []string{"", ""}, want: "always"},
		{name: "an empty filter among others", in: []string{"name==a", ""}, want: "always"},
		{name: "one filter", in: []string{"name==a"}, want: "all"},
		{name: "two filters", in: []string{"name==a", "name==b"}, want: "any", wantLen: 2},
		{name: "bad filter after an empty one", in: []string{"", "name=a"}, want: "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseAll(tt.in...)
			var got string
			var gotLen int
			switch f := f.(type) {
			case nil:
				got = "error"
				if !errdefs.IsInvalidArgument(err) {
					t.Errorf("ParseAll(%q) error %v is not invalid argument", tt.in, err)
				}
			case All:
				got = "all"
				if len(f) == 0 {
					got = "always"
				}
			case Any:
				got, gotLen = "any", len(f)
			default:
				got = "unexpected"
			}
			if got != tt.want || gotLen != tt.wantLen {
				t.Errorf("ParseAll(%q) = %s of %d (err %v), want %s of %d",
					tt.in, got, gotLen, err, tt.want, tt.wantLen)
			}
		})
	}
}
