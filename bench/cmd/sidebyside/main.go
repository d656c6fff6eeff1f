// Command sidebyside benchmarks our containerd against Debian's containerd
// 1.6.20 and prints the figures side by side.
package main

import (
	"context"
	"flag"
	"fmt"
	"go/build"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"corral.dev/bench/sidebyside"
)

func main() {
	cfg := sidebyside.DefaultConfig()
	if ctr2 := filepath.Join(build.Default.GOPATH, "bin", "ctr"); fileExists(ctr2) {
		cfg.Ctr2 = ctr2
	}
	cfg.AddFlags(flag.CommandLine)
	quick := flag.Bool("quick", false, "smoke run with small counts")
	flag.Parse()
	if *quick {
		cfg = sidebyside.Quick(cfg)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	report, err := sidebyside.Run(ctx, cfg)
	if err == nil {
		err = report.Write(os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidebyside: %v\n", err)
		os.Exit(1)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
