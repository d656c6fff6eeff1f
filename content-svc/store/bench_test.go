package store

import (
	"crypto/rand"
	"io"
	"sync"
	"testing"

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

// BenchmarkIngest writes and commits a 256 MiB blob in 1 MiB chunks.
func BenchmarkIngest(b *testing.B) {
	data := benchBlob()
	dgst := digest.FromBytes(data)
	s := openStore(b, b.TempDir())
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		w, err := s.Writer("bench", benchSize, "")
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += 1 << 20 {
			w.Write(data[off : off+1<<20])
		}
		if _, err := w.Commit(benchSize, dgst); err != nil {
			b.Fatal(err)
		}
		w.Close()
		b.StopTimer()
		s.Delete(dgst)
		b.StartTimer()
	}
}

// BenchmarkRead reads a 256 MiB blob in 1 MiB chunks.
func BenchmarkRead(b *testing.B) {
	s := openStore(b, b.TempDir())
	dgst := ingestBytes(b, s, "bench", benchBlob())
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for b.Loop() {
		f, _, err := s.Open(dgst)
		if err != nil {
			b.Fatal(err)
		}
		var off int64
		for {
			n, err := f.ReadAt(buf, off)
			off += int64(n)
			if err == io.EOF {
				break
			}
		}
		f.Close()
	}
}
