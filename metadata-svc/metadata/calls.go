package metadata

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// maxCallIDLength bounds the call ids that are recorded; the supervisor's
// ids are far shorter.
const maxCallIDLength = 256

// pruneBatch is how many expired call records a write removes at most, so
// that the cost of pruning stays bounded per call.
const pruneBatch = 64

type callIDKey struct{}

// WithCallID returns a copy of ctx that makes mutating store methods record
// their outcome under id, and answer a call whose id is already recorded
// with that outcome. An empty id records nothing.
func WithCallID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, callIDKey{}, id)
}

func callIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(callIDKey{}).(string)
	return id
}

// outcome is what a mutating call answered: a result when code is OK,
// otherwise an error.
type outcome struct {
	at   time.Time
	code codes.Code
	body []byte // the marshalled result, or the error message
}

func (o outcome) encode() []byte {
	b := putUint64(make([]byte, 0, 12+len(o.body)), uint64(o.at.UnixNano()))
	b = binary.BigEndian.AppendUint32(b, uint32(o.code))
	return append(b, o.body...)
}

func decodeOutcome(b []byte) (outcome, error) {
	if len(b) < 12 {
		return outcome{}, fmt.Errorf("decode call record of %d bytes: %w", len(b), errdefs.ErrDataLoss)
	}
	return outcome{
		at:   time.Unix(0, int64(binary.BigEndian.Uint64(b))),
		code: codes.Code(binary.BigEndian.Uint32(b[8:])),
		body: bytes.Clone(b[12:]),
	}, nil
}

// replay returns the recorded outcome: it fills result, or returns the
// error with its errdefs class restored from the gRPC code.
func (o outcome) replay(result proto.Message) error {
	if o.code != codes.OK {
		return errgrpc.ToNative(status.Error(o.code, string(o.body)))
	}
	if err := proto.Unmarshal(o.body, result); err != nil {
		return fmt.Errorf("decode recorded %s: %w", proto.MessageName(result), err)
	}
	return nil
}

// update runs fn in one write transaction as the call of ctx. On success
// result (which fn fills) is recorded with the change; on a replay result
// is filled from the record and fn does not run.
func (db *DB) update(ctx context.Context, result proto.Message, fn func(tx *bolt.Tx) error) error {
	id := callIDFrom(ctx)
	if id == "" {
		return db.bdb.Update(fn)
	}
	if len(id) > maxCallIDLength {
		return fmt.Errorf("call id of %d bytes is longer than %d: %w",
			len(id), maxCallIDLength, errdefs.ErrInvalidArgument)
	}

	var recorded *outcome
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		o, err := lookupCall(tx, id)
		if err != nil || o != nil {
			recorded = o
			return err
		}
		if err := fn(tx); err != nil {
			return &callError{err}
		}
		return db.recordResult(tx, id, result)
	})
	if recorded != nil {
		return recorded.replay(result)
	}
	return db.settleFailure(id, err)
}

// callError marks an error returned by the call itself, as opposed to one
// from looking up or recording the outcome.
type callError struct{ err error }

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

// settleFailure records the outcome of a call that failed and returns its
// error. The failed transaction was rolled back, so recording is best
// effort: without a record a replay runs the call again, which is safe
// because the failed call changed nothing.
func (db *DB) settleFailure(id string, err error) error {
	ce, ok := err.(*callError)
	if !ok {
		return err
	}
	st := status.Convert(errgrpc.ToGRPC(ce.err))
	o := outcome{at: db.now(), code: st.Code(), body: []byte(st.Message())}
	_ = db.bdb.Update(func(tx *bolt.Tx) error {
		if prev, err := lookupCall(tx, id); err != nil || prev != nil {
			return err
		}
		return db.putCall(tx, id, o)
	})
	return ce.err
}

func (db *DB) recordResult(tx *bolt.Tx, id string, result proto.Message) error {
	body, err := proto.Marshal(result)
	if err != nil {
		return fmt.Errorf("marshal result of call %q: %w", id, err)
	}
	return db.putCall(tx, id, outcome{at: db.now(), code: codes.OK, body: body})
}

// lookupCall returns the recorded outcome of call id, or nil.
func lookupCall(tx *bolt.Tx, id string) (*outcome, error) {
	b, err := mustBucket(tx, keyCalls, keyCallsByID)
	if err != nil {
		return nil, err
	}
	raw := b.Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	o, err := decodeOutcome(raw)
	if err != nil {
		return nil, fmt.Errorf("call %q: %w", id, err)
	}
	return &o, nil
}

// putCall records o under id and prunes a bounded number of expired
// records.
func (db *DB) putCall(tx *bolt.Tx, id string, o outcome) error {
	byID, err := mustBucket(tx, keyCalls, keyCallsByID)
	if err != nil {
		return err
	}
	byTime, err := mustBucket(tx, keyCalls, keyCallsByTime)
	if err != nil {
		return err
	}

	if err := byID.Put([]byte(id), o.encode()); err != nil {
		return fmt.Errorf("record call %q: %w", id, err)
	}
	if err := byTime.Put(timeKey(o.at, id), nil); err != nil {
		return fmt.Errorf("index call %q: %w", id, err)
	}
	return db.prune(tx, pruneBatch)
}

func timeKey(at time.Time, id string) []byte {
	return append(putUint64(nil, uint64(at.UnixNano())), id...)
}

// pruneAll removes every expired call record.
func (db *DB) pruneAll(tx *bolt.Tx) error {
	return db.prune(tx, -1)
}

// prune removes up to limit call records older than the TTL, oldest first;
// a negative limit removes all of them.
func (db *DB) prune(tx *bolt.Tx, limit int) error {
	byID, err := mustBucket(tx, keyCalls, keyCallsByID)
	if err != nil {
		return err
	}
	byTime, err := mustBucket(tx, keyCalls, keyCallsByTime)
	if err != nil {
		return err
	}

	cutoff := putUint64(nil, uint64(db.now().Add(-db.ttl).UnixNano()))
	var expired [][]byte
	c := byTime.Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k[:8], cutoff) < 0; k, _ = c.Next() {
		if limit >= 0 && len(expired) == limit {
			break
		}
		expired = append(expired, bytes.Clone(k))
	}

	for _, k := range expired {
		if err := byID.Delete(k[8:]); err != nil {
			return fmt.Errorf("prune call %q: %w", k[8:], err)
		}
		if err := byTime.Delete(k); err != nil {
			return fmt.Errorf("prune call %q: %w", k[8:], err)
		}
	}
	return nil
}
