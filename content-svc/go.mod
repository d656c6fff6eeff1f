module corral.dev/content-svc

go 1.26.6

require (
	corral.dev/pluginkit v0.0.0
	github.com/containerd/errdefs v1.0.0
	github.com/google/go-cmp v0.7.0
	github.com/opencontainers/go-digest v1.0.0
	github.com/rs/zerolog v1.35.1
)

require (
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	golang.org/x/sys v0.50.0 // indirect
)

replace corral.dev/pluginkit => ../pluginkit

replace corral.dev/proto => ../proto
