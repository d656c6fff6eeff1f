module corral.dev/cmd

go 1.26.6
