package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/pluginkit/filters"
	adminv1 "corral.dev/proto/admin/v1"
	"corral.dev/supervisor/host"
	"corral.dev/supervisor/version"
)

// versionService serves containerd's Version service.
type versionService struct {
	versionapi.UnimplementedVersionServer
}

func (versionService) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: version.Version, Revision: version.Revision}, nil
}

// ownServices are the gRPC services the supervisor serves itself, as
// introspection lists them.
var ownServices = []string{"version", "introspection", "events", "healthcheck"}

// introspectionService serves containerd's Introspection service from the
// plugin host's view of its plugins.
type introspectionService struct {
	introspectionapi.UnimplementedIntrospectionServer
	host *host.Host
	uuid string
}

func (s *introspectionService) Plugins(ctx context.Context, req *introspectionapi.PluginsRequest) (*introspectionapi.PluginsResponse, error) {
	f, err := filters.ParseAll(req.Filters...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var out []*introspectionapi.Plugin
	for _, p := range s.rows() {
		if f.Match(pluginAdaptor{p}) {
			out = append(out, p)
		}
	}
	return &introspectionapi.PluginsResponse{Plugins: out}, nil
}

// rows lists the supervisor's own services, every plugin, and every public
// service a plugin serves.
func (s *introspectionService) rows() []*introspectionapi.Plugin {
	rows := []*introspectionapi.Plugin{{Type: "io.containerd.event.v1", ID: "exchange"}}
	for _, id := range ownServices {
		rows = append(rows, &introspectionapi.Plugin{Type: "io.containerd.grpc.v1", ID: id})
	}
	for _, in := range s.host.Instances() {
		st := in.Status()
		row := &introspectionapi.Plugin{Type: st.Type, ID: st.ID, Exports: map[string]string{
			"status":   string(st.State),
			"pid":      strconv.Itoa(st.Pid),
			"restarts": strconv.Itoa(st.Restarts),
		}}
		for k, v := range st.Exports {
			row.Exports[k] = v
		}
		if st.State != host.Running {
			row.InitErr = &rpcstatus.Status{
				Code:    int32(codes.Unavailable),
				Message: fmt.Sprintf("plugin is %s: %s", st.State, st.LastError),
			}
		}
		rows = append(rows, row)
		for _, svc := range st.Services {
			rows = append(rows, &introspectionapi.Plugin{
				Type:     "io.containerd.grpc.v1",
				ID:       shortService(svc),
				Requires: []string{st.Type},
				InitErr:  row.InitErr,
			})
		}
	}
	return rows
}

func (s *introspectionService) Server(context.Context, *emptypb.Empty) (*introspectionapi.ServerResponse, error) {
	return &introspectionapi.ServerResponse{
		UUID:  s.uuid,
		Pid:   uint64(os.Getpid()),
		Pidns: pidNamespace(),
	}, nil
}

// shortService turns "containerd.services.namespaces.v1.Namespaces" into
// "namespaces", the id containerd lists its gRPC services under.
func shortService(full string) string {
	parts := strings.Split(full, ".")
	if len(parts) >= 4 && parts[0] == "containerd" && parts[1] == "services" {
		return parts[2]
	}
	return full
}

func pidNamespace() uint64 {
	link, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return 0
	}
	var ino uint64
	fmt.Sscanf(link, "pid:[%d]", &ino)
	return ino
}

// pluginAdaptor exposes an introspection row to filters.
type pluginAdaptor struct {
	p *introspectionapi.Plugin
}

func (a pluginAdaptor) Field(path []string) (string, bool) {
	if len(path) == 0 {
		return "", false
	}
	switch path[0] {
	case "type":
		return a.p.Type, len(path) == 1
	case "id":
		return a.p.ID, len(path) == 1
	case "capabilities":
		return strings.Join(a.p.Capabilities, ","), len(path) == 1 && len(a.p.Capabilities) > 0
	case "exports":
		if len(path) != 2 {
			return "", false
		}
		v, ok := a.p.Exports[path[1]]
		return v, ok
	}
	return "", false
}

// loadUUID returns the daemon's UUID kept under root, making it on first use.
func loadUUID(root string) (string, error) {
	dir := filepath.Join(root, "io.containerd.grpc.v1.introspection")
	path := filepath.Join(dir, "uuid")
	b, err := os.ReadFile(path)
	if err == nil {
		if id, perr := uuid.ParseBytes(b); perr == nil {
			return id.String(), nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read uuid: %w", err)
	}
	if err := ensureDir(dir, pluginMode); err != nil {
		return "", err
	}
	id := uuid.NewString()
	if err := writeFileAtomic(path, []byte(id), 0o600); err != nil {
		return "", fmt.Errorf("write uuid: %w", err)
	}
	return id, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// adminService serves the operator API.
type adminService struct {
	adminv1.UnimplementedAdminServer
	host *host.Host
}

func (s *adminService) ListPlugins(context.Context, *adminv1.ListPluginsRequest) (*adminv1.ListPluginsResponse, error) {
	resp := &adminv1.ListPluginsResponse{}
	for _, in := range s.host.Instances() {
		resp.Plugins = append(resp.Plugins, statusProto(in.Status()))
	}
	sort.Slice(resp.Plugins, func(i, j int) bool { return resp.Plugins[i].Id < resp.Plugins[j].Id })
	return resp, nil
}

func (s *adminService) RestartPlugin(ctx context.Context, req *adminv1.RestartPluginRequest) (*adminv1.RestartPluginResponse, error) {
	if req.Path != "" {
		if fi, err := os.Stat(req.Path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, errgrpc.ToGRPC(fmt.Errorf("plugin binary %q is not an executable file: %w", req.Path, errdefs.ErrInvalidArgument))
		}
	}
	st, err := s.host.Restart(ctx, req.Id, req.Path)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &adminv1.RestartPluginResponse{Plugin: statusProto(st)}, nil
}

func statusProto(st host.Status) *adminv1.PluginStatus {
	return &adminv1.PluginStatus{
		Id:        st.ID,
		Type:      st.Type,
		State:     string(st.State),
		Pid:       int64(st.Pid),
		Restarts:  uint32(st.Restarts),
		LastError: st.LastError,
		Path:      st.Path,
	}
}
