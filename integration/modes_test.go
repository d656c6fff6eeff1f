//go:build linux

package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"corral.dev/pluginkit/testkit"
)

// Owners the tests give the public and the debug socket.
const (
	socketUID      = 1234
	socketGID      = 1235
	debugSocketUID = 1236
	debugSocketGID = 1237
)

// checkMode checks the type, permission bits and owner of path.
func checkMode(t *testing.T, path string, typ fs.FileMode, perm fs.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Error(err)
		return
	}
	if fi.Mode().Type() != typ || fi.Mode().Perm() != perm {
		t.Errorf("%s: mode %v, want %v", path, fi.Mode(), typ|perm)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
	}
}

// TestModes checks the modes and owners of the sockets and directories, on
// a fresh layout and on one an older, looser setup left behind.
func TestModes(t *testing.T) {
	testkit.RequiresRoot(t)
	tests := []struct {
		name string
		// before prepares the layout before the daemon starts.
		before func(t *testing.T, l *layout)
	}{
		{name: "fresh"},
		{
			name: "looser existing",
			before: func(t *testing.T, l *layout) {
				for _, dir := range []string{
					l.Root, l.State,
					filepath.Join(l.Root, boltFullID), filepath.Join(l.State, boltFullID),
				} {
					if err := os.MkdirAll(dir, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.Chmod(dir, 0o777); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Chmod(l.Root, 0o755); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLayout(t)
			l.writeConfig(t, settings{
				GRPCUID: socketUID, GRPCGID: socketGID,
				DebugUID: debugSocketUID, DebugGID: debugSocketGID,
			})
			if tt.before != nil {
				tt.before(t, l)
			}
			d := startOn(t, l)
			d.runningPlugin(t, boltID)

			checkMode(t, d.Socket, fs.ModeSocket, 0o660, socketUID, socketGID)
			checkMode(t, d.DebugSocket, fs.ModeSocket, 0o660, debugSocketUID, debugSocketGID)
			checkMode(t, filepath.Join(d.State, "internal.sock"), fs.ModeSocket, 0o600, 0, 0)
			checkMode(t, d.Root, fs.ModeDir, 0o700, 0, 0)
			checkMode(t, d.State, fs.ModeDir, 0o711, 0, 0)
			checkMode(t, filepath.Join(d.Root, boltFullID), fs.ModeDir, 0o700, 0, 0)
			checkMode(t, filepath.Join(d.State, boltFullID), fs.ModeDir, 0o700, 0, 0)
			checkMode(t, filepath.Join(d.Root, boltFullID, "meta.db"), 0, 0o600, 0, 0)
			checkPrivateSockets(t, filepath.Join(d.State, boltFullID))
		})
	}
}

// checkPrivateSockets checks that every socket under dir (the plugin's own)
// is closed to group and others.
func checkPrivateSockets(t *testing.T, dir string) {
	t.Helper()
	found := 0
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.Type() != fs.ModeSocket {
			return err
		}
		found++
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("plugin socket %s: mode %v, want no access for group and others", path, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Errorf("no plugin socket under %s", dir)
	}
}

// oomScoreAdj reads the oom_score_adj of pid.
func oomScoreAdj(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestOOMScore checks that oom_score is written to the daemon's
// oom_score_adj, that its plugin processes get the same or higher, and that
// a lower score the host does not allow gives a warning, not a failure.
func TestOOMScore(t *testing.T) {
	testkit.RequiresRoot(t)
	own := oomScoreAdj(t, os.Getpid())
	tests := []struct {
		name  string
		score int
	}{
		{"positive", 200},
		{"negative", -500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDaemon(t, settings{OOMScore: tt.score})
			bolt := d.runningPlugin(t, boltID)

			got := oomScoreAdj(t, d.Pid)
			const warning = "not allowed to lower oom_score_adj"
			switch {
			case got == tt.score:
			case tt.score < own && got == own && strings.Contains(d.log.String(), warning):
				t.Logf("the host denies lowering oom_score_adj; the daemon kept %d and warned", own)
			default:
				t.Errorf("daemon oom_score_adj = %d, want %d (or, where lowering is denied, %d and a warning %q)",
					got, tt.score, own, warning)
			}
			if n := strings.Count(d.log.String(), warning); n > 1 {
				t.Errorf("the warning %q is logged %d times, want once", warning, n)
			}
			if p := oomScoreAdj(t, bolt.Pid); p < got {
				t.Errorf("bolt process %d oom_score_adj = %d, want at least the daemon's %d", bolt.Pid, p, got)
			}
			mustRun(t, "/usr/bin/ctr", "--address", d.Socket, "namespaces", "ls")
		})
	}
}
