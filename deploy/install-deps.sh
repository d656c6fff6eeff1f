#!/usr/bin/env bash
# Installs what building, running and testing corral needs on Debian 12, as
# root: Debian's packages, ctr 2.4.2, h2spec and the pinned code generators. Packages
# already present are left alone, so running it again is cheap.
set -euo pipefail

apt_packages=(make gcc runc containerd btrfs-progs busybox-static umoci skopeo docker-registry curl)
tools_bin=${TOOLS_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.tools/bin}

missing=()
for p in "${apt_packages[@]}"; do
	dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Go tools, each pinned, into the checkout's .tools/bin.
install_tool() { # name module@version
	[ -x "$tools_bin/$1" ] && return 0
	echo "installing $2"
	GOBIN="$tools_bin" GOFLAGS=-mod=mod go install "$2"
}
mkdir -p "$tools_bin"
if ! "$tools_bin/ctr" --version 2>/dev/null | grep -q ' 2\.4\.2'; then
	rm -f "$tools_bin/ctr"
	install_tool ctr github.com/containerd/containerd/v2/cmd/ctr@v2.4.2
fi
install_tool buf github.com/bufbuild/buf/cmd/buf@v1.50.0
install_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
install_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
install_tool staticcheck honnef.co/go/tools/cmd/staticcheck@v0.8.2
# h2spec has no go.mod: its dependencies resolve to their newest versions.
install_tool h2spec github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible
