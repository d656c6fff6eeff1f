package identifiers_test

import (
	"strings"
	"testing"

	"corral.dev/pluginkit/identifiers"
	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	const mustMatch = `" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$: invalid argument`
	long := strings.Repeat("a", identifiers.MaxLength+1)
	tests := []struct {
		in      string
		wantErr string // empty when s is valid
	}{
		{in: "default"},
		{in: "k8s.io"},
		{in: "moby"},
		{in: "a"},
		{in: "0"},
		{in: "redis-7.2_alpine"},
		{in: "Mixed.Case-ID_09"},
		{in: "1.2.3"},
		{in: strings.Repeat("a", identifiers.MaxLength)},
		{in: "", wantErr: "identifier must not be empty: invalid argument"},
		{
			in:      long,
			wantErr: `identifier "` + long + `" must be at most 76 characters long: invalid argument`,
		},
		{in: "-a", wantErr: `identifier "-a` + mustMatch},
		{in: "a-", wantErr: `identifier "a-` + mustMatch},
		{in: "a..b", wantErr: `identifier "a..b` + mustMatch},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			err := identifiers.Validate(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Validate(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Validate(%q) = %v, want %s", tt.in, err, tt.wantErr)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Validate(%q) error is not invalid argument", tt.in)
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	for _, in := range []string{
		".a", "a.", "_a", "a_", "a..b", "a.-b", "a__b", "a b", "a/b", "../x",
		"a:b", "ä", "a\x00", "a\n", " a",
	} {
		err := identifiers.Validate(in)
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("Validate(%q) = %v, want an invalid argument error", in, err)
		}
	}
}
