module corral.dev/content-svc

go 1.26.6
