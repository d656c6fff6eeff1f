module corral.dev/metadata-svc

go 1.26.6
