package task

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseMountOptions(t *testing.T) {
	tests := []struct {
		name      string
		options   []string
		wantFlags uintptr
		wantData  string
	}{
		{"empty", nil, 0, ""},
		{"overlay", []string{"index=off", "lowerdir=/a:/b", "upperdir=/u", "workdir=/w"}, 0,
			"index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w"},
		{"bind ro", []string{"rbind", "ro"}, unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, ""},
		{"rw clears ro", []string{"ro", "rw"}, 0, ""},
		{"flags and data", []string{"nosuid", "nodev", "size=65536k", "mode=755"},
			unix.MS_NOSUID | unix.MS_NODEV, "size=65536k,mode=755"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, data := parseMountOptions(tt.options)
			if flags != tt.wantFlags || data != tt.wantData {
				t.Errorf("parseMountOptions(%q) = (%#x, %q), want (%#x, %q)",
					tt.options, flags, data, tt.wantFlags, tt.wantData)
			}
		})
	}
}

func FuzzParseMountOptions(f *testing.F) {
	f.Add("ro,bind,lowerdir=/a")
	f.Fuzz(func(t *testing.T, s string) {
		flags, _ := parseMountOptions([]string{s})
		if _, known := mountFlags[s]; !known && flags != 0 {
			t.Errorf("unknown option %q set flags %#x", s, flags)
		}
	})
}
