// Command metadata-svc runs the metadata plugin ("bolt") as its own
// process, for when it is configured with its own binary.
package main

import (
	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
)

func main() {
	pluginkit.Main(service.Plugin)
}
