// Command content-svc serves the content plugin alone, for running it from
// its own binary ([plugins.content] path).
package main

import (
	"corral.dev/content-svc/service"
	"corral.dev/pluginkit"
)

func main() {
	pluginkit.Main(service.Plugin)
}
