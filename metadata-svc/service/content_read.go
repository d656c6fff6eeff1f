package service

import (
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"corral.dev/pluginkit/lane"
)

// Read-ahead of small reads. Clients read layers through a ReaderAt, one
// Read call per 32 KiB; each call that reached content-svc would cross the
// supervisor twice more. Small reads are served from whole chunks fetched
// once, and a read in the second half of a chunk starts fetching the next,
// so that a client reading in order seldom waits for content-svc. Blobs are
// addressed by their digest and never change, so a cached chunk stays right
// for as long as it is kept; whether the namespace may read the blob is
// still checked on every call.
const (
	chunkSize      = 1 << 20
	cachedChunks   = 16
	smallReadLimit = 256 << 10
	// readMethod is content-svc's Read, which a large read is handed to.
	readMethod = "/containerd.services.content.v1.Content/Read"
	// fetchTimeout bounds one chunk's fetch, which no call's context
	// bounds: several calls may wait for it, and a read-ahead has no caller.
	fetchTimeout = time.Minute
)

type chunkKey struct {
	digest string
	index  int64
}

type chunk struct {
	key  chunkKey
	data []byte
}

// fetch is a chunk on its way from content-svc. data and err are set before
// done is closed.
type fetch struct {
	done chan struct{}
	data []byte
	err  error
}

// chunkCache keeps the most recently used chunks of blobs and the fetches
// under way, so that a chunk is fetched once however many calls want it.
type chunkCache struct {
	mu       sync.Mutex
	byKey    map[chunkKey]*list.Element
	lru      *list.List // of *chunk, most recent first
	fetching map[chunkKey]*fetch
}

func newChunkCache() *chunkCache {
	return &chunkCache{
		byKey:    make(map[chunkKey]*list.Element),
		lru:      list.New(),
		fetching: make(map[chunkKey]*fetch),
	}
}

// lookup returns the chunk k if it is cached, or else its fetch, which is
// new (started true) when none was under way: the caller must then run it.
func (c *chunkCache) lookup(k chunkKey) (data []byte, f *fetch, started bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[k]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*chunk).data, nil, false
	}
	if f, ok := c.fetching[k]; ok {
		return nil, f, false
	}
	f = &fetch{done: make(chan struct{})}
	c.fetching[k] = f
	return nil, f, true
}

// finish ends the fetch f of k, keeping the chunk if it came.
func (c *chunkCache) finish(k chunkKey, f *fetch, data []byte, err error) {
	c.mu.Lock()
	delete(c.fetching, k)
	if err == nil {
		c.putLocked(k, data)
	}
	c.mu.Unlock()
	f.data, f.err = data, err
	close(f.done)
}

func (c *chunkCache) putLocked(k chunkKey, data []byte) {
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
		if lane.CanRedirect(ctx) {
			// The namespace may read the blob: content-svc streams the
			// bytes to the client itself, through the supervisor once.
			return lane.Redirect(ContentPluginID, readMethod, &contentapi.ReadContentRequest{
				Digest: req.GetDigest(), Offset: off, Size: req.GetSize(),
			})
		}
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
	if last := end - 1; last%chunkSize >= chunkSize/2 && (last/chunkSize+1)*chunkSize < size {
		s.readAhead(req.GetDigest(), last/chunkSize+1, size)
	}
	return nil
}

// readAhead starts fetching chunk index of a blob unless it is cached or
// on its way.
func (s *Content) readAhead(dgst string, index, size int64) {
	k := chunkKey{digest: dgst, index: index}
	if _, f, started := s.cache.lookup(k); started {
		go s.fetch(k, f, size)
	}
}

// chunk returns chunk index of a blob, from the cache or from content-svc.
// A call that joined a fetch it did not start (a read-ahead, or another
// call's) and saw it fail fetches once more itself, so that a failure
// reaches only the calls whose own fetch failed.
func (s *Content) chunk(ctx context.Context, dgst string, index, size int64) ([]byte, error) {
	k := chunkKey{digest: dgst, index: index}
	for try := 0; ; try++ {
		data, f, started := s.cache.lookup(k)
		if data != nil {
			return data, nil
		}
		if started {
			go s.fetch(k, f, size)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err == nil || started || try > 0 {
			return f.data, f.err
		}
	}
}

// fetch gets chunk k of a blob of size bytes from content-svc and ends f.
func (s *Content) fetch(k chunkKey, f *fetch, size int64) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	// A failure goes to the calls waiting, if any, which try again (see
	// chunk); a read-ahead's with none waiting is dropped.
	data, err := s.fetchChunk(ctx, k, size)
	s.cache.finish(k, f, data, err)
}

func (s *Content) fetchChunk(ctx context.Context, k chunkKey, size int64) ([]byte, error) {
	start := k.index * chunkSize
	n := min(chunkSize, size-start)
	rc, err := s.Blobs.Read(ctx, &contentapi.ReadContentRequest{Digest: k.digest, Offset: start, Size: n})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	var data []byte
	for {
		resp, err := rc.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, errgrpc.ToNative(err)
		}
		switch piece := resp.GetData(); {
		case data == nil && int64(len(piece)) == n:
			data = piece // the whole chunk in one message, as content-svc sends it
		case data == nil:
			data = append(make([]byte, 0, n), piece...)
		default:
			data = append(data, piece...)
		}
	}
	if int64(len(data)) != n {
		return nil, fmt.Errorf("read chunk %d of %s: got %d bytes, want %d: %w", k.index, k.digest, len(data), n, errdefs.ErrDataLoss)
	}
	return data, nil
}
