package metadata

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
	"corral.dev/pluginkit/identifiers"
)

// keyObjectRecord is the key under which the bucket of an image or a
// container holds its proto-marshalled record.
var keyObjectRecord = []byte("record")

type epochKey struct{}

// WithSourceDateEpoch returns a copy of ctx that makes the image and
// container stores stamp the records they create or update with t instead
// of the current time, as a client asks with source_date_epoch.
func WithSourceDateEpoch(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, epochKey{}, t)
}

// stamp returns the time to record as created_at or updated_at of a write
// made for ctx.
func (db *DB) stamp(ctx context.Context) *timestamppb.Timestamp {
	if t, ok := ctx.Value(epochKey{}).(time.Time); ok {
		return timestamppb.New(t.UTC())
	}
	return timestamppb.New(db.now().UTC())
}

// checkNamespace validates the namespace a record is kept in.
func checkNamespace(ns string) error {
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	return nil
}

// kindBucket returns the bucket namespaces/<ns>/<kind>, or nil if the
// namespace or the bucket does not exist.
func kindBucket(tx *bolt.Tx, ns string, kind []byte) *bolt.Bucket {
	return bucket(tx, keyNamespaces, []byte(ns), kind)
}

// objectBucket returns the bucket namespaces/<ns>/<kind>/<key> of one
// image or container, or nil if it does not exist.
func objectBucket(tx *bolt.Tx, ns string, kind []byte, key string) *bolt.Bucket {
	return bucket(tx, keyNamespaces, []byte(ns), kind, []byte(key))
}

// createKindBucket returns the bucket namespaces/<ns>/<kind>, creating the
// namespace and the bucket if needed: the first write of a record creates
// its namespace.
func createKindBucket(tx *bolt.Tx, ns string, kind []byte) (*bolt.Bucket, error) {
	nb, err := ensureNamespace(tx, ns)
	if err != nil {
		return nil, err
	}
	b, err := nb.CreateBucketIfNotExists(kind)
	if err != nil {
		return nil, fmt.Errorf("create %s bucket in namespace %q: %w", kind, ns, err)
	}
	return b, nil
}

// putRecord stores m as the record of the object bucket b.
func putRecord(b *bolt.Bucket, m proto.Message) error {
	raw, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", proto.MessageName(m), err)
	}
	if err := b.Put(keyObjectRecord, raw); err != nil {
		return fmt.Errorf("store %s: %w", proto.MessageName(m), err)
	}
	return nil
}

// getRecord reads the record of the object bucket b into m. A missing or
// unreadable record is an [errdefs.ErrDataLoss].
func getRecord(b *bolt.Bucket, m proto.Message) error {
	raw := b.Get(keyObjectRecord)
	if raw == nil {
		return fmt.Errorf("read %s: no record: %w", proto.MessageName(m), errdefs.ErrDataLoss)
	}
	if err := proto.Unmarshal(raw, m); err != nil {
		return fmt.Errorf("decode %s: %v: %w", proto.MessageName(m), err, errdefs.ErrDataLoss)
	}
	return nil
}

// setMapKey sets key in m to src[key], or deletes it when src has no value
// for it (the empty value counts as none), and returns m.
func setMapKey[V comparable](m map[string]V, key string, src map[string]V) map[string]V {
	var zero V
	v, ok := src[key]
	if !ok || v == zero {
		delete(m, key)
		return m
	}
	if m == nil {
		m = map[string]V{}
	}
	m[key] = v
	return m
}

// mapField returns the value of m at the rest of a filter field path, the
// key being the remaining components joined by dots, as containerd does.
func mapField(rest []string, m map[string]string) (string, bool) {
	if len(rest) == 0 {
		return "", false
	}
	v, ok := m[strings.Join(rest, ".")]
	return v, ok
}

// record is a proto message kept by a recordKind.
type record interface {
	proto.Message
	GetCreatedAt() *timestamppb.Timestamp
}

// recordKind is one kind of record kept as a proto message in the bucket
// namespaces/<ns>/<bucket>/<key>, under the key "record".
type recordKind[T record] struct {
	// noun names the kind in messages: "image", "container".
	noun   string
	bucket []byte
	// read decodes the record of an object bucket; key is authoritative.
	read func(b *bolt.Bucket, key string) (T, error)
	// stamp sets the record's created_at and updated_at.
	stamp func(rec T, created, updated *timestamppb.Timestamp)
}

// get returns the record key of namespace ns.
func (k recordKind[T]) get(db *DB, ns, key string) (T, error) {
	var rec T
	if err := checkNamespace(ns); err != nil {
		return rec, err
	}
	err := db.view(func(tx *bolt.Tx) error {
		b := objectBucket(tx, ns, k.bucket, key)
		if b == nil {
			return fmt.Errorf("%s %q: %w", k.noun, key, errdefs.ErrNotFound)
		}
		var err error
		rec, err = k.read(b, key)
		return err
	})
	return rec, err
}

