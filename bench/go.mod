module corral.dev/bench

go 1.26.6
