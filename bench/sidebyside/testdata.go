package sidebyside

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Media types of the benchmark image.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	// mediaTypeLayer is an uncompressed layer, so that the import moves
	// the bytes without anyone spending time on gzip.
	mediaTypeLayer = "application/vnd.oci.image.layer.v1.tar"
)

// mib is a mebibyte in bytes.
const mib = 1 << 20

// imageRefName is the tag the benchmark image carries in its index, which
// `ctr images import --base-name B` turns into the image "B:latest".
const imageRefName = "latest"

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// digester counts and hashes what is written through it.
type digester struct {
	h hash.Hash
	n int64
}

func newDigester() *digester { return &digester{h: sha256.New()} }

func (d *digester) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	return d.h.Write(p)
}

func (d *digester) digest() string {
	return "sha256:" + hex.EncodeToString(d.h.Sum(nil))
}

// randomReader returns size incompressible bytes drawn from seed: the
// same seed gives the same bytes.
func randomReader(size int64, seed uint64) io.Reader {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	return io.LimitReader(rand.NewChaCha8(key), size)
}

// WriteBlob writes size random bytes drawn from seed to path and returns
// their digest.
func WriteBlob(path string, size int64, seed uint64) (digest string, err error) {
	f, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("create blob: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("write blob %s: %w", path, cerr)
		}
	}()
	d := newDigester()
	if _, err := io.Copy(io.MultiWriter(f, d), randomReader(size, seed)); err != nil {
		return "", fmt.Errorf("write blob %s: %w", path, err)
	}
	return d.digest(), nil
}

// WriteImage writes to path the tar of an OCI image layout holding one
// image: an uncompressed layer with a single file of layerSize random
// bytes, its config and its manifest, named [imageRefName] in index.json.
// It returns the size of the tar.
func WriteImage(path string, layerSize int64, seed uint64) (size int64, err error) {
	// Write the layer aside first: the tar header of a blob holds its
	// digest.
	layerPath := filepath.Join(filepath.Dir(path), "layer.tar")
	layer, err := writeLayer(layerPath, layerSize, seed)
	if err != nil {
		return 0, err
	}
	defer os.Remove(layerPath)

	// Describe the layer in a config, the config and layer in a manifest,
	// and the manifest in the index.
	arch := platform{Architecture: runtime.GOARCH, OS: "linux"}
	config, err := json.Marshal(map[string]any{
		"architecture": arch.Architecture,
		"os":           arch.OS,
		"config":       map[string]any{},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layer.Digest}},
	})
	if err != nil {
		return 0, fmt.Errorf("encode image config: %w", err)
	}
	configDesc := describe(mediaTypeConfig, config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        configDesc,
		"layers":        []descriptor{layer},
	})
	if err != nil {
		return 0, fmt.Errorf("encode image manifest: %w", err)
	}
	manifestDesc := describe(mediaTypeManifest, manifest)
	manifestDesc.Platform = &arch
	manifestDesc.Annotations = map[string]string{"org.opencontainers.image.ref.name": imageRefName}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return 0, fmt.Errorf("encode image index: %w", err)
	}

	// Tar the layout.
	f, err := os.Create(path)
	if err != nil {
		return 0, fmt.Errorf("create image tar: %w", err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(configDesc.Digest), config},
		{blobPath(manifestDesc.Digest), manifest},
	}
	for _, file := range files {
		if err := tarFile(tw, file.name, int64(len(file.data)), bytes.NewReader(file.data)); err != nil {
			return 0, err
		}
	}
	if err := tarLayer(tw, layerPath, layer); err != nil {
		return 0, err
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("write image tar: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("write image tar: %w", err)
	}
	return info.Size(), f.Close()
}

// writeLayer writes a layer tar holding one file of size random bytes.
func writeLayer(path string, size int64, seed uint64) (descriptor, error) {
	f, err := os.Create(path)
	if err != nil {
		return descriptor{}, fmt.Errorf("create layer: %w", err)
	}
	defer f.Close()
	d := newDigester()
	tw := tar.NewWriter(io.MultiWriter(f, d))
	if err := tarFile(tw, "data", size, randomReader(size, seed)); err != nil {
		return descriptor{}, err
	}
	if err := tw.Close(); err != nil {
		return descriptor{}, fmt.Errorf("write layer: %w", err)
	}
	if err := f.Close(); err != nil {
		return descriptor{}, fmt.Errorf("write layer: %w", err)
	}
	return descriptor{MediaType: mediaTypeLayer, Digest: d.digest(), Size: d.n}, nil
}

// tarLayer copies the layer file at path into tw as a blob.
func tarLayer(tw *tar.Writer, path string, layer descriptor) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open layer: %w", err)
	}
	defer f.Close()
	return tarFile(tw, blobPath(layer.Digest), layer.Size, f)
}

// tarFile adds a regular file of size bytes read from r to tw.
func tarFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     0o644,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	if _, err := io.Copy(tw, r); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

// describe returns the descriptor of data.
func describe(mediaType string, data []byte) descriptor {
	sum := sha256.Sum256(data)
	return descriptor{
		MediaType: mediaType,
		Digest:    "sha256:" + hex.EncodeToString(sum[:]),
		Size:      int64(len(data)),
	}
}

// blobPath is where an OCI layout keeps the blob of digest.
func blobPath(digest string) string {
	return "blobs/sha256/" + digest[len("sha256:"):]
}