// list returns the records of namespace ns that match any of the filters
// fs, in key order; adapt exposes a record's fields to the filters.
func (k recordKind[T]) list(db *DB, ns string, fs []string, adapt func(T) filters.Adaptor) ([]T, error) {
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", k.noun, err)
	}

	var list []T
	err = db.view(func(tx *bolt.Tx) error {
		b := kindBucket(tx, ns, k.bucket)
		if b == nil {
			return nil
		}
		return b.ForEachBucket(func(key []byte) error {
			rec, err := k.read(b.Bucket(key), string(key))
			if err == nil && filter.Match(adapt(rec)) {
				list = append(list, rec)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return list, nil
}

// listEncoded is list with the records left as stored: it returns the wire
// form of a message whose repeated field list holds them, each followed by
// its key as field keyField (the name or id, which the key overrides as
// read does), and where each record's field ends in it. A record is
// decoded only when there are filters to match; otherwise only its framing
// is checked. Leaving the records encoded spares a List the decoding and
// encoding of every label, which were most of its cost.
func (k recordKind[T]) listEncoded(
	db *DB,
	ns string,
	fs []string,
	adapt func(T) filters.Adaptor,
	list, keyField protowire.Number,
) (buf []byte, ends []int, err error) {
	if err := checkNamespace(ns); err != nil {
		return nil, nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, nil, fmt.Errorf("list %ss: %w", k.noun, err)
	}

	err = db.view(func(tx *bolt.Tx) error {
		b := kindBucket(tx, ns, k.bucket)
		if b == nil {
			return nil
		}
		return b.ForEachBucket(func(key []byte) error {
			ob := b.Bucket(key)
			raw := ob.Get(keyObjectRecord)
			if err := checkFraming(raw); err != nil {
				return fmt.Errorf("%s %q: %w", k.noun, key, err)
			}
			if len(fs) > 0 {
				rec, err := k.read(ob, string(key))
				if err != nil {
					return err
				}
				if !filter.Match(adapt(rec)) {
					return nil
				}
			}
			n := len(raw) + protowire.SizeTag(keyField) + protowire.SizeBytes(len(key))
			buf = protowire.AppendTag(buf, list, protowire.BytesType)
			buf = protowire.AppendVarint(buf, uint64(n))
			buf = append(buf, raw...)
			buf = protowire.AppendTag(buf, keyField, protowire.BytesType)
			buf = protowire.AppendBytes(buf, key)
			ends = append(ends, len(buf))
			return nil
		})
	})
	if err != nil {
		return nil, nil, err
	}
	return buf, ends, nil
}

// split cuts buf at ends.
func split(buf []byte, ends []int) [][]byte {
	out := make([][]byte, len(ends))
	start := 0
	for i, end := range ends {
		out[i] = buf[start:end:end]
		start = end
	}
	return out
}

// checkFraming returns an [errdefs.ErrDataLoss] unless raw is a record
// whose fields are well framed: a record passed on encoded cannot break
// the framing of the message around it.
func checkFraming(raw []byte) error {
	if raw == nil {
		return fmt.Errorf("no record: %w", errdefs.ErrDataLoss)
	}
	for len(raw) > 0 {
		_, _, n := protowire.ConsumeField(raw)
		if n < 0 {
			return fmt.Errorf("decode record: %v: %w", protowire.ParseError(n), errdefs.ErrDataLoss)
		}
		raw = raw[n:]
	}
	return nil
}

// create stores a stamped copy of rec under key in namespace ns, as the call
// of ctx, creating the namespace if needed; out receives what was stored.
// An existing key is an [errdefs.ErrAlreadyExists].
func (k recordKind[T]) create(ctx context.Context, db *DB, ns, key string, rec, out T) error {
	return db.update(ctx, out, func(tx *bolt.Tx) error {
		b, err := createKindBucket(tx, ns, k.bucket)
		if err != nil {
			return err
		}
		ob, err := b.CreateBucket([]byte(key))
		if errors.Is(err, berrors.ErrBucketExists) {
			return fmt.Errorf("%s %q: %w", k.noun, key, errdefs.ErrAlreadyExists)
		}
		if err != nil {
			return fmt.Errorf("create %s %q: %w", k.noun, key, err)
		}
		rec = proto.CloneOf(rec)
		at := db.stamp(ctx)
		k.stamp(rec, at, at)
		proto.Merge(out, rec)
		return putRecord(ob, rec)
	})
}

// update replaces the record key of namespace ns with what change makes of
// it, as the call of ctx, keeping created_at and stamping updated_at; out
// receives what was stored. A missing key is an [errdefs.ErrNotFound].
func (k recordKind[T]) update(ctx context.Context, db *DB, ns, key string, out T, change func(cur T) (T, error)) error {
	return db.update(ctx, out, func(tx *bolt.Tx) error {
		b := objectBucket(tx, ns, k.bucket, key)
		if b == nil {
			return fmt.Errorf("%s %q: %w", k.noun, key, errdefs.ErrNotFound)
		}
		cur, err := k.read(b, key)
		if err != nil {
			return err
		}
		next, err := change(cur)
		if err != nil {
			return fmt.Errorf("update %s %q: %w", k.noun, key, err)
		}
		k.stamp(next, cur.GetCreatedAt(), db.stamp(ctx))
		proto.Merge(out, next)
		return putRecord(b, next)
	})
}

// remove deletes the record key of namespace ns, as the call of ctx, once
// check (if not nil) accepts its bucket. A missing key is an
// [errdefs.ErrNotFound].
func (k recordKind[T]) remove(ctx context.Context, db *DB, ns, key string, check func(*bolt.Bucket) error) error {
	return db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		ob := objectBucket(tx, ns, k.bucket, key)
		if ob == nil {
			return fmt.Errorf("%s %q: %w", k.noun, key, errdefs.ErrNotFound)
		}
		if check != nil {
			if err := check(ob); err != nil {
				return err
			}
		}
		if err := kindBucket(tx, ns, k.bucket).DeleteBucket([]byte(key)); err != nil {
			return fmt.Errorf("delete %s %q: %w", k.noun, key, err)
		}
		return nil
	})
}

// fieldNumber returns the number of the field name of message m.
func fieldNumber(m proto.Message, name protoreflect.Name) protowire.Number {
	return m.ProtoReflect().Descriptor().Fields().ByName(name).Number()
}
