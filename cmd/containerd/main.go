// Command containerd is the multi-call binary: run by an operator it is the
// supervisor; started by the supervisor it serves one of the linked plugins.
package main

import (
	"fmt"
	"os"

	contentsvc "corral.dev/content-svc/service"
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
	"corral.dev/supervisor/cli"
)

// plugins are every plugin this binary can serve.
var plugins = []pluginkit.Plugin{
	service.Plugin,
	contentsvc.Plugin,
}

func main() {
	if pluginkit.IsPluginProcess() {
		pluginkit.Main(plugins...)
	}
	if err := cli.Run(os.Args, plugins); err != nil {
		fmt.Fprintf(os.Stderr, "containerd: %s\n", err)
		os.Exit(1)
	}
}
