package placement

import (
	"slices"
	"strings"
	"testing"
)

func TestParseList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"0", []int{0}},
		{"0-3", []int{0, 1, 2, 3}},
		{"3,1,2", []int{1, 2, 3}},
		{"0-2,1-3", []int{0, 1, 2, 3}},
		{" 4 , 6-7", []int{4, 6, 7}},
		{"1023", []int{1023}},
	} {
		got, err := ParseList(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseList(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", " ", "a", "-1", "1-", "-", "3-1", "1,,2", "1024", "0-1024", "1.5", "0x1"} {
		if got, err := ParseList(in); err == nil {
			t.Errorf("ParseList(%q) = %v, want an error", in, got)
		}
	}
}

func TestFormatList(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{0}, "0"},
		{[]int{0, 1}, "0-1"},
		{[]int{0, 1, 2, 5, 7, 8}, "0-2,5,7-8"},
	} {
		if got := FormatList(tc.in); got != tc.want {
			t.Errorf("FormatList(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if len(tc.in) > 0 {
			back, err := ParseList(tc.want)
			if err != nil || !slices.Equal(back, tc.in) {
				t.Errorf("ParseList(%q) = %v, %v; want %v", tc.want, back, err, tc.in)
			}
		}
	}
}

func TestPick(t *testing.T) {
	host := func(n int) []int {
		cpus := make([]int, n)
		for i := range cpus {
			cpus[i] = i
		}
		return cpus
	}
	for _, tc := range []struct {
		setting string
		host    []int
		want    []int
		err     string
	}{
		{"auto", host(1), []int{0}, ""},
		{"auto", host(2), []int{1}, ""},
		{"auto", host(8), []int{6, 7}, ""},
		{"auto", host(16), []int{12, 13, 14, 15}, ""},
		{"auto", []int{2, 5, 9}, []int{9}, ""},
		{"auto", nil, nil, ""},
		{"all", host(4), nil, ""},
		{"0,2", host(4), []int{0, 2}, ""},
		{"3-5", host(4), nil, "CPU 4 is not one the daemon may run on (0-3)"},
		{"x", host(4), nil, "not a CPU number"},
	} {
		got, err := Pick(tc.setting, tc.host)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Pick(%q, %v) error = %v, want one saying %q", tc.setting, tc.host, err, tc.err)
		case tc.err == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("Pick(%q, %v) = %v, %v; want %v", tc.setting, tc.host, got, err, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	for _, ok := range []string{"auto", "all", "0", "1-3,7"} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Auto", "none", "1-"} {
		if Check(bad) == nil {
			t.Errorf("Check(%q) = nil, want an error", bad)
		}
	}
}

func FuzzParseList(f *testing.F) {
	for _, s := range []string{"0", "0-3,8", "1,1", "9-2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := ParseList(s)
		if err != nil {
			return
		}
		if len(cpus) == 0 || !slices.IsSorted(cpus) || len(slices.Compact(slices.Clone(cpus))) != len(cpus) {
			t.Fatalf("ParseList(%q) = %v: not sorted, distinct and non-empty", s, cpus)
		}
		back, err := ParseList(FormatList(cpus))
		if err != nil || !slices.Equal(back, cpus) {
			t.Fatalf("round trip of %v through %q gave %v, %v", cpus, FormatList(cpus), back, err)
		}
	})
}
