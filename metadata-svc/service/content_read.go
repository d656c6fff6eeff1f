package service

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

// Read-ahead of small reads. Clients read layers through a ReaderAt, one
// Read call per 32 KiB; each call that reached content-svc would cross the
// supervisor twice more. Small reads are served from whole chunks fetched
// once. Blobs are addressed by their digest and never change, so a cached
// chunk stays right for as long as it is kept; whether the namespace may read
// the blob is still checked on every call.
const (
	chunkSize      = 1 << 20
	cachedChunks   = 16
	smallReadLimit = 256 << 10
)

type chunkKey struct {
	digest string
	index  int64
}

type chunk struct {
	key  chunkKey
	data []byte
}

// chunkCache keeps the most recently used chunks of blobs.
type chunkCache struct {
	mu    sync.Mutex
	byKey map[chunkKey]*list.Element
	lru   *list.List // of *chunk, most recent first
}

func newChunkCache() *chunkCache {
	return &chunkCache{byKey: make(map[chunkKey]*list.Element), lru: list.New()}
}

func (c *chunkCache) get(k chunkKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[k]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*chunk).data, true
}

func (c *chunkCache) put(k chunkKey, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[k]; ok {
		return
	}
	c.byKey[k] = c.lru.PushFront(&chunk{key: k, data: data})
	for c.lru.Len() > cachedChunks {
		old := c.lru.Remove(c.lru.Back()).(*chunk)
		delete(c.byKey, old.key)
	}
}

// read answers req for a blob of size bytes the namespace may read.
func (s *Content) read(ctx context.Context, req *contentapi.ReadContentRequest, size int64, ss contentapi.Content_ReadServer) error {
	off := req.GetOffset()
	if off < 0 || off > size {
		return fmt.Errorf("read %s at offset %d of %d bytes: %w", req.GetDigest(), off, size, errdefs.ErrOutOfRange)
	}
	end := size
	if n := req.GetSize(); n > 0 && off+n < size {
		end = off + n
	}
	if end-off > smallReadLimit || s.cache == nil {
		return s.proxyRead(ctx, req, ss)
	}
	// Reply offsets count from the requested offset, as containerd's do.
	for sent := int64(0); off+sent < end; {
		pos := off + sent
		data, err := s.chunk(ctx, req.GetDigest(), pos/chunkSize, size)
		if err != nil {
			return err
		}
		// One reply per chunk touched: the supervisor reaches this
		// service on a lane, where a message costs a frame whatever its
		// size, and a client reading 32 KiB then gets one message.
		piece := data[pos%chunkSize : min(int64(len(data)), end-pos/chunkSize*chunkSize)]
		if err := ss.Send(&contentapi.ReadContentResponse{Offset: sent, Data: piece}); err != nil {
			return err
		}
		sent += int64(len(piece))
	}
	return nil
}

// chunk returns chunk index of a blob, from the cache or from content-svc.
func (s *Content) chunk(ctx context.Context, dgst string, index, size int64) ([]byte, error) {
	k := chunkKey{digest: dgst, index: index}
	if data, ok := s.cache.get(k); ok {
		return data, nil
	}
	start := index * chunkSize
	n := min(chunkSize, size-start)
	rc, err := s.Blobs.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst, Offset: start, Size: n})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	data := make([]byte, 0, n)
	for {
		resp, err := rc.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, errgrpc.ToNative(err)
		}
		data = append(data, resp.GetData()...)
	}
	if int64(len(data)) != n {
		return nil, fmt.Errorf("read chunk %d of %s: got %d bytes, want %d: %w", index, dgst, len(data), n, errdefs.ErrDataLoss)
	}
	s.cache.put(k, data)
	return data, nil
}
