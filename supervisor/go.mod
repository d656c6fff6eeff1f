module corral.dev/supervisor

go 1.26.6
