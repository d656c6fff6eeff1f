package labels

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		ok               bool
	}{
		{"plain", "k", "v", true},
		{"empty value", "k", "", true},
		{"at the limit", "k", strings.Repeat("v", MaxSize-1), true},
		{"empty key", "", "v", false},
		{"over the limit", "k", strings.Repeat("v", MaxSize), false},
	} {
		err := Validate(tc.key, tc.value)
		if tc.ok != (err == nil) || (err != nil && !errdefs.IsInvalidArgument(err)) {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
		if all := ValidateAll(map[string]string{"a": "b", tc.key: tc.value}); (all == nil) != (err == nil) {
			t.Errorf("%s: ValidateAll = %v, Validate = %v", tc.name, all, err)
		}
	}
}
