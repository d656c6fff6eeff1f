//go:build linux

package integration

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit/testkit"
)

// TestContainersCtr shows containers made with the Go client through both
// ctr versions: ls, info, label and rm. (ctr's own containers create needs
// an image unpacked into a snapshot, which comes with the snapshot issue.)
func TestContainersCtr(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	for _, tool := range ctrTools(t) {
		t.Run(tool.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(tool.name, ".", ""))
			ctx := nsContext(t, ns)
			ctr := testContainer("web")
			if _, err := c.ContainerService().Create(ctx, ctr); err != nil {
				t.Fatalf("create container: %v", err)
			}

			out := tool.ns(t, d, ns, "containers", "ls")
			lines := strings.Split(strings.TrimSpace(out), "\n")
			want := [][]string{{"CONTAINER", "IMAGE", "RUNTIME"}, {"web", "busybox:latest", "io.containerd.runc.v2"}}
			var got [][]string
			for _, line := range lines {
				got = append(got, strings.Fields(line))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("containers ls (-want +got):\n%s", diff)
			}

			tool.ns(t, d, ns, "containers", "label", "web", "x=y")
			var info struct {
				ID      string
				Labels  map[string]string
				Image   string
				Runtime struct{ Name string }
				Spec    json.RawMessage
			}
			out = tool.ns(t, d, ns, "containers", "info", "web")
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("containers info: %v\n%s", err, out)
			}
			if info.ID != "web" || info.Image != "busybox:latest" || info.Runtime.Name != "io.containerd.runc.v2" ||
				!cmp.Equal(info.Labels, map[string]string{"k": "v", "x": "y"}) || !strings.Contains(string(info.Spec), `"ociVersion"`) {
				t.Errorf("containers info after label x=y:\n%s", out)
			}

			tool.ns(t, d, ns, "containers", "rm", "web")
			if out := tool.ns(t, d, ns, "containers", "ls", "-q"); strings.TrimSpace(out) != "" {
				t.Errorf("containers ls -q after rm = %q, want none", out)
			}
		})
	}
}
