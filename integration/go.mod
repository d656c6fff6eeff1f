module corral.dev/integration

go 1.26.6
