package sidebyside

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// specTypeURL is the type containerd records an OCI runtime spec under.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// populate creates n images and n containers on c's daemon for the List
// workloads to return. The images' targets need not exist: neither daemon
// checks them, and the collector only follows them.
func populate(ctx context.Context, c *client.Client, n int) error {
	images := imagesapi.NewImagesClient(conn(c))
	containers := containersapi.NewContainersClient(conn(c))
	for i := range n {
		name := fmt.Sprintf("bench/list:%02d", i)
		sum := sha256.Sum256([]byte(name))
		labels := map[string]string{"bench": "list", "index": fmt.Sprint(i)}
		_, err := images.Create(ctx, &imagesapi.CreateImageRequest{Image: &imagesapi.Image{
			Name:   name,
			Labels: labels,
			Target: &types.Descriptor{
				MediaType: mediaTypeManifest,
				Digest:    "sha256:" + hex.EncodeToString(sum[:]),
				Size:      1024,
			},
		}})
		if err != nil {
			return fmt.Errorf("create image %s: %w", name, err)
		}

		id := fmt.Sprintf("bench-list-%02d", i)
		_, err = containers.Create(ctx, &containersapi.CreateContainerRequest{
			Container: &containersapi.Container{
				ID:      id,
				Labels:  labels,
				Image:   name,
				Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
				Spec:    &anypb.Any{TypeUrl: specTypeURL, Value: []byte(`{"ociVersion":"1.1.0"}`)},
			},
		})
		if err != nil {
			return fmt.Errorf("create container %s: %w", id, err)
		}
	}
	return nil
}

// listImages is one Images.List through the Go client, which makes that
// unary call.
func listImages(c *client.Client) Call {
	return func(ctx context.Context) error {
		_, err := c.ImageService().List(ctx)
		return err
	}
}

// listContainers is one unary Containers.List. It is made on the client's
// connection rather than through ContainerService, which prefers the
// ListStream call.
func listContainers(c *client.Client) Call {
	containers := containersapi.NewContainersClient(conn(c))
	return func(ctx context.Context) error {
		_, err := containers.List(ctx, &containersapi.ListContainersRequest{})
		return err
	}
}

// conn returns the gRPC connection of c, which carries c's default
// namespace on every call.
func conn(c *client.Client) grpc.ClientConnInterface {
	return c.Conn().(grpc.ClientConnInterface)
}
