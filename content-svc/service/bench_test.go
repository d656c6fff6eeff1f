package service

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
)

// benchSize is the blob size of the benchmarks, the one the issue measures.
const benchSize = 256 << 20

var (
	benchOnce sync.Once
	benchData []byte
)

// benchBlob returns benchSize random bytes, made once per test binary.
func benchBlob() []byte {
	benchOnce.Do(func() {
		benchData = make([]byte, benchSize)
		rand.Read(benchData)
	})
	return benchData
}

// ingest writes data as ctr content ingest does: a STAT, then 1 MiB
// WRITEs each waiting for its reply, then a COMMIT.
func ingest(
	ctx context.Context,
	c contentapi.ContentClient,
	ref string,
	data []byte,
	dgst digest.Digest,
) error {
	w, err := c.Write(ctx)
	if err != nil {
		return err
	}
	defer w.CloseSend()
	send := func(req *contentapi.WriteContentRequest) error {
		if err := w.Send(req); err != nil {
			return err
		}
		_, err := w.Recv()
		return err
	}
	total := int64(len(data))
	if err := send(&contentapi.WriteContentRequest{Ref: ref, Total: total, Expected: dgst.String()}); err != nil {
		return err
	}
	for off := 0; off < len(data); off += ReadChunkSize {
		req := &contentapi.WriteContentRequest{
			Action: contentapi.WriteAction_WRITE,
			Offset: int64(off),
			Data:   data[off:min(off+ReadChunkSize, len(data))],
		}
		if err := send(req); err != nil {
			return err
		}
	}
	return send(&contentapi.WriteContentRequest{
		Action: contentapi.WriteAction_COMMIT, Offset: total, Total: total, Expected: dgst.String(),
	})
}

// readAll reads the blob dgst and returns its size.
func readAll(ctx context.Context, c contentapi.ContentClient, dgst digest.Digest) (int64, error) {
	rs, err := c.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return 0, err
	}
	var n int64
	for {
		resp, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += int64(len(resp.GetData()))
	}
}

// BenchmarkIngest ingests a 256 MiB blob over the gRPC service.
func BenchmarkIngest(b *testing.B) {
	benchIngest(b, serve(b, b.TempDir()).client(b), context.Background())
}

func benchIngest(b *testing.B, c contentapi.ContentClient, ctx context.Context) {
	data := benchBlob()
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// A new blob each time: a deleted one may linger until a garbage
		// collection, and writing it again would be AlreadyExists.
		b.StopTimer()
		binary.BigEndian.PutUint64(data, uint64(time.Now().UnixNano())+uint64(i))
		dgst := digest.FromBytes(data)
		b.StartTimer()

		if err := ingest(ctx, c, "bench", data, dgst); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := c.Delete(ctx, &contentapi.DeleteContentRequest{Digest: dgst.String()}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRead reads a 256 MiB blob over the gRPC service.
func BenchmarkRead(b *testing.B) {
	benchRead(b, serve(b, b.TempDir()).client(b), context.Background())
}

func benchRead(b *testing.B, c contentapi.ContentClient, ctx context.Context) {
	data := benchBlob()
	dgst := digest.FromBytes(data)
	err := ingest(ctx, c, "bench", data, dgst)
	if err != nil && !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Delete(ctx, &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		n, err := readAll(ctx, c, dgst)
		if err != nil || n != benchSize {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}

// readAtSize is the size of the reads ctr content get makes: it reads
// through io.Copy's 32 KiB buffer, one Read call each.
const readAtSize = 32 << 10

// BenchmarkReadAt reads a 256 MiB blob as ctr content get does, one Read
// call per 32 KiB.
func BenchmarkReadAt(b *testing.B) {
	benchReadAt(b, serve(b, b.TempDir()).client(b), context.Background())
}

func BenchmarkLiveReadAt(b *testing.B) {
	c, ctx := live(b)
	benchReadAt(b, c, ctx())
}

func benchReadAt(b *testing.B, c contentapi.ContentClient, ctx context.Context) {
	data := benchBlob()
	dgst := digest.FromBytes(data)
	err := ingest(ctx, c, "bench", data, dgst)
	if err != nil && !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Delete(ctx, &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		for off := int64(0); off < benchSize; off += readAtSize {
			if err := readRange(ctx, c, dgst, off, readAtSize); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// readRange reads size bytes of dgst at off with one Read call.
func readRange(ctx context.Context, c contentapi.ContentClient, dgst digest.Digest, off, size int64) error {
	rs, err := c.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst.String(), Offset: off, Size: size})
	if err != nil {
		return err
	}
	for {
		if _, err := rs.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
