package h2router

import (
	"errors"
	"io"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
)

// TestWriteDeadlineDoesNotOutliveWrite: a response larger than the socket
// buffer makes the writer goroutine write with a deadline; once that write is
// done, the deadline must not fail later writes on the same connection.
func TestWriteDeadlineDoesNotOutliveWrite(t *testing.T) {
	fb, _ := newPair(t)
	const timeout = 100 * time.Millisecond
	_, conn := startRouter(t, fb, Options{WriteTimeout: timeout})

	rs, err := contentapi.NewContentClient(conn).Read(nsCtx(), &contentapi.ReadContentRequest{Size: 4 << 20, Offset: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := rs.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}

	time.Sleep(3 * timeout)
	ns := namespacesapi.NewNamespacesClient(conn)
	for i := 0; i < 3; i++ {
		if _, err := ns.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
			t.Fatalf("call %d after the deadline of an earlier write passed: %v", i, err)
		}
	}
}
