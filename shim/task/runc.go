package task

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types/runc/options"
	runc "github.com/containerd/go-runc"
)

const (
	// runcStateFile records, in the bundle, how runc was invoked, so that
	// the delete command can clean up after a dead shim.
	runcStateFile = "corral-runc.json"
	// runcLogFile is runc's JSON log in the bundle.
	runcLogFile = "log.json"
	// defaultRuncRoot holds runc's state per namespace unless the runc
	// options name another root.
	defaultRuncRoot = "/run/corral-shim/runc"
)

// runcConfig is how one container's runc is invoked.
type runcConfig struct {
	Binary        string `json:"binary"`
	Root          string `json:"root"`
	SystemdCgroup bool   `json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool   `json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool   `json:"no_new_keyring,omitempty"`
	IOUid         int    `json:"io_uid,omitempty"`
	IOGid         int    `json:"io_gid,omitempty"`
}

// newRuncConfig applies the request's runc options over the defaults.
func newRuncConfig(namespace string, o *options.Options) runcConfig {
	c := runcConfig{Binary: "runc", Root: filepath.Join(defaultRuncRoot, namespace)}
	if o == nil {
		return c
	}
	if o.BinaryName != "" {
		c.Binary = o.BinaryName
	}
	if o.Root != "" {
		c.Root = filepath.Join(o.Root, namespace)
	}
	c.SystemdCgroup = o.SystemdCgroup
	c.NoPivotRoot = o.NoPivotRoot
	c.NoNewKeyring = o.NoNewKeyring
	c.IOUid, c.IOGid = int(o.IoUid), int(o.IoGid)
	return c
}

// runc returns the go-runc handle for a container in bundle.
func (c runcConfig) runc(bundle string) *runc.Runc {
	return &runc.Runc{
		Command:       c.Binary,
		Root:          c.Root,
		Log:           filepath.Join(bundle, runcLogFile),
		LogFormat:     runc.JSON,
		SystemdCgroup: c.SystemdCgroup,
		Setpgid:       true,
	}
}

// save writes c into bundle for the delete command.
func (c runcConfig) save(bundle string) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, runcStateFile), data, 0o600)
}

// loadRuncConfig reads what save wrote; a bundle without it gets defaults.
func loadRuncConfig(bundle, namespace string) runcConfig {
	c := newRuncConfig(namespace, nil)
	data, err := os.ReadFile(filepath.Join(bundle, runcStateFile))
	if err == nil {
		_ = json.Unmarshal(data, &c)
	}
	return c
}

// runcError adds the last error runc logged in bundle to err, which from
// go-runc often reads only "exit status 1".
func runcError(bundle string, err error) error {
	var notFound *os.PathError
	if errors.As(err, &notFound) {
		return err
	}
	f, ferr := os.Open(filepath.Join(bundle, runcLogFile))
	if ferr != nil {
		return err
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Level == "error" {
			last = entry.Msg
		}
	}
	if last == "" {
		return err
	}
	// runc prefixes its own verb ("runc create failed: "); ours says it.
	if _, msg, ok := strings.Cut(last, " failed: "); ok && strings.HasPrefix(last, "runc ") {
		last = msg
	}
	return fmt.Errorf("%s: %w", last, err)
}
