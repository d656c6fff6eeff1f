package metadata

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
	plabels "corral.dev/pluginkit/labels"
)

// MaxImageNameLength is the longest image name, in bytes, the store
// accepts: well above the longest reference a registry allows (a 255-byte
// repository, a 128-byte tag and a sha512 digest).
const MaxImageNameLength = 1024

// imageNamePattern is the character set of image references (OCI
// org.opencontainers.image.ref.name values, docker references with a
// registry port or an IPv6 host); the first character is alphanumeric or
// the bracket of an IPv6 host.
var imageNamePattern = regexp.MustCompile(`^[A-Za-z0-9\[][A-Za-z0-9._:@/+\[\]-]*$`)

// ImageStore keeps the images of every namespace. Get it from [DB.Images].
type ImageStore struct {
	db *DB
}

// Images returns the store of images.
func (db *DB) Images() *ImageStore {
	return &ImageStore{db: db}
}

// ValidateImageName returns an error wrapping [errdefs.ErrInvalidArgument]
// if name is not a name the store accepts for an image.
func ValidateImageName(name string) error {
	if name == "" {
		return fmt.Errorf("image name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if len(name) > MaxImageNameLength {
		return fmt.Errorf("image name %.64q... must be at most %d bytes long: %w",
			name, MaxImageNameLength, errdefs.ErrInvalidArgument)
	}
	if !imageNamePattern.MatchString(name) {
		return fmt.Errorf("image name %q must match %v: %w",
			name, imageNamePattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Get returns the image name of namespace ns.
func (s *ImageStore) Get(ctx context.Context, ns, name string) (*imagesapi.Image, error) {
	return imageKind.get(s.db, ns, name)
}

// List returns the images of namespace ns that match any of the filters,
// sorted by name. Filter fields are name, target.digest, target.mediatype,
// labels.<key> and annotations.<key> (of the target).
func (s *ImageStore) List(
	ctx context.Context,
	ns string,
	fs ...string,
) ([]*imagesapi.Image, error) {
	return imageKind.list(s.db, ns, fs, imageAdaptor)
}

// ListEncoded is List with the images left as stored: it returns the wire
// form of an [imagesapi.ListImagesResponse] that holds them.
func (s *ImageStore) ListEncoded(ctx context.Context, ns string, fs ...string) ([]byte, error) {
	buf, _, err := imageKind.listEncoded(s.db, ns, fs, imageAdaptor, imagesList, imageName)
	return buf, err
}

// The fields of the encoded list: the response's images, and an image's
// name.
var (
	imagesList = fieldNumber(&imagesapi.ListImagesResponse{}, "images")
	imageName  = fieldNumber(&imagesapi.Image{}, "name")
)

// Create stores img in namespace ns, creating the namespace if needed, with
// created_at and updated_at set to now. It fails with
// [errdefs.ErrAlreadyExists] if an image of that name exists.
func (s *ImageStore) Create(
	ctx context.Context,
	ns string,
	img *imagesapi.Image,
) (*imagesapi.Image, error) {
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	if err := validateImage(img); err != nil {
		return nil, fmt.Errorf("create image: %w", err)
	}
	out := &imagesapi.Image{}
	if err := imageKind.create(ctx, s.db, ns, img.GetName(), img, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Update changes the image img.Name of namespace ns as the field paths
// say: "labels", "target" and "annotations" (of the target) replace that
// field with img's, "labels.<key>" and "annotations.<key>" set one key or
// delete it when img has no value for it, and no paths replace the labels
// and the target. Any other path is an [errdefs.ErrInvalidArgument]; an
// image that does not exist is an [errdefs.ErrNotFound].
func (s *ImageStore) Update(
	ctx context.Context,
	ns string,
	img *imagesapi.Image,
	paths []string,
) (*imagesapi.Image, error) {
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	name := img.GetName()
	if err := ValidateImageName(name); err != nil {
		return nil, fmt.Errorf("update image: %w", err)
	}

	out := &imagesapi.Image{}
	err := imageKind.update(ctx, s.db, ns, name, out, func(cur *imagesapi.Image) (*imagesapi.Image, error) {
		return updatedImage(cur, img, paths)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete deletes the image name of namespace ns. With a target digest, the
// image is deleted only if it points at that digest, and is reported as
// not found otherwise. The content it referenced stays until the next
// garbage collection.
func (s *ImageStore) Delete(ctx context.Context, ns, name string, target digest.Digest) error {
	if err := checkNamespace(ns); err != nil {
		return err
	}
	return imageKind.remove(ctx, s.db, ns, name, func(b *bolt.Bucket) error {
		return checkImageTarget(b, name, target)
	})
}

// checkImageTarget fails with [errdefs.ErrNotFound] unless target is empty
// or the target digest of the image in bucket b.
func checkImageTarget(b *bolt.Bucket, name string, target digest.Digest) error {
	if target == "" {
		return nil
	}
	img, err := readImage(b, name)
	if err != nil {
		return err
	}
	if got := img.GetTarget().GetDigest(); got != target.String() {
		return fmt.Errorf("image %q has target %s, not %s: %w",
			name, got, target, errdefs.ErrNotFound)
	}
	return nil
}

// imageKind is where and how image records are kept.
var imageKind = recordKind[*imagesapi.Image]{
	noun:   "image",
	bucket: keyImages,
	read:   readImage,
	stamp: func(img *imagesapi.Image, created, updated *timestamppb.Timestamp) {
		img.CreatedAt, img.UpdatedAt = created, updated
	},
}

// readImage reads the record of the image bucket b; name, the bucket's
// key, is authoritative for the image name.
func readImage(b *bolt.Bucket, name string) (*imagesapi.Image, error) {
	img := &imagesapi.Image{}
	if err := getRecord(b, img); err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	img.Name = name
	return img, nil
}

// updatedImage returns cur changed by the fields of req that paths name.
func updatedImage(cur, req *imagesapi.Image, paths []string) (*imagesapi.Image, error) {
	req = proto.CloneOf(req)
	next := proto.CloneOf(cur)
	if len(paths) == 0 {
		next.Labels, next.Target = req.GetLabels(), req.GetTarget()
	}
	for _, p := range paths {
		if err := applyImagePath(next, req, p); err != nil {
			return nil, err
		}
	}
	if err := validateImage(next); err != nil {
		return nil, err
	}
	return next, nil
}

// applyImagePath copies the field at path p from req to next.
func applyImagePath(next, req *imagesapi.Image, p string) error {
	if next.Target == nil {
		next.Target = &types.Descriptor{}
	}
	if key, ok := strings.CutPrefix(p, "labels."); ok {
		next.Labels = setMapKey(next.Labels, key, req.GetLabels())
		return plabels.Validate(key, next.Labels[key])
	}
	if key, ok := strings.CutPrefix(p, "annotations."); ok {
		annotations := req.GetTarget().GetAnnotations()
		next.Target.Annotations = setMapKey(next.Target.Annotations, key, annotations)
		return nil
	}

	switch p {
	case "labels":
		next.Labels = req.GetLabels()
	case "target":
		next.Target = req.GetTarget()
	case "annotations":
		next.Target.Annotations = req.GetTarget().GetAnnotations()
	default:
		return fmt.Errorf("field %q cannot be updated: %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateImage checks the name, labels and target of img.
func validateImage(img *imagesapi.Image) error {
	if err := ValidateImageName(img.GetName()); err != nil {
		return err
	}
	if err := plabels.ValidateAll(img.GetLabels()); err != nil {
		return fmt.Errorf("image %q: %w", img.GetName(), err)
	}
	if err := validateTarget(img.GetTarget()); err != nil {
		return fmt.Errorf("image %q: %w", img.GetName(), err)
	}
	return nil
}

// validateTarget checks the fields of an image target the store relies on:
// a valid digest, a media type and a positive size.
func validateTarget(t *types.Descriptor) error {
	if t == nil {
		return fmt.Errorf("target must be set: %w", errdefs.ErrInvalidArgument)
	}
	if err := digest.Digest(t.GetDigest()).Validate(); err != nil {
		return fmt.Errorf("target digest %.80q: %v: %w",
			t.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	if t.GetMediaType() == "" {
		return fmt.Errorf("target media type must be set: %w", errdefs.ErrInvalidArgument)
	}
	if t.GetSize() <= 0 {
		return fmt.Errorf("target size %d must be positive: %w",
			t.GetSize(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// imageAdaptor exposes the filter fields of img.
func imageAdaptor(img *imagesapi.Image) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		switch {
		case len(path) == 0:
			return "", false
		case path[0] == "name":
			return img.GetName(), img.GetName() != ""
		case path[0] == "labels":
			return mapField(path[1:], img.GetLabels())
		case path[0] == "annotations":
			return mapField(path[1:], img.GetTarget().GetAnnotations())
		case path[0] != "target" || len(path) != 2:
			return "", false
		case path[1] == "digest":
			return img.GetTarget().GetDigest(), img.GetTarget().GetDigest() != ""
		case path[1] == "mediatype":
			return img.GetTarget().GetMediaType(), img.GetTarget().GetMediaType() != ""
		}
		return "", false
	})
}
