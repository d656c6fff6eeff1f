module corral.dev/integration

go 1.26.6

require (
	corral.dev/pluginkit v0.0.0
	github.com/google/go-cmp v0.7.0
)

replace corral.dev/pluginkit => ../pluginkit

replace corral.dev/proto => ../proto
