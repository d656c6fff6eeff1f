package sidebyside

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteImage checks that the image tar is an OCI layout whose blobs
// match their names, whose index names the manifest "latest" and whose
// config lists the layer's digest as its diff_id.
func TestWriteImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "image.tar")
	const layerSize = 3*mib + 5
	size, err := WriteImage(path, layerSize, 7)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(path); err != nil || info.Size() != size {
		t.Fatalf("WriteImage returned size %d, file: %v, %v", size, info, err)
	}

	files := readTar(t, path)
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	m := index.Manifests[0]
	if got := m.Annotations["org.opencontainers.image.ref.name"]; got != imageRefName {
		t.Errorf("ref name %q, want %q", got, imageRefName)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(t, files, m), &manifest); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != mediaTypeLayer {
		t.Fatalf("manifest layers %+v, want one %s", manifest.Layers, mediaTypeLayer)
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(t, files, manifest.Config), &config); err != nil {
		t.Fatalf("config: %v", err)
	}
	layer := manifest.Layers[0]
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != layer.Digest {
		t.Errorf("diff_ids %v, want [%s]", config.RootFS.DiffIDs, layer.Digest)
	}

	// The layer is a tar of one file of layerSize bytes.
	lr := tar.NewReader(bytes.NewReader(blob(t, files, layer)))
	hdr, err := lr.Next()
	if err != nil || hdr.Size != layerSize {
		t.Fatalf("layer's first entry %+v, %v; want a file of %d bytes", hdr, err, layerSize)
	}
}

// TestWriteBlob checks that the digest returned is the file's and that
// seeds give different, repeatable bytes.
func TestWriteBlob(t *testing.T) {
	dir := t.TempDir()
	digests := map[string]string{}
	for _, name := range []string{"a", "b", "a2"} {
		seed := uint64(1)
		if name == "b" {
			seed = 2
		}
		path := filepath.Join(dir, name)
		d, err := WriteBlob(path, mib+1, seed)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := sha256Digest(data); got != d || len(data) != mib+1 {
			t.Errorf("%s: WriteBlob = %s, file has %s, %d bytes", name, d, got, len(data))
		}
		digests[name] = d
	}
	if digests["a"] != digests["a2"] || digests["a"] == digests["b"] {
		t.Errorf("digests by seed 1, 2, 1: %s, %s, %s", digests["a"], digests["b"], digests["a2"])
	}
}

// readTar returns every regular file of the tar at path by name.
func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[hdr.Name], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
}

// blob returns the blob d names in files, checking its size and digest.
func blob(t *testing.T, files map[string][]byte, d descriptor) []byte {
	t.Helper()
	data, ok := files[blobPath(d.Digest)]
	if !ok {
		t.Fatalf("no blob %s in the tar", d.Digest)
	}
	if int64(len(data)) != d.Size || sha256Digest(data) != d.Digest {
		t.Fatalf("blob %s: %d bytes with digest %s, want %d", d.Digest, len(data), sha256Digest(data), d.Size)
	}
	return data
}

func sha256Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
