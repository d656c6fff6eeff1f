// Command containerd-shim-corral-v2 is corral's per-container runc shim.
// containerd selects it for the runtime io.containerd.corral.v2.
package main

import (
	"os"

	"corral.dev/shim/launch"
)

func main() {
	os.Exit(launch.Main(os.Args[1:]))
}
