package store

import (
	"os"
	"sync"
	"sync/atomic"
)

// Sizes of the file writer's work.
const (
	// bufSize is the size of the buffers small writes are gathered in.
	bufSize = 1 << 20
	// directMin is the smallest handed-over chunk written as it is.
	directMin = 256 << 10
	// queueLen is how many chunks may wait for the disk.
	queueLen = 8
	// writebackSize is how much is written before writeback is started.
	writebackSize = 8 << 20
)

var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

// fileWriter appends to a file from its own goroutine, so the caller can
// hash the next chunk and answer its client while the disk works. Its
// methods are for one goroutine; errors show at the next flush.
type fileWriter struct {
	f      *os.File
	jobs   chan fileJob
	done   chan struct{}
	failed atomic.Bool

	// Owned by the caller.
	pending *[bufSize]byte
	npend   int

	// Owned by the goroutine, read by the caller after a flush.
	err     error
	written int64
	started int64 // offset up to which writeback was started
}

// fileJob is a chunk to write, or with flush set a request to report once
// everything before it is written.
type fileJob struct {
	data  []byte
	buf   *[bufSize]byte // returned to bufPool once written
	flush chan error
}

// newFileWriter starts a writer appending to f, whose offset is at offset.
func newFileWriter(f *os.File, offset int64) *fileWriter {
	fw := &fileWriter{
		f:       f,
		jobs:    make(chan fileJob, queueLen),
		done:    make(chan struct{}),
		written: offset,
		started: offset,
	}
	go fw.run()
	return fw
}

func (fw *fileWriter) run() {
	defer close(fw.done)
	for j := range fw.jobs {
		switch {
		case j.flush != nil:
			j.flush <- fw.err
		case fw.err == nil:
			fw.write(j.data)
		}
		if j.buf != nil {
			bufPool.Put(j.buf)
		}
	}
}

func (fw *fileWriter) write(p []byte) {
	n, err := fw.f.Write(p)
	fw.written += int64(n)
	if err != nil {
		fw.err = err
		fw.failed.Store(true)
		return
	}
	if fw.written-fw.started >= writebackSize {
		startWriteback(fw.f, fw.started, fw.written-fw.started)
		fw.started = fw.written
	}
}

// append queues p. With owned set the caller hands p over: it must not
// change p afterwards, and a large p is written without a copy.
func (fw *fileWriter) append(p []byte, owned bool) error {
	if fw.failed.Load() {
		return fw.flush()
	}
	if owned && len(p) >= directMin {
		fw.sendPending()
		fw.jobs <- fileJob{data: p}
		return nil
	}
	for len(p) > 0 {
		if fw.pending == nil {
			fw.pending = bufPool.Get().(*[bufSize]byte)
		}
		n := copy(fw.pending[fw.npend:], p)
		fw.npend += n
		p = p[n:]
		if fw.npend == bufSize {
			fw.sendPending()
		}
	}
	return nil
}

func (fw *fileWriter) sendPending() {
	if fw.pending == nil {
		return
	}
	fw.jobs <- fileJob{data: fw.pending[:fw.npend], buf: fw.pending}
	fw.pending, fw.npend = nil, 0
}

// flush waits until everything appended is written, and returns the first
// write error.
func (fw *fileWriter) flush() error {
	fw.sendPending()
	ack := make(chan error, 1)
	fw.jobs <- fileJob{flush: ack}
	return <-ack
}

// reset waits for the queue to drain and forgets any write error, before
// the caller truncates the file.
func (fw *fileWriter) reset(offset int64) {
	_ = fw.flush()
	fw.err = nil
	fw.failed.Store(false)
	fw.written, fw.started = offset, offset
}

// close flushes and stops the goroutine. The file stays open.
func (fw *fileWriter) close() error {
	err := fw.flush()
	close(fw.jobs)
	<-fw.done
	return err
}
