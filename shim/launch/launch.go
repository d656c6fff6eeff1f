// Package launch is the shim's command line: the start and delete
// commands containerd runs, and the long-lived process that start leaves
// behind to serve the task API.
package launch

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// serveAction is the internal action start re-executes the shim with.
const serveAction = "serve"

// flags are the arguments containerd passes to every shim command.
type flags struct {
	namespace     string
	address       string
	publishBinary string
	id            string
	bundle        string
	debug         bool
	action        string
	ttrpcAddress  string
}

// parseFlags reads args (without the program name) as containerd writes
// them: -namespace, -address, -publish-binary, -id, [-bundle], [-debug],
// then the action.
func parseFlags(args []string) (*flags, error) {
	f := &flags{ttrpcAddress: os.Getenv("TTRPC_ADDRESS")}
	fs := flag.NewFlagSet("containerd-shim-corral-v2", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.namespace, "namespace", "", "containerd namespace")
	fs.StringVar(&f.address, "address", "", "containerd grpc address")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd binary")
	fs.StringVar(&f.id, "id", "", "task id")
	fs.StringVar(&f.bundle, "bundle", "", "bundle path (default: working directory)")
	fs.BoolVar(&f.debug, "debug", false, "log at debug level")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("parse arguments: %w", err)
	}
	f.action = fs.Arg(0)
	if f.namespace == "" || f.id == "" {
		return nil, errors.New("-namespace and -id are required")
	}
	if f.bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("find bundle: %w", err)
		}
		f.bundle = wd
	}
	return f, nil
}

// args renders f back into arguments for action.
func (f *flags) args(action string) []string {
	a := []string{
		"-namespace", f.namespace,
		"-address", f.address,
		"-publish-binary", f.publishBinary,
		"-id", f.id,
		"-bundle", f.bundle,
	}
	if f.debug {
		a = append(a, "-debug")
	}
	return append(a, action)
}

// Main runs the shim command in args and returns the process exit code.
func Main(args []string) int {
	f, err := parseFlags(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-corral-v2: %v\n", err)
		return 2
	}
	switch f.action {
	case "start":
		err = start(f)
	case "delete":
		err = deleteBundle(f)
	case serveAction:
		err = serve(f)
	default:
		err = fmt.Errorf("unknown action %q (want start or delete)", f.action)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-corral-v2 %s: %v\n", f.action, err)
		return 1
	}
	return 0
}

// readOptions decodes the runc options containerd writes on the shim's
// stdin, if any.
func readOptions(r io.Reader) (*options.Options, error) {
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("decode runtime options: %w", err)
	}
	v, err := typeurl.UnmarshalAny(&a)
	if err != nil {
		return nil, nil // not runc options: another runtime's, ignore
	}
	o, _ := v.(*options.Options)
	return o, nil
}

// withTimeout is a background context bounded by d.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
